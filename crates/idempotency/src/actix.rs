//! actix-web integration (feature `actix`).
//!
//! - [`IdempotencyKeyHeader`]: an extractor for the `Idempotency-Key`
//!   header, answering 400 when it is missing, repeated or malformed;
//! - [`run_idempotent`]: runs a handler at most once per key and answers
//!   everything around it;
//! - [`run_idempotent_with`]: the same with a key and fingerprint of the
//!   caller's making.
//!
//! | situation | answer |
//! | --- | --- |
//! | no, repeated or malformed `Idempotency-Key` | 400 |
//! | first request | the handler's answer; a 2xx answer is stored, anything else releases the key so a retry runs again |
//! | same principal, key and request, finished | the stored answer: same status, headers and body, plus `Idempotent-Replayed: true` |
//! | same key, different request | 422 |
//! | same key while the first still runs | 409 with `Retry-After` |
//! | the key holds a pending result (see [`PendingGuard`](crate::PendingGuard)) | 503 with `Retry-After` |
//! | the store is unavailable | 503 with `Retry-After: 1`; the handler does not run |
//! | the store fails otherwise | 500; the handler does not run |
//!
//! Errors are RFC 9457 problems (`application/problem+json` with `type`,
//! `title`, `status` and `detail`); their `type` is
//! [`PROBLEM_TYPE_PREFIX`] followed by a slug: `idempotency-key-missing`,
//! `idempotency-key-invalid`, `idempotency-key-in-flight`,
//! `idempotency-key-mismatch`, `result-pending`, `store-unavailable` or
//! `internal`.
//!
//! `examples/idempotency_actix.rs` is a complete service using it.

use std::future::{Future, Ready, ready};
use std::time::Duration;

use actix_web::body::to_bytes;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};

use crate::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, KeyError, ScopedKey,
    StoredResponse,
};

/// The request header that carries the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The media type of problem answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What every problem `type` starts with.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:sofiia:problem:";

/// `Retry-After` of a 503: the store is usually back within a second, and a
/// client should not hammer it meanwhile either.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Response headers that describe one transfer, not the answer, and so are
/// not stored for replay.
const NOT_REPLAYED: [HeaderName; 9] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::DATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The `Idempotency-Key` of a request, as an extractor.
///
/// ```
/// use actix_web::HttpResponse;
/// use sofiia_idempotency::actix::IdempotencyKeyHeader;
///
/// async fn handler(key: IdempotencyKeyHeader) -> HttpResponse {
///     HttpResponse::Ok().body(key.0.as_str().to_owned())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKeyHeader(pub IdempotencyKey);

/// Why a request's `Idempotency-Key` was rejected; answers 400.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHeaderError {
    /// No `Idempotency-Key` header.
    #[error("the Idempotency-Key header is required")]
    Missing,
    /// More than one `Idempotency-Key` header.
    #[error("send exactly one Idempotency-Key header")]
    Repeated,
    /// A header value that is no valid key.
    #[error("the Idempotency-Key header is invalid")]
    Invalid(#[source] KeyError),
}

impl ResponseError for KeyHeaderError {
    fn status_code(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn error_response(&self) -> HttpResponse {
        let (slug, detail) = match self {
            Self::Missing => ("idempotency-key-missing", self.to_string()),
            Self::Repeated => ("idempotency-key-invalid", self.to_string()),
            Self::Invalid(why) => ("idempotency-key-invalid", format!("{self}: {why}")),
        };
        problem(StatusCode::BAD_REQUEST, slug, "Bad request", &detail).finish()
    }
}

/// The request's `Idempotency-Key`, bare or as a structured-field string.
///
/// # Errors
///
/// [`KeyHeaderError`] when it is missing, repeated or malformed.
pub fn key_from_request(req: &HttpRequest) -> Result<IdempotencyKey, KeyHeaderError> {
    let mut values = req.headers().get_all(&IDEMPOTENCY_KEY);
    let value = values.next().ok_or(KeyHeaderError::Missing)?;
    if values.next().is_some() {
        return Err(KeyHeaderError::Repeated);
    }
    let value = value
        .to_str()
        .map_err(|_| KeyHeaderError::Invalid(KeyError::Malformed))?;
    IdempotencyKey::parse_header(value).map_err(KeyHeaderError::Invalid)
}

impl FromRequest for IdempotencyKeyHeader {
    type Error = KeyHeaderError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(key_from_request(req).map(Self))
    }
}

/// A fingerprint of the request's method, path, query string and `body`.
///
/// `body` is taken as given: where two encodings of one body (whitespace,
/// key order) must count as one request, pass a canonical form, such as the
/// parsed and re-serialised JSON, or build the fingerprint yourself with
/// [`Fingerprint::builder`] and call [`run_idempotent_with`].
pub fn request_fingerprint(req: &HttpRequest, body: &[u8]) -> Fingerprint {
    Fingerprint::builder()
        .part(req.method().as_str())
        .part(req.path())
        .part(req.query_string())
        .part(body)
        .finish()
}

