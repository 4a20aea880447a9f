//! HTTP routes: parse, call the domain, map the result.

use actix_web::web;

use crate::problem::ApiError;

mod audit;
mod chats;
mod send;
mod system;

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
    .route("/api/health", web::get().to(system::health))
    .route("/api/ready", web::get().to(system::ready))
    .route("/metrics", web::get().to(system::metrics))
    .service(
        web::resource("/api/chats")
            .route(web::post().to(chats::create))
            .route(web::get().to(chats::list)),
    )
    .route("/api/chats/{chat_id}", web::get().to(chats::get))
    .route(
        "/api/chats/{chat_id}/messages",
        web::get().to(chats::messages),
    )
    .route("/api/chats/{chat_id}/send", web::post().to(send::send))
    .route("/api/audit", web::get().to(audit::read));
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
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

impl ListQuery {
    /// The page to read, with cursors decoded for the list `scope`.
    pub(crate) fn page_request(
        &self,
        scope: &str,
    ) -> Result<sofiia_core_domain::PageRequest, ApiError> {
        use sofiia_core_domain::{Cursor, PageLimit, PageRequest};
        let limit = self
            .limit
            .as_deref()
            .map(PageLimit::parse)
            .transpose()?
            .unwrap_or_default();
        let after = self
            .cursor
            .as_deref()
            .map(|c| Cursor::decode(c, scope))
            .transpose()?;
        Ok(PageRequest { limit, after })
    }
}

/// A page as the API returns it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PageBody<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

impl<T> PageBody<T> {
    pub(crate) fn new(page: sofiia_core_domain::Page<T>, scope: &str) -> Self {
        Self {
            next_cursor: page.next.map(|c| c.encode(scope)),
            items: page.items,
        }
    }
}
