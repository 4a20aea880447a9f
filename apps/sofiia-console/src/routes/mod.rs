//! HTTP routes: parse, call the domain, map the result.

use actix_web::web;

use crate::problem::ApiError;

mod audit;
mod chats;
pub mod openapi;
mod send;
mod stream;
mod system;
mod ui;

/// The largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Registers every route and the extractor settings they rely on.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(|e, _| ApiError::json_payload(e, MAX_BODY_BYTES).into()),
    )
    .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
    .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::query_payload(&e).into()))
    // Every path is a resource whose routes carry the method guards, so a
    // method it does not serve is 405 (not 404) with `Allow`.
    .service(web::resource("/api/health").route(web::get().to(system::health)))
    .service(web::resource("/api/ready").route(web::get().to(system::ready)))
    .service(web::resource("/metrics").route(web::get().to(system::metrics)))
    .service(web::resource("/api/openapi.json").route(web::get().to(system::openapi)))
    .service(
        web::resource("/api/chats")
            .route(web::post().to(chats::create))
            .route(web::get().to(chats::list)),
    )
    .service(web::resource("/api/chats/{chat_id}").route(web::get().to(chats::get)))
    .service(web::resource("/api/chats/{chat_id}/messages").route(web::get().to(chats::messages)))
    .service(web::resource("/api/chats/{chat_id}/send").route(web::post().to(send::send)))
    .service(web::resource("/api/audit").route(web::get().to(audit::read)))
    .configure(ui::configure);
}

/// The fallback for paths no route matches.
pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// The query of every list endpoint.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page, as it was given: opaque and
    /// signed; a cursor this console did not issue for this list is 400.
    #[param(min_length = 36, max_length = 375, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

impl ListQuery {
    /// The page to read, with cursors verified by `keys` and decoded for
    /// the list `scope`.
    pub(crate) fn page_request(
        &self,
        scope: &str,
        keys: &sofiia_core_domain::CursorKeys,
    ) -> Result<sofiia_core_domain::PageRequest, ApiError> {
        use sofiia_core_domain::{PageLimit, PageRequest};
        let limit = self
            .limit
            .as_deref()
            .map(PageLimit::parse)
            .transpose()?
            .unwrap_or_default();
        let after = self
            .cursor
            .as_deref()
            .map(|c| keys.decode(c, scope))
            .transpose()?;
        Ok(PageRequest { limit, after })
    }
}

/// A page as the API returns it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PageBody<T> {
    /// The page's items, in the list's order.
    items: Vec<T>,
    /// Pass it back as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

impl<T> PageBody<T> {
    pub(crate) fn new(
        page: sofiia_core_domain::Page<T>,
        scope: &str,
        keys: &sofiia_core_domain::CursorKeys,
    ) -> Self {
        Self {
            next_cursor: page.next.map(|c| keys.encode(&c, scope)),
            items: page.items,
        }
    }
}
