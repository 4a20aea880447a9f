//! RFC 9457 problem details: the one place where errors become HTTP answers.
//!
//! Handlers return [`ApiError`]; the request middleware renders it with the
//! request's id (see [`crate::middleware`]). Every domain error, and every
//! error of the framework (an unknown route, a body that is not JSON), maps
//! to a problem here and nowhere else.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{
    CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value};
use sofiia_audit_store::AuditError;
use sofiia_chat_index::ChatIndexError;
use sofiia_core_domain::ValidationError;
use sofiia_idempotency::StoredResponse;
use sofiia_idempotency::actix::KeyHeaderError;
use sofiia_router_client::RouterError;

use crate::auditor::AuditUnavailable;
use crate::send::{SendError, refusing_scopes};

pub use sofiia_core_domain::error_chain;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type`; the slug after it names the problem and is
/// documented in `docs/api.md`.
pub const TYPE_PREFIX: &str = "urn:sofiia:problem:";

/// An error answer: status, problem fields and any headers it needs.
///
/// Boxed, so that `Result<T, ApiError>` stays as small as `T` on the happy path.
pub struct ApiError(Box<Problem>);

struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Map<String, Value>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.0.status.as_u16())
            .field("type", &self.0.slug)
            .field("detail", &self.0.detail)
            .field("source", &self.0.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.0.title,
            self.0.status.as_u16(),
            self.0.detail
        )
    }
}

impl ApiError {
    /// A problem with the given status, type slug, title and detail.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            headers: Vec::new(),
            extensions: Map::new(),
            source: None,
        }))
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// Adds a member to the problem object.
    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Keeps the underlying cause for the error log (never sent to clients).
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Adds `Retry-After` in whole seconds, rounded up.
    pub fn with_retry_after(self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The problem type's slug.
    pub fn slug(&self) -> &'static str {
        self.0.slug
    }

    /// The cause chain, joined for a log line.
    pub fn cause_chain(&self) -> Option<String> {
        self.0.source.as_deref().map(|s| error_chain(s))
    }

    /// 400 for input that failed a domain rule.
    pub fn validation(e: &ValidationError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-input",
            "Invalid input",
            e.to_string(),
        )
        .with_extension("field", e.field().as_str())
    }

    /// 400 for a request that is malformed in some other way.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    /// 401 for a missing or unknown operator token.
    pub fn unauthorized_operator() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid operator token is required: Authorization: Bearer <token>",
        )
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 429 for a source that sent too many refused credentials.
    pub fn auth_throttled(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "auth-throttled",
            "Too many refused credentials",
            "too many requests with missing or wrong credentials came from this address; retry after Retry-After seconds",
        )
        .with_retry_after(retry_after)
    }

    /// 401 for a missing or unknown audit key.
    pub fn unauthorized_audit() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid audit key is required: X-Audit-Key: <key>",
        )
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 503 for a store that did not answer (in time).
    pub fn store_unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Service unavailable",
            format!("the {what} is unavailable; retry later"),
        )
        .with_retry_after(Duration::from_secs(1))
    }

    /// An error answer of the framework that is not a problem yet (a 404 of
    /// the router, a 405, a payload error), as one, keeping its status and
    /// headers; `None` for an answer that needs no change.
    pub fn from_framework(res: &HttpResponse) -> Option<Self> {
        let status = res.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return None;
        }
        let is_problem = res
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
        if is_problem {
            return None;
        }
        let detail = match res.error() {
            // Framework errors describe the request, not the server's internals.
            Some(e) if status.is_client_error() => e.to_string(),
            _ => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
        };
        let slug = match status.as_u16() {
            404 => "not-found",
            405 => "method-not-allowed",
            413 => "payload-too-large",
            415 => "unsupported-media-type",
            s if s >= 500 => "internal",
            _ => "bad-request",
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let mut problem = Self::new(status, slug, title, detail);
        for (name, value) in res.headers() {
            if name != CONTENT_TYPE {
                problem = problem.with_header(name.clone(), value.clone());
            }
        }
        Some(problem)
    }

    /// A JSON body the framework could not take.
    pub fn json_payload(e: JsonPayloadError, max_bytes: usize) -> Self {
        match e {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                    format!("the request body must not exceed {max_bytes} bytes"),
                )
            }
            JsonPayloadError::ContentType => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the request body must be JSON with Content-Type: application/json",
            ),
            JsonPayloadError::Deserialize(e) => {
                Self::bad_request("invalid-json", format!("the JSON body is invalid: {e}"))
            }
            other => Self::bad_request("invalid-body", other.to_string()),
        }
    }

    /// A query string the framework could not take.
    pub fn query_payload(e: &QueryPayloadError) -> Self {
        Self::bad_request("invalid-query", format!("the query string is invalid: {e}"))
    }

    /// 500 with a generic detail; `what` goes to the error log only.
    pub fn internal(what: &'static str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the console failed to handle the request; see its log for this request id",
        )
        .with_source(what)
    }

    /// The problem document, with the request's id.
    pub fn document(&self, request_id: Option<&str>) -> ProblemDocument {
        ProblemDocument {
            problem_type: format!("{TYPE_PREFIX}{}", self.0.slug),
            title: self.0.title,
            status: self.0.status.as_u16(),
            detail: self.0.detail.clone(),
            request_id: request_id.map(str::to_owned),
            extensions: self.0.extensions.clone(),
        }
    }

    /// The body and headers, with the request's id.
    pub fn to_response(&self, request_id: Option<&str>) -> HttpResponse {
        let body = self.document(request_id);
        let mut res = HttpResponse::build(self.0.status);
        res.content_type(PROBLEM_JSON);
        for (name, value) in &self.0.headers {
            res.insert_header((name.clone(), value.clone()));
        }
        res.body(serde_json::to_string(&body).unwrap_or_default())
    }

    /// The answer as an idempotency key keeps it for replays: status,
    /// problem+json body with the request's id, and the headers.
    pub fn to_stored(&self, request_id: Option<&str>) -> StoredResponse {
        let mut headers = vec![("content-type".to_owned(), PROBLEM_JSON.to_owned())];
        for (name, value) in &self.0.headers {
            if let Ok(value) = value.to_str() {
                headers.push((name.as_str().to_owned(), value.to_owned()));
            }
        }
        StoredResponse {
            status: self.0.status.as_u16(),
            headers,
            body: serde_json::to_vec(&self.document(request_id)).unwrap_or_default(),
        }
    }
}

/// An RFC 9457 problem document: the body of every error answer, as
/// `application/problem+json`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProblemDocument {
    /// `urn:sofiia:problem:` and a slug naming the problem (see docs/api.md).
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:sofiia:problem:[a-z-]+$")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The request's id, as in `X-Request-Id`.
    pub request_id: Option<String>,
    /// More members for some problems: `field` (the input at fault),
    /// `scope` and `scopes` (a spent quota), `node` (a failed node).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response(None)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::validation(&e)
    }
}

impl From<ChatIndexError> for ApiError {
    fn from(e: ChatIndexError) -> Self {
        match e {
            ChatIndexError::Conflict { ref id } => Self::new(
                StatusCode::CONFLICT,
                "chat-exists",
                "Chat exists",
                format!("a chat with id {id} already exists"),
            ),
            ChatIndexError::NotFound { ref id } => Self::not_found(format!("no chat with id {id}")),
            ChatIndexError::Unavailable { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Service unavailable",
                "the chat index is unavailable; retry later",
            )
            .with_retry_after(Duration::from_secs(1))
            .with_source(e),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "the chat index failed; see the console log for this request id",
            )
            .with_source(e),
        }
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        let problem = Self::from(&e);
        problem.with_source(e)
    }
}

impl From<&RouterError> for ApiError {
    /// The problem without its cause; `From<RouterError>` adds it.
    fn from(e: &RouterError) -> Self {
        match *e {
            RouterError::UnknownNode { ref node } => Self::new(
                StatusCode::BAD_REQUEST,
                "unknown-node",
                "Unknown node",
                format!("node {node} is not configured"),
            )
            .with_extension("field", "node"),
            RouterError::Timeout { ref node, after } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "node-timeout",
                "Node timed out",
                format!("node {node} did not answer within {} ms", after.as_millis()),
            )
            .with_extension("node", node.as_str()),
            RouterError::Status { ref node, status } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-failed",
                "Node failed",
                format!("node {node} answered HTTP {status}"),
            )
            .with_extension("node", node.as_str()),
            RouterError::Unreachable { ref node, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-unreachable",
                "Node unreachable",
                format!("node {node} could not be reached"),
            )
            .with_extension("node", node.as_str()),
            RouterError::InvalidReply { ref node, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-invalid-reply",
                "Node sent an invalid reply",
                format!("node {node} answered with a body that is not a node protocol reply"),
            )
            .with_extension("node", node.as_str()),
            RouterError::Interrupted { ref node, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-interrupted",
                "Node reply interrupted",
                format!(
                    "node {node}'s reply broke off before it was complete; nothing of it was stored"
                ),
            )
            .with_extension("node", node.as_str()),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "the console could not build the infer call; see its log for this request id",
            ),
        }
    }
}

impl From<KeyHeaderError> for ApiError {
    fn from(e: KeyHeaderError) -> Self {
        let slug = match e {
            KeyHeaderError::Missing => "idempotency-key-missing",
            _ => "idempotency-key-invalid",
        };
        Self::bad_request(slug, error_chain(&e))
    }
}

impl ApiError {
    /// 503 for an action the audit trail cannot record.
    fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit-unavailable",
            "Service unavailable",
            "the audit trail cannot record this action, so it was refused; retry later",
        )
        .with_retry_after(Duration::from_secs(1))
    }
}

impl From<AuditUnavailable> for ApiError {
    fn from(e: AuditUnavailable) -> Self {
        Self::audit_unavailable().with_source(e)
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        Self::store_unavailable("audit store").with_source(e)
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        Self::from(&e)
    }
}

/// The answer a key keeps when its node failed after it began its reply
/// (see `SendParts::failure_answer`).
pub fn stored_send_failure(e: &SendError, request_id: Option<&str>) -> StoredResponse {
    ApiError::from(e).to_stored(request_id)
}

impl From<&SendError> for ApiError {
    /// The problem, with its cause (as text) for the error log.
    fn from(e: &SendError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let problem = match e {
            SendError::InFlight { retry_after } => Self::new(
                status,
                "idempotency-key-in-flight",
                "Request in progress",
                "a send with this Idempotency-Key is still running; retry after Retry-After to get its answer",
            )
            .with_retry_after(*retry_after),
            SendError::NotStoredYet { retry_after, .. } => Self::new(
                status,
                "send-not-stored-yet",
                "Send not stored yet",
                "the node answered, but the exchange is not stored yet; the reply is kept, and a retry with this Idempotency-Key answers it once stored, without calling the node again",
            )
            .with_retry_after(*retry_after),
            SendError::KeyReused => Self::new(
                status,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different request (another chat or body); use a new key",
            ),
            SendError::UnknownNode { node } => (&RouterError::UnknownNode { node: node.clone() }).into(),
            SendError::RateLimited { decision } => {
                let scopes = refusing_scopes(decision);
                let mut problem = Self::new(
                    status,
                    "rate-limited",
                    "Too many requests",
                    format!(
                        "the {} quota is spent; retry after Retry-After seconds",
                        scopes.join(" and ")
                    ),
                )
                .with_extension("scope", scopes.first().copied().unwrap_or("chat"))
                .with_extension("scopes", scopes.clone())
                .with_retry_after(decision.retry_after());
                for (name, value) in sofiia_ratelimit::actix::rate_limit_headers(decision) {
                    problem = problem.with_header(name, value);
                }
                problem
            }
            SendError::Unavailable { store, .. } => Self::new(
                status,
                "store-unavailable",
                "Service unavailable",
                format!("the {} is unavailable, so nothing was sent; retry later", store.name()),
            )
            .with_retry_after(Duration::from_secs(1)),
            SendError::Node(e) => e.into(),
            SendError::Audit(_) => Self::audit_unavailable(),
            SendError::Internal(what) => Self::internal(what),
        };
        match std::error::Error::source(e) {
            Some(source) => problem.with_source(error_chain(source)),
            None => problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody as _;

    #[test]
    fn renders_rfc9457_fields_and_headers() {
        let res = ApiError::unauthorized_operator().to_response(Some("req-1"));
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
        assert_eq!(res.headers().get("content-type").unwrap(), PROBLEM_JSON);
        let body = res.into_body().try_into_bytes().unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:sofiia:problem:unauthorized");
        assert_eq!(v["status"], 401);
        assert_eq!(v["request_id"], "req-1");
        assert!(v["title"].is_string() && v["detail"].is_string());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "x", "X", "x")
            .with_retry_after(Duration::from_millis(1200));
        let res = e.to_response(None);
        assert_eq!(res.headers().get("retry-after").unwrap(), "2");
    }
}
