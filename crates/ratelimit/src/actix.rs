//! actix-web helpers (feature `actix`): the IETF rate-limit fields on every
//! answer, and a `429 Too Many Requests` RFC 9457 problem for a refusal.
//!
//! ```
//! use actix_web::HttpResponse;
//! use sofiia_ratelimit::Decision;
//! use sofiia_ratelimit::actix::{TooManyRequests, insert_headers};
//!
//! fn answer(decision: Decision) -> Result<HttpResponse, TooManyRequests> {
//!     // Refused: a 429 problem with Retry-After and both fields.
//!     if let Some(refusal) = TooManyRequests::new(decision.clone()) {
//!         return Err(refusal);
//!     }
//!     // Allowed: do the work, and tell the client what is left.
//!     let mut response = HttpResponse::Ok();
//!     insert_headers(&mut response, &decision);
//!     Ok(response.body("done"))
//! }
//! # let _ = answer;
//! ```

use std::borrow::Cow;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde_json::{Map, Value};

use crate::{Decision, policy_header, ratelimit_header};

/// The media type of the problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The default problem `type` of a refusal.
pub const PROBLEM_TYPE: &str = "urn:sofiia:problem:rate-limited";

/// `RateLimit-Policy`, as actix names it (lower case).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit`, as actix names it (lower case).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` and `RateLimit` fields describing `decision`;
/// none for a decision without policies.
pub fn rate_limit_headers(decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    if decision.policies.is_empty() {
        return Vec::new();
    }
    [
        (RATELIMIT_POLICY, policy_header(&decision.policies)),
        (RATELIMIT, ratelimit_header(&decision.policies)),
    ]
    .into_iter()
    // Both are printable ASCII by construction, so this keeps both.
    .filter_map(|(name, value)| Some((name, HeaderValue::try_from(value).ok()?)))
    .collect()
}

/// Adds the `RateLimit-Policy` and `RateLimit` fields describing `decision`
/// to a response, allowed or not.
pub fn insert_headers(response: &mut HttpResponseBuilder, decision: &Decision) {
    for header in rate_limit_headers(decision) {
        response.insert_header(header);
    }
}

/// A refused decision as an actix-web error: `429 Too Many Requests`, an
/// RFC 9457 `application/problem+json` body naming the refusing policy,
/// `Retry-After` in whole seconds (rounded up) and the IETF fields.
///
/// The body has `type` ([`PROBLEM_TYPE`] unless changed), `title`, `status`,
/// `detail`, and the members `policy` (the refusing policy that waits
/// longest) and `retry_after` (seconds), plus any added with
/// [`with_extension`](Self::with_extension), such as a request id.
#[derive(Debug, Clone)]
pub struct TooManyRequests {
    decision: Decision,
    problem_type: Cow<'static, str>,
    extensions: Map<String, Value>,
}

impl TooManyRequests {
    /// The refusal for `decision`, or `None` when it was allowed.
    pub fn new(decision: Decision) -> Option<Self> {
        if decision.allowed || decision.refused_by().is_none() {
            return None;
        }
        Some(Self {
            decision,
            problem_type: Cow::Borrowed(PROBLEM_TYPE),
            extensions: Map::new(),
        })
    }

    /// Uses `uri` as the problem's `type`.
    pub fn with_type(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.problem_type = uri.into();
        self
    }

    /// Adds a member to the problem object; the standard members keep
    /// their values.
    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// The refused decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The problem object.
    pub fn body(&self) -> Value {
        let mut body = self.extensions.clone();
        let retry_after = self.retry_after_secs();
        let mut put = |k: &str, v: Value| {
            body.insert(k.to_owned(), v);
        };
        put("type", Value::from(self.problem_type.as_ref()));
        put("title", Value::from("Too Many Requests"));
        put("status", Value::from(429));
        put("detail", Value::from(self.to_string()));
        if let Some(policy) = self.decision.refused_by() {
            put("policy", Value::from(policy.policy));
        }
        put("retry_after", Value::from(retry_after));
        Value::Object(body)
    }

