//! RFC 9457 problem details: the one place where errors become HTTP answers.
//!
//! Handlers return [`ApiError`]; the request middleware renders it with the
//! request's id (see [`crate::telemetry`]). Every domain error maps to a
//! problem here and nowhere else.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value};
use sofiia_chat_index::ChatIndexError;
use sofiia_core_domain::ValidationError;
use sofiia_router_client::RouterError;

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

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
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

    /// The body and headers, with the request's id.
    pub fn to_response(&self, request_id: Option<&str>) -> HttpResponse {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            format!("{TYPE_PREFIX}{}", self.0.slug).into(),
        );
        body.insert("title".into(), self.0.title.into());
        body.insert("status".into(), self.0.status.as_u16().into());
        body.insert("detail".into(), self.0.detail.clone().into());
        body.insert(
            "request_id".into(),
            request_id.map_or(Value::Null, |id| id.into()),
        );
        for (k, v) in &self.0.extensions {
            body.insert(k.clone(), v.clone());
        }
        let mut res = HttpResponse::build(self.0.status);
        res.content_type(PROBLEM_JSON);
        for (name, value) in &self.0.headers {
            res.insert_header((name.clone(), value.clone()));
        }
        res.body(Value::Object(body).to_string())
    }
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
        match e {
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
            .with_extension("node", node.as_str())
            .with_source(e),
            RouterError::Status { ref node, status } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-failed",
                "Node failed",
                format!("node {node} answered HTTP {status}"),
            )
            .with_extension("node", node.as_str())
            .with_source(e),
            RouterError::Unreachable { ref node, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-unreachable",
                "Node unreachable",
                format!("node {node} could not be reached"),
            )
            .with_extension("node", node.as_str())
            .with_source(e),
            RouterError::InvalidReply { ref node, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "node-invalid-reply",
                "Node sent an invalid reply",
                format!("node {node} answered with a body that is not a node protocol reply"),
            )
            .with_extension("node", node.as_str())
            .with_source(e),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "the console could not build the infer call; see its log for this request id",
            )
            .with_source(e),
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
