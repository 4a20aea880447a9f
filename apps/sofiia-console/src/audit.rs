//! Writing the audit trail from the HTTP layer.
//!
//! Every operator action, every audit read and every authentication failure
//! becomes an event. An event that cannot be written fails its action: the
//! caller answers 503 and `sofiia_audit_write_failures_total` counts it, so
//! nothing the console answered as done is missing from the trail.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::http::header::USER_AGENT;
use actix_web::{HttpMessage as _, HttpRequest};
use serde_json::{Map, Value};
use slog::warn;
use sofiia_audit_store::{NewEvent, Outcome};

use crate::problem::ApiError;
use crate::state::AppState;
use crate::telemetry::RequestId;

/// The metric counting events written, by action (a fixed set).
pub const EVENTS_WRITTEN: &str = "sofiia_audit_events_total";

/// The metric counting events that could not be written.
pub const WRITE_FAILURES: &str = "sofiia_audit_write_failures_total";

/// What the audit trail records about the request itself.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The request's id.
    pub request_id: Option<String>,
    /// The TCP peer's address. Forwarding headers are not trusted for this.
    pub source_ip: Option<IpAddr>,
    /// The client's `User-Agent`, cut to 256 characters.
    pub user_agent: Option<String>,
}

impl RequestMeta {
    /// Reads the request's id, peer address and user agent.
    pub fn of(req: &HttpRequest) -> Self {
        Self {
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            source_ip: req.peer_addr().map(|a| a.ip()),
            user_agent: req
                .headers()
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect()),
        }
    }
}

/// One event about to be written.
#[derive(Debug, Clone)]
pub struct Event {
    actor: String,
    action: &'static str,
    target: String,
    outcome: Outcome,
    status: Option<u16>,
    node: Option<String>,
    details: Map<String, Value>,
}

impl Event {
    /// `actor` did `action` to `target`, ending in `outcome`.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            actor: actor.into(),
            action,
            target: target.into(),
            outcome,
            status: None,
            node: None,
            details: Map::new(),
        }
    }

    /// The HTTP status answered.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = Some(status.as_u16());
        self
    }

    /// The node involved.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// A detail. Never message text, tokens or keys.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// Writes `event`; on failure counts it and returns the 503 to answer.
///
/// # Errors
///
/// A 503 problem when the event could not be written.
pub async fn record(state: &AppState, meta: &RequestMeta, event: Event) -> Result<(), ApiError> {
    let new = NewEvent {
        ts: state.clock.now(),
        actor: event.actor,
        action: event.action.to_owned(),
        target: event.target,
        outcome: event.outcome,
        status: event.status,
        request_id: meta.request_id.clone(),
        node: event.node,
        source_ip: meta.source_ip.map(|ip| ip.to_string()),
        user_agent: meta.user_agent.clone(),
        details: event.details,
    };
    match state.audit.append(new).await {
        Ok(_) => {
            metrics::counter!(EVENTS_WRITTEN, "action" => event.action).increment(1);
            Ok(())
        }
        Err(e) => {
            metrics::counter!(WRITE_FAILURES).increment(1);
            warn!(
                state.logger, "audit write failed; refusing the action";
                "flow" => "audit",
                "request_id" => meta.request_id.clone(),
                "action" => event.action,
                "error" => crate::problem::error_chain(&e),
            );
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "Service unavailable",
                "the audit trail cannot record this action, so it was refused; retry later",
            )
            .with_retry_after(std::time::Duration::from_secs(1))
            .with_source(e))
        }
    }
}
