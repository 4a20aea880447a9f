//! The middleware around every request.
//!
//! [`request_middleware`] assigns the request id, writes the `auth.denied`
//! event of a request refused for its credentials, renders every error as
//! problem+json carrying that id, sets `X-Request-Id`, counts the request in
//! `sofiia_http_requests_total` and `sofiia_http_request_duration_seconds`,
//! and writes one JSON log line.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{HttpMessage as _, HttpResponse};
use slog::o;

use crate::auth::denial_event;
use crate::problem::ApiError;
use crate::request::{Denied, REQUEST_ID, RequestId, RequestMeta, RequestStart};
use crate::state::AppState;
use crate::telemetry::{flow_event, record_http_request};

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

/// The answer as problem+json, if it is an error that is not one yet.
fn as_problem(res: &HttpResponse, request_id: &str) -> Option<HttpResponse> {
    if let Some(api) = res.error().and_then(|e| e.as_error::<ApiError>()) {
        return Some(api.to_response(Some(request_id)));
    }
    ApiError::from_framework(res).map(|p| p.to_response(Some(request_id)))
}

/// The middleware; see the module docs.
///
/// # Errors
///
/// Never: an error of an inner service is rendered as a response.
pub async fn request_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id =
        RequestId::from_client(req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()));
    let id = request_id.0.clone();
    req.extensions_mut().insert(request_id);
    req.extensions_mut().insert(RequestStart(started));

    // Routing needs the request unshared, so nothing may hold a clone of it
    // while the inner service runs. Handler and extractor errors arrive as
    // responses; an `Err` here would come from actix itself and keeps its own
    // rendering.
    let mut res = next.call(req).await?.map_into_boxed_body();
    let http_req = res.request().clone();
    let state = http_req.app_data::<Data<AppState>>().cloned();
    // Copied out first: the extensions' borrow must not live across the await.
    let denied = http_req.extensions().get::<Denied>().copied();
    if let (Some(Denied(reason)), Some(state)) = (denied, &state)
        && let Err(unaudited) = state
            .auditor
            .record(&RequestMeta::of(&http_req), denial_event(&http_req, reason))
            .await
    {
        res = res.into_response(ApiError::from(unaudited).to_response(Some(&id)));
    }
    let cause = res
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
        .and_then(ApiError::cause_chain);
    if let Some(problem) = as_problem(res.response(), &id) {
        res = res.into_response(problem);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }

    let status = res.status();
    let route = http_req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = bounded_method(http_req.method());
    record_http_request(
        method,
        &route,
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );

    if let Some(state) = state {
        if status.is_server_error() {
            flow_event(
                &state.logger,
                &http_req,
                "error",
                o!("status" => status.as_u16(), "route" => route.clone(), "cause" => cause),
            );
        }
        flow_event(
            &state.logger,
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
