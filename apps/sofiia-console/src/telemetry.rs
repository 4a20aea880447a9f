//! Logs, metrics and the request middleware that ties them to request ids.
//!
//! Every response passes through [`request_middleware`]: it assigns the
//! request id, renders errors as problem+json carrying that id, sets
//! `X-Request-Id`, counts the request in `sofiia_http_requests_total` and
//! `sofiia_http_request_duration_seconds`, and writes one JSON log line.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use slog::{Drain as _, Logger, o};

use crate::auth::Operator;
use crate::problem::{ApiError, PROBLEM_JSON};

/// The request id header, read from clients and set on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// When the request arrived, for the `latency_ms` of its log lines.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

/// The chat a request acts on when its path does not name one (chat
/// creation), for the `chat_id` of its log lines.
#[derive(Debug, Clone)]
pub struct LogChatId(pub String);

/// Accepts a client's request id if it is 1..=128 characters of
/// `[A-Za-z0-9._:-]`, so it is safe in logs and headers; otherwise a new one.
fn request_id_from(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// A JSON-lines logger on `writer`, through a background thread so logging
/// never blocks a request. Keep the guard until exit: dropping it flushes.
pub fn json_logger<W: Write + Send + 'static>(writer: W) -> (Logger, slog_async::AsyncGuard) {
    let drain = slog_json::Json::new(writer)
        .add_default_keys()
        .set_newlines(true)
        .build()
        .fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(16_384)
        .thread_name("sofiia-log".into())
        .build_with_guard();
    (
        Logger::root(drain.fuse(), o!("service" => "sofiia-console")),
        guard,
    )
}

/// A JSON-lines logger that writes synchronously; for tests that read the
/// lines back.
pub fn json_logger_sync<W: Write + Send + 'static>(writer: W) -> Logger {
    let drain = slog_json::Json::new(writer)
        .add_default_keys()
        .set_newlines(true)
        .build();
    Logger::root(Mutex::new(drain).fuse(), o!("service" => "sofiia-console"))
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use.
///
/// Every console in one process shares it (metrics are process-global). If
/// an embedding application installed its own recorder first, this handle
/// renders only what reaches it, which is nothing: `/metrics` then stays empty
/// and the embedder's exporter has the series.
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            // Histograms buffer samples until upkeep folds them in; without
            // this a console nobody scrapes would grow without bound.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("sofiia-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}

/// Writes one flow event: `flow`, the request's id, operator and chat, the
/// time since the request arrived (`latency_ms`), and `kv`. Never pass
/// message text, tokens or keys in `kv`.
pub fn flow_event<T>(logger: &Logger, req: &HttpRequest, flow: &'static str, kv: slog::OwnedKV<T>)
where
    T: slog::SendSyncRefUnwindSafeKV + 'static,
{
    let ext = req.extensions();
    let request_id = ext.get::<RequestId>().map(|r| r.0.clone());
    let operator = ext.get::<Operator>().map(|o| o.0.to_string());
    let chat_id = req
        .match_info()
        .get("chat_id")
        .map(str::to_owned)
        .or_else(|| ext.get::<LogChatId>().map(|c| c.0.clone()));
    let latency_ms = ext
        .get::<RequestStart>()
        .map(|s| u64::try_from(s.0.elapsed().as_millis()).unwrap_or(u64::MAX));
    drop(ext);
    let logger = logger.new(o!(
        "flow" => flow,
        "request_id" => request_id,
        "operator" => operator,
        "chat_id" => chat_id,
        "latency_ms" => latency_ms,
    ));
    slog::info!(logger.new(kv), "{}", flow);
}

fn bounded_method(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Turns an error answer that is not problem+json yet (a 404 of the router,
/// a 405, a payload error) into one, keeping its status and headers.
fn problem_for(res: &HttpResponse, request_id: &str) -> Option<HttpResponse> {
    if let Some(api) = res.error().and_then(|e| e.as_error::<ApiError>()) {
        return Some(api.to_response(Some(request_id)));
    }
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
    let mut problem = ApiError::new(status, slug, title, detail);
    for (name, value) in res.headers() {
        if name != CONTENT_TYPE {
            problem = problem.with_header(name.clone(), value.clone());
        }
    }
    Some(problem.to_response(Some(request_id)))
}

/// The middleware around every request; see the module docs.
///
/// # Errors
///
/// Never: an error of an inner service is rendered as a response.
pub async fn request_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = request_id_from(&req);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(RequestStart(started));

    // Routing needs the request unshared, so nothing may hold a clone of it
    // while the inner service runs. Handler and extractor errors arrive as
    // responses; an `Err` here would come from actix itself and keeps its own
    // rendering.
    let mut res = next.call(req).await?.map_into_boxed_body();
    let http_req = res.request().clone();
    let logger = http_req
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .map(|s| s.logger.clone());
    // Copied out first: the extensions' borrow must not live across the await.
    let denied = http_req.extensions().get::<crate::auth::Denied>().copied();
    if let Some(crate::auth::Denied(reason)) = denied
        && let Some(state) = http_req.app_data::<actix_web::web::Data<crate::state::AppState>>()
        && let Err(unaudited) = crate::auth::audit_denial(state, &http_req, reason).await
    {
        res = res.into_response(unaudited.to_response(Some(&request_id)));
    }
    let cause = res
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
        .and_then(ApiError::cause_chain);
    if let Some(problem) = problem_for(res.response(), &request_id) {
        res = res.into_response(problem);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }

    let status = res.status();
    let route = http_req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = bounded_method(http_req.method());
    let elapsed = started.elapsed();
    metrics::counter!(
        "sofiia_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(
        "sofiia_http_request_duration_seconds",
        "method" => method,
        "route" => route.clone(),
    )
    .record(elapsed.as_secs_f64());

    if let Some(logger) = logger {
        if status.is_server_error() {
            flow_event(
                &logger,
                &http_req,
                "error",
                o!("status" => status.as_u16(), "route" => route.clone(), "cause" => cause),
            );
        }
        flow_event(
            &logger,
            &http_req,
            "request",
            o!(
                "method" => method,
                "route" => route,
                "path" => http_req.path().to_owned(),
                "status" => status.as_u16(),
            ),
        );
    }
    Ok(res)
}
