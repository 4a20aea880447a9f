//! Health, readiness and metrics: no authentication.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::future::join_all;
use serde_json::{Map, Value, json};

use crate::state::AppState;

/// The build's version and git revision.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the binary was built from, or `unknown`.
pub const GIT_SHA: &str = env!("SOFIIA_GIT_SHA");

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": VERSION, "git_sha": GIT_SHA}))
}

fn check_result<E: std::fmt::Display>(
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Value {
    match result {
        Ok(Ok(())) => json!({"status": "ok"}),
        Ok(Err(e)) => json!({"status": "error", "error": e.to_string()}),
        Err(_) => json!({"status": "error", "error": "timed out"}),
    }
}

/// 200 when every backend answers, 503 otherwise. Nodes are probed and
/// reported too, but do not decide readiness: a console whose node is down
/// still serves its chats, and answers sends with 502 until the node returns.
pub(super) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (chat_index, idempotency, rate_limiter, audit) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.chat_index.check()),
        tokio::time::timeout(CHECK_TIMEOUT, state.idempotency.store().check()),
        tokio::time::timeout(CHECK_TIMEOUT, state.rate_limiter.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.audit.check()),
    );
    let mut checks = Map::new();
    checks.insert("chat_index".into(), check_result(chat_index));
    checks.insert("idempotency".into(), check_result(idempotency));
    checks.insert("rate_limiter".into(), check_result(rate_limiter));
    checks.insert("audit".into(), check_result(audit));
    let ready = checks.values().all(|c| c["status"] == "ok");

    let probes = state.router.nodes().iter().map(|node| {
        let router = state.router.clone();
        async move {
            let result = tokio::time::timeout(CHECK_TIMEOUT, router.probe(node)).await;
            (node.to_string(), check_result(result))
        }
    });
    let nodes: Map<String, Value> = join_all(probes).await.into_iter().collect();

    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
        "nodes": nodes,
    });
    if ready {
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
