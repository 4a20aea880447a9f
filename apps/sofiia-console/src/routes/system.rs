//! Health, readiness, metrics and the API's own description: no
//! authentication.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::build_info::{GIT_SHA, VERSION};
use crate::problem::ApiError;
use crate::state::AppState;

/// The process serves.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
    /// The build's version.
    version: &'static str,
    /// The git revision it was built from, or `unknown`.
    git_sha: &'static str,
}

/// Whether every store answers, with each store's and each node's probe.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Ready {
    /// `ready`. (A console that is not ready answers 503 with a problem
    /// document of type `not-ready` carrying the same `checks` and `nodes`.)
    #[schema(pattern = "^ready$")]
    status: &'static str,
    /// Per store (`chat_index`, `idempotency`, `rate_limiter`, `audit`):
    /// `{"status": "ok"|"error", "backend": "sqlite"|"postgres"|"inmemory"|"redis", "error"?}`.
    #[schema(value_type = Object)]
    checks: Map<String, Value>,
    /// Per node, `{"status": "ok"|"error", "error"?}` (`ok` when any of its
    /// replicas answers), and for a node with replicas `"replicas": [{"index",
    /// "status": "ok"|"resting", "resting_ms"?}]`; informational.
    #[schema(value_type = Object)]
    nodes: Map<String, Value>,
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/api/health",
    operation_id = "getHealth",
    tag = "system",
    responses((status = 200, description = "The process serves.", body = Health)),
)]
pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        version: VERSION,
        git_sha: GIT_SHA,
    })
}

/// Readiness: 200 when every store answers, 503 otherwise. Nodes are
/// probed and reported too, but do not decide readiness: a console whose
/// node is down still serves its chats, and answers sends to it with 502.
/// Probes are cached for a second.
#[utoipa::path(
    get,
    path = "/api/ready",
    operation_id = "getReady",
    tag = "system",
    responses(
        (status = 200, description = "Every store answers.", body = Ready),
    ),
)]
pub(super) async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let health = state.readiness.current().await;
    if health.ready {
        return Ok(HttpResponse::Ok().json(Ready {
            status: "ready",
            checks: health.checks,
            nodes: health.nodes,
        }));
    }
    // A problem document like every error, with the per-backend detail.
    let failing: Vec<&str> = health
        .checks
        .iter()
        .filter(|(_, check)| check["status"] != "ok")
        .map(|(name, _)| name.as_str())
        .collect();
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        format!("not answering: {}", failing.join(", ")),
    )
    .with_retry_after(std::time::Duration::from_secs(1))
    .with_extension("checks", Value::Object(health.checks))
    .with_extension("nodes", Value::Object(health.nodes)))
}

/// Prometheus metrics, in the text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "system",
    responses((status = 200, description = "Every metric, with HELP and TYPE.", content_type = "text/plain", body = String)),
)]
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This document: the OpenAPI 3.1 description of the API.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "getOpenApi",
    tag = "system",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object)),
)]
pub(super) async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}