/// Runs `handler` at most once per `principal` and `Idempotency-Key`,
/// fingerprinting the request with [`request_fingerprint`]; see the
/// [module](self) documentation for every answer.
///
/// ```
/// use actix_web::{HttpRequest, HttpResponse, web};
/// use sofiia_idempotency::Idempotency;
/// use sofiia_idempotency::actix::run_idempotent;
///
/// async fn create_order(
///     req: HttpRequest,
///     body: web::Bytes,
///     idempotency: web::Data<Idempotency>,
/// ) -> HttpResponse {
///     let principal = "alice"; // from authentication
///     run_idempotent(&idempotency, principal, &req, &body, || async {
///         HttpResponse::Created().body("order 1")
///     })
///     .await
/// }
/// ```
pub async fn run_idempotent<F, Fut>(
    idempotency: &Idempotency,
    principal: &str,
    req: &HttpRequest,
    body: &[u8],
    handler: F,
) -> HttpResponse
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = HttpResponse>,
{
    let key = match key_from_request(req) {
        Ok(key) => ScopedKey::new(principal, key),
        Err(e) => return e.error_response(),
    };
    let fingerprint = request_fingerprint(req, body);
    run_idempotent_with(idempotency, &key, &fingerprint, handler).await
}

/// Runs `handler` at most once per `key`, for the request `fingerprint`
/// describes; see the [module](self) documentation for every answer.
pub async fn run_idempotent_with<F, Fut>(
    idempotency: &Idempotency,
    key: &ScopedKey,
    fingerprint: &Fingerprint,
    handler: F,
) -> HttpResponse
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = HttpResponse>,
{
    let guard = match idempotency.begin(key, fingerprint).await {
        Ok(Begin::Execute(guard)) => guard,
        Ok(Begin::Replay(stored)) => return replay(&stored),
        Ok(Begin::Pending { retry_after }) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "result-pending",
                "Result pending",
                "the request ran and its result is still being stored; retry after Retry-After",
            )
            .insert_header((header::RETRY_AFTER, retry_after.as_secs()))
            .finish();
        }
        Ok(Begin::Resume(_)) => {
            // This helper completes or releases every key it runs, so none
            // of its keys holds a pending result; another writer's does.
            return internal("the key holds a pending result this helper cannot finish");
        }
        Ok(Begin::InFlight { retry_after }) => {
            return problem(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
                "a request with this Idempotency-Key is still running; retry after Retry-After",
            )
            .insert_header((header::RETRY_AFTER, retry_after.as_secs()))
            .finish();
        }
        Ok(Begin::Mismatch) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-mismatch",
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different request",
            )
            .finish();
        }
        Err(IdempotencyError::Unavailable { .. }) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Service unavailable",
                "the idempotency store is unavailable; nothing was done",
            )
            .insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER.as_secs()))
            .finish();
        }
        Err(_) => return internal("the idempotency store failed; nothing was done"),
    };

    let response = handler().await;
    if !response.status().is_success() {
        // Only a success is final; after anything else a retry runs again.
        guard.release().await;
        return response;
    }
    let (head, body) = response.into_parts();
    let Ok(body) = to_bytes(body).await else {
        guard.release().await;
        return internal("the answer could not be read");
    };
    let stored = StoredResponse {
        status: head.status().as_u16(),
        headers: replayable_headers(head.headers()),
        body: body.to_vec(),
    };
    // The request ran, so its answer goes out even if it could not be
    // stored (see `Guard::complete`).
    let _ = guard.complete(&stored).await;
    head.set_body(body).map_into_boxed_body()
}

fn replayable_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !NOT_REPLAYED.contains(name))
        // A value that is not UTF-8 (obsolete Latin-1 text) cannot be
        // stored as a string; such headers are not replayed.
        .filter_map(|(name, value)| {
            let value = std::str::from_utf8(value.as_bytes()).ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect()
}

/// The stored answer as a response, byte for byte, marked as a replay
/// (`Idempotent-Replayed: true`); a 500 problem if it has an invalid status.
pub fn replay(stored: &StoredResponse) -> HttpResponse {
    let Ok(status) = StatusCode::from_u16(stored.status) else {
        return internal("a stored answer has an invalid status");
    };
    let mut response = HttpResponse::build(status);
    for (name, value) in &stored.headers {
        // Stored from a valid response, so both parse; skip rather than
        // fail the replay if one somehow does not.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.append_header((name, value));
        }
    }
    response
        .insert_header((IDEMPOTENT_REPLAYED, "true"))
        .body(stored.body.clone())
}

