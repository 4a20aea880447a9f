//! What the console knows about the request being handled, kept in its
//! extensions: its id, when it arrived, who sent it, and what the audit
//! trail records of it.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::http::header::{HeaderName, USER_AGENT};
use actix_web::{HttpMessage as _, HttpRequest};
use sofiia_core_domain::OperatorId;

/// The request id header, read from clients and set on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// A client's request id if it is 1..=128 characters of
    /// `[A-Za-z0-9._:-]`, so it is safe in logs and headers; otherwise a
    /// new one.
    pub fn from_client(value: Option<&str>) -> Self {
        let sane = value.filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        });
        Self(sane.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned))
    }
}

/// When the request arrived, for the `latency_ms` of its log lines.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

/// The chat a request acts on when its path does not name one (chat
/// creation), for the `chat_id` of its log lines.
#[derive(Debug, Clone)]
pub struct LogChatId(pub String);

/// The authenticated operator of a request (see [`crate::auth`] for the
/// extractor that sets it).
#[derive(Debug, Clone)]
pub struct Operator(pub OperatorId);

/// Marks a request refused for authentication, and why; the request
/// middleware writes its `auth.denied` event before the answer leaves.
#[derive(Debug, Clone, Copy)]
pub struct Denied(pub &'static str);

/// What the audit trail records about the request itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
