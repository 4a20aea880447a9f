//! `GET /api/audit`: the audit trail, for holders of an audit key only.
//!
//! The key is compared in constant time against every configured key. There
//! is no other way in: not from loopback, not through forwarding headers, not
//! with an operator token.

use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use slog::o;
use sofiia_audit_store::{AuditEvent, AuditQuery, Outcome};
use sofiia_core_domain::{Field, PageLimit, Timestamp, ValidationError};

use super::PageBody;
use crate::auditor::Event;
use crate::auth::deny;
use crate::problem::ApiError;
use crate::request::RequestMeta;
use crate::state::AppState;
use crate::telemetry::flow_event;

/// The header carrying the audit key.
const AUDIT_KEY: HeaderName = HeaderName::from_static("x-audit-key");

/// The query of the audit trail.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditParams {
    /// Events per page, 1 to 200 (default 50).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page, under the same filters:
    /// opaque and signed; a cursor this console did not issue is 400.
    #[param(min_length = 36, max_length = 375, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Only events of this actor (exact).
    #[param(pattern = "^[\\x21-\\x7E]{1,128}$")]
    actor: Option<String>,
    /// Only events of this action (exact), such as `chat.send`.
    #[param(pattern = "^[\\x21-\\x7E]{1,128}$")]
    action: Option<String>,
    /// Only events at or after this time.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only events before this time.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

fn filter(value: Option<String>, name: &'static str) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(v))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid-query",
            format!("{name} must be 1 to 128 visible ASCII characters"),
        )
        .with_extension("field", name)),
    }
}

fn time(value: Option<String>, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| {
            Timestamp::parse_rfc3339(&v)
                .map_err(|e| ApiError::from(e).with_extension("field", name))
        })
        .transpose()
}

/// Cursors are bound to the filters they were issued under: a cursor from
/// another filter set would silently skip or repeat events.
fn scope(q: &AuditQuery) -> String {
    let mut h = Sha256::new();
    for part in [q.actor.as_deref(), q.action.as_deref()] {
        h.update(part.unwrap_or("\u{0}").as_bytes());
        h.update(b"\x1f");
    }
    for t in [q.since, q.until] {
        h.update(t.map_or(-1, Timestamp::as_unix_millis).to_be_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("audit:{hex}")
}

/// Reads the audit trail, newest first. Needs `X-Audit-Key`; nothing else
/// opens it.
#[utoipa::path(
    get,
    path = "/api/audit",
    operation_id = "readAudit",
    tag = "audit",
    params(AuditParams),
    responses((status = 200, description = "A page of audit events.", body = PageBody<AuditEvent>)),
    security(("audit_key" = [])),
)]
pub(super) async fn read(
    req: HttpRequest,
    state: web::Data<AppState>,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let presented = req.headers().get(&AUDIT_KEY).and_then(|v| v.to_str().ok());
    let key = match presented {
        None => None,
        Some(k) => state.audit_keys.matching(k),
    };
    let Some(key) = key else {
        let reason = if presented.is_none() {
            "missing"
        } else {
            "invalid"
        };
        deny(&state, &req, reason)?;
        return Err(ApiError::unauthorized_audit());
    };

    let params = params.into_inner();
    let mut query = AuditQuery {
        actor: filter(params.actor, "actor")?,
        action: filter(params.action, "action")?,
        since: time(params.since, "since")?,
        until: time(params.until, "until")?,
        limit: params
            .limit
            .as_deref()
            .map(PageLimit::parse)
            .transpose()?
            .unwrap_or_default(),
        before_id: None,
    };
    let scope = scope(&query);
    if let Some(cursor) = params.cursor.as_deref() {
        let cursor = state.cursor_keys.decode(cursor, &scope)?;
        let id = cursor.id().parse::<u64>().map_err(|_| {
            ApiError::from(ValidationError::Malformed {
                field: Field::Cursor,
                reason: "is not a cursor this list issued",
            })
        })?;
        query.before_id = Some(id);
    }

    // Audited before anything is read: a read that cannot be recorded is
    // not served.
    let actor = format!("audit-key:{key}");
    state
        .auditor
        .record(
            &RequestMeta::of(&req),
            Event::new(&actor, "audit.read", "audit", Outcome::Ok).status(200),
        )
        .await?;
    let page = state
        .auditor
        .read(&query)
        .await
        .map_err(|e| ApiError::store_unavailable("audit store").with_source(e))?;
    flow_event(
        &state.logger,
        &req,
        "pagination",
        o!(
            "list" => "audit",
            "status" => 200,
            "actor" => actor,
            "limit" => query.limit.get(),
            "cursor" => query.before_id.is_some(),
            "items" => page.items.len(),
            "has_next" => page.next.is_some(),
        ),
    );
    Ok(HttpResponse::Ok().json(PageBody::new(page, &scope, &state.cursor_keys)))
}