fn internal(detail: &str) -> HttpResponse {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        detail,
    )
    .finish()
}

/// A problem answer under construction, with its body set by `finish`.
struct Problem {
    builder: actix_web::HttpResponseBuilder,
    body: String,
}

impl Problem {
    fn insert_header(mut self, header: impl actix_web::http::header::TryIntoHeaderPair) -> Self {
        self.builder.insert_header(header);
        self
    }

    fn finish(mut self) -> HttpResponse {
        self.builder.content_type(PROBLEM_JSON).body(self.body)
    }
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Problem {
    let body = serde_json::json!({
        "type": format!("{PROBLEM_TYPE_PREFIX}{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    Problem {
        builder: HttpResponse::build(status),
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;

    use actix_web::test::TestRequest;
    use actix_web::{App, web};
    use async_trait::async_trait;
    use sofiia_core_domain::ManualClock;

    use super::*;
    use crate::{
        IdempotencyStore, LeaseToken, MemoryIdempotencyStore, Reservation, Result as IdemResult,
    };

    fn idempotency() -> Idempotency {
        let clock = Arc::new(ManualClock::default());
        Idempotency::new(
            Arc::new(MemoryIdempotencyStore::new(clock, 100)),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }

    fn post(key: Option<&str>, body: &'static str) -> (HttpRequest, &'static [u8]) {
        let mut req = TestRequest::post().uri("/orders?dry=0");
        if let Some(key) = key {
            req = req.insert_header((IDEMPOTENCY_KEY, key));
        }
        (req.to_http_request(), body.as_bytes())
    }

    async fn body_json(response: HttpResponse) -> serde_json::Value {
        let bytes = to_bytes(response.into_body()).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn assert_problem(response: HttpResponse, status: u16, slug: &str) {
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(header(&response, "content-type"), Some(PROBLEM_JSON));
        let body = body_json(response).await;
        assert_eq!(body["type"], format!("{PROBLEM_TYPE_PREFIX}{slug}"));
        assert_eq!(body["status"], status);
        assert!(body["title"].is_string());
        assert!(body["detail"].is_string());
    }

    /// A handler that counts its runs and answers 201 with a header and a
    /// binary body.
    fn created(runs: &Cell<u32>) -> impl FnOnce() -> std::future::Ready<HttpResponse> + '_ {
        move || {
            runs.set(runs.get() + 1);
            ready(
                HttpResponse::Created()
                    .insert_header(("location", "/orders/1"))
                    .append_header(("x-multi", "a"))
                    .append_header(("x-multi", "b"))
                    .content_type("application/octet-stream")
                    .body(vec![0u8, 159, 146, 150]),
            )
        }
    }

    #[actix_web::test]
    async fn runs_once_then_replays_the_same_answer() {
        let idem = idempotency();
        let runs = Cell::new(0);
        let (req, body) = post(Some("order-0001"), "{\"item\":1}");

        let first = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert_eq!(header(&first, "idempotent-replayed"), None);
        let first_headers = first.headers().clone();
        let first_body = to_bytes(first.into_body()).await.unwrap();

        let again = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(runs.get(), 1, "the handler ran twice");
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
        for name in ["location", "content-type"] {
            assert_eq!(again.headers().get(name), first_headers.get(name), "{name}");
        }
        let multi: Vec<_> = again.headers().get_all("x-multi").collect();
        assert_eq!(multi, ["a", "b"]);
        let again_body = to_bytes(again.into_body()).await.unwrap();
        assert_eq!(again_body, first_body);
        assert_eq!(&again_body[..], &[0u8, 159, 146, 150]);

        // Another principal with the same key runs on its own.
        let bob = run_idempotent(&idem, "bob", &req, body, created(&runs)).await;
        assert_eq!(bob.status(), StatusCode::CREATED);
        assert_eq!(runs.get(), 2);
    }

    #[actix_web::test]
    async fn a_different_request_with_the_key_is_422() {
        let idem = idempotency();
        let runs = Cell::new(0);
        let (req, body) = post(Some("order-0001"), "{\"item\":1}");
        run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        let (req2, body2) = post(Some("order-0001"), "{\"item\":2}");
        let r = run_idempotent(&idem, "alice", &req2, body2, created(&runs)).await;
        assert_problem(r, 422, "idempotency-key-mismatch").await;
        // Another path is another request too.
        let req3 = TestRequest::post()
            .uri("/refunds?dry=0")
            .insert_header((IDEMPOTENCY_KEY, "order-0001"))
            .to_http_request();
        let r = run_idempotent(&idem, "alice", &req3, body, created(&runs)).await;
        assert_problem(r, 422, "idempotency-key-mismatch").await;
        assert_eq!(runs.get(), 1);
    }

    #[actix_web::test]
    async fn in_flight_is_409_with_retry_after() {
        let idem = idempotency();
        let runs = Cell::new(0);
        let (req, body) = post(Some("order-0001"), "{}");
        let key = ScopedKey::new("alice", key_from_request(&req).unwrap());
        let Begin::Execute(_running) = idem
            .begin(&key, &request_fingerprint(&req, body))
            .await
            .unwrap()
        else {
            panic!("expected Execute");
        };
        let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_problem(r, 409, "idempotency-key-in-flight").await;
        assert_eq!(runs.get(), 0);
    }

    #[actix_web::test]
    async fn a_failed_answer_releases_the_key() {
        let idem = idempotency();
        let runs = Cell::new(0);
        let (req, body) = post(Some("order-0001"), "{}");
        for status in [StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT] {
            let r = run_idempotent(&idem, "alice", &req, body, || {
                runs.set(runs.get() + 1);
                ready(HttpResponse::build(status).finish())
            })
            .await;
            assert_eq!(r.status(), status);
            assert_eq!(header(&r, "idempotent-replayed"), None);
        }
        // Released each time, so the next attempt runs and is stored.
        let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(runs.get(), 3);
    }

    #[actix_web::test]
    async fn missing_repeated_and_malformed_keys_are_400() {
        let idem = idempotency();
        let runs = Cell::new(0);
        let (req, body) = post(None, "{}");
        let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_problem(r, 400, "idempotency-key-missing").await;
        for bad in ["short", "has space1", "\"unterminated"] {
            let (req, body) = post(Some(bad), "{}");
            let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
            assert_problem(r, 400, "idempotency-key-invalid").await;
        }
        let req = TestRequest::post()
            .uri("/orders")
            .append_header((IDEMPOTENCY_KEY, "order-0001"))
            .append_header((IDEMPOTENCY_KEY, "order-0002"))
            .to_http_request();
        let r = run_idempotent(&idem, "alice", &req, b"{}", created(&runs)).await;
        assert_problem(r, 400, "idempotency-key-invalid").await;
        assert_eq!(runs.get(), 0);

        // The quoted form is the same key.
        let (req, body) = post(Some("order-0001"), "{}");
        run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        let (req, body) = post(Some("\"order-0001\""), "{}");
        let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(header(&r, "idempotent-replayed"), Some("true"));
        assert_eq!(runs.get(), 1);
    }

    /// A store whose backend is down.
    #[derive(Debug)]
    struct Down;

    #[derive(Debug, thiserror::Error)]
    #[error("down")]
    struct DownError;

    #[async_trait]
    impl IdempotencyStore for Down {
        async fn reserve(
            &self,
            _: &ScopedKey,
            _: &Fingerprint,
            _: Duration,
        ) -> IdemResult<Reservation> {
            Err(IdempotencyError::Unavailable {
                source: Box::new(DownError),
            })
        }
        async fn hold_pending(
            &self,
            _: &ScopedKey,
            _: &LeaseToken,
            _: &[u8],
            _: Duration,
            _: Duration,
        ) -> IdemResult<()> {
            Err(IdempotencyError::LeaseLost)
        }
        async fn complete(
            &self,
            _: &ScopedKey,
            _: &LeaseToken,
            _: &StoredResponse,
            _: Duration,
        ) -> IdemResult<()> {
            Err(IdempotencyError::LeaseLost)
        }
        async fn release(&self, _: &ScopedKey, _: &LeaseToken) -> IdemResult<()> {
            Err(IdempotencyError::LeaseLost)
        }
        async fn check(&self) -> IdemResult<()> {
            Ok(())
        }
    }

    #[actix_web::test]
    async fn an_unavailable_store_is_503_and_nothing_runs() {
        let idem = Idempotency::new(
            Arc::new(Down),
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        let runs = Cell::new(0);
        let (req, body) = post(Some("order-0001"), "{}");
        let r = run_idempotent(&idem, "alice", &req, body, created(&runs)).await;
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_problem(r, 503, "store-unavailable").await;
        assert_eq!(runs.get(), 0);
    }

    #[actix_web::test]
    async fn the_extractor_works_in_an_app() {
        async fn echo(key: IdempotencyKeyHeader) -> HttpResponse {
            HttpResponse::Ok().body(key.0.as_str().to_owned())
        }
        let app = actix_web::test::init_service(App::new().route("/", web::post().to(echo))).await;
        let req = TestRequest::post()
            .uri("/")
            .insert_header((IDEMPOTENCY_KEY, "\"quoted-key-1\""))
            .to_request();
        let r = actix_web::test::call_service(&app, req).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            actix_web::test::read_body(r).await,
            web::Bytes::from_static(b"quoted-key-1")
        );
        let req = TestRequest::post().uri("/").to_request();
        let r = actix_web::test::call_service(&app, req).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers().get("content-type").unwrap(), PROBLEM_JSON);
    }
}
