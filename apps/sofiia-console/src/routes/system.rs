//! Health, readiness and metrics: no authentication.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::build_info::{GIT_SHA, VERSION};
use crate::state::AppState;

pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": VERSION, "git_sha": GIT_SHA}))
}

/// 200 when every backend answers, 503 otherwise. Nodes are probed and
/// reported too, but do not decide readiness: a console whose node is down
/// still serves its chats, and answers sends with 502 until the node returns.
pub(super) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let health = crate::health::probe(&state).await;
    let body = json!({
        "status": if health.ready { "ready" } else { "not_ready" },
        "checks": health.checks,
        "nodes": health.nodes,
    });
    if health.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