    fn retry_after_secs(&self) -> u64 {
        // A refusal has a refusing policy (checked in `new`); 1 s is the
        // least `Retry-After` says anyway.
        self.decision.retry_after_secs().unwrap_or(1)
    }

    /// The complete response.
    pub fn to_response(&self) -> HttpResponse {
        let mut response = HttpResponse::TooManyRequests();
        insert_headers(&mut response, &self.decision);
        response
            .insert_header((RETRY_AFTER, HeaderValue::from(self.retry_after_secs())))
            .insert_header((CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)))
            .body(self.body().to_string())
    }
}

impl fmt::Display for TooManyRequests {
    /// The problem's `detail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decision.refused_by() {
            Some(p) => write!(
                f,
                "the {} quota ({}) is spent; retry in {} s",
                p.policy,
                p.quota,
                self.retry_after_secs()
            ),
            None => f.write_str("a quota is spent"),
        }
    }
}

impl std::error::Error for TooManyRequests {}

impl ResponseError for TooManyRequests {
    fn status_code(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::body::to_bytes;

    use super::*;
    use crate::{PolicyState, Quota};

    fn state(policy: &'static str, q: &str, allowed: bool, retry_ms: u64) -> PolicyState {
        PolicyState {
            policy,
            quota: Quota::parse(q).unwrap(),
            allowed,
            remaining: if allowed { 12 } else { 0 },
            reset_after: Duration::from_millis(40_500),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    fn header<'a>(response: &'a HttpResponse, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn allowed_answers_carry_both_fields() {
        let decision = Decision {
            allowed: true,
            policies: vec![
                state("chat", "20/min", true, 0),
                state("operator", "60/min", true, 0),
            ],
        };
        assert!(TooManyRequests::new(decision.clone()).is_none());
        let mut builder = HttpResponse::Ok();
        insert_headers(&mut builder, &decision);
        let response = builder.finish();
        assert_eq!(
            header(&response, "RateLimit-Policy"),
            r#""chat";q=20;w=60, "operator";q=60;w=60"#
        );
        assert_eq!(
            header(&response, "RateLimit"),
            r#""chat";r=12;t=41, "operator";r=12;t=41"#
        );
        assert!(response.headers().get("Retry-After").is_none());
        let empty = Decision {
            allowed: true,
            policies: Vec::new(),
        };
        assert!(rate_limit_headers(&empty).is_empty());
    }

    #[tokio::test]
    async fn a_refusal_is_a_429_problem_naming_the_policy() {
        let decision = Decision {
            allowed: false,
            policies: vec![
                state("chat", "20/min", true, 0),
                state("operator", "60/min", false, 2_001),
            ],
        };
        let refusal = TooManyRequests::new(decision)
            .unwrap()
            .with_extension("request_id", "req-1")
            .with_extension("status", 500);
        assert_eq!(refusal.status_code(), StatusCode::TOO_MANY_REQUESTS);
        let response = refusal.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&response, "Retry-After"), "3");
        assert_eq!(header(&response, "Content-Type"), PROBLEM_JSON);
        assert_eq!(
            header(&response, "RateLimit"),
            r#""chat";r=12;t=41, "operator";r=0;t=41"#
        );
        assert!(response.headers().contains_key("RateLimit-Policy"));
        let body = to_bytes(response.into_body()).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": PROBLEM_TYPE,
                "title": "Too Many Requests",
                "status": 429,
                "detail": "the operator quota (60/min) is spent; retry in 3 s",
                "policy": "operator",
                "retry_after": 3,
                "request_id": "req-1",
            })
        );
        let custom = TooManyRequests::new(refusal.decision().clone())
            .unwrap()
            .with_type("https://example.com/problems/slow-down");
        assert_eq!(
            custom.body()["type"],
            "https://example.com/problems/slow-down"
        );
    }
}
