//! Backend and node probes, shared by `/api/ready` and the background
//! prober that keeps `sofiia_backend_up` and `sofiia_node_up` current for
//! alerting.
//!
//! Probes are cached for [`FRESH_FOR`] and run by one caller at a time
//! (the others wait for its result): however often `/api/ready` is called,
//! each node and store is probed at most once a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Map, Value, json};
use sofiia_audit_store::DynAuditStore;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_idempotency::DynIdempotencyStore;
use sofiia_ratelimit::DynRateLimiter;
use sofiia_router_client::DynNodeRouter;
use tokio::sync::Mutex;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the background prober runs.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a probe's result is answered again instead of probing anew.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Which backend serves each store, as named in the configuration
/// (`sqlite`, `inmemory`, `redis`); reported by `/api/ready`.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// The chat index.
    pub chat_index: &'static str,
    /// Idempotency keys.
    pub idempotency: &'static str,
    /// Rate-limit buckets.
    pub rate_limiter: &'static str,
    /// The audit trail.
    pub audit: &'static str,
}

/// What is probed.
#[derive(Debug, Clone)]
pub struct Probed {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// Idempotency keys.
    pub idempotency: Arc<DynIdempotencyStore>,
    /// Rate-limit buckets.
    pub rate_limiter: Arc<DynRateLimiter>,
    /// The audit trail.
    pub audit: Arc<DynAuditStore>,
    /// The nodes.
    pub router: Arc<DynNodeRouter>,
    /// How each store is named.
    pub backends: Backends,
}

/// Probes, cached and single-flighted.
#[derive(Debug)]
pub struct Readiness {
    probed: Probed,
    last: Mutex<Option<(Instant, Health)>>,
}

impl Readiness {
    /// Probes of `probed`.
    pub fn new(probed: Probed) -> Self {
        Self {
            probed,
            last: Mutex::new(None),
        }
    }

    /// The latest result if it is fresh, else a new probe round (which the
    /// callers meanwhile wait for, rather than probing too).
    pub async fn current(&self) -> Health {
        let mut last = self.last.lock().await;
        if let Some((at, health)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return health.clone();
        }
        let health = probe(&self.probed).await;
        *last = Some((Instant::now(), health.clone()));
        health
    }
}

/// The result of one probe round.
#[derive(Debug, Clone)]
pub struct Health {
    /// Every backend answered.
    pub ready: bool,
    /// Per store: `{"status":"ok","backend":"redis"}` or
    /// `{"status":"error","error":...,"backend":...}`.
    pub checks: Map<String, Value>,
    /// Per node, the same shape; informational.
    pub nodes: Map<String, Value>,
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

fn up(v: &Value) -> f64 {
    if v["status"] == "ok" { 1.0 } else { 0.0 }
}

/// Checks every backend and node concurrently and updates the gauges.
async fn probe(state: &Probed) -> Health {
    let (chat_index, idempotency, rate_limiter, audit) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.chat_index.check()),
        tokio::time::timeout(CHECK_TIMEOUT, state.idempotency.check()),
        tokio::time::timeout(CHECK_TIMEOUT, state.rate_limiter.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.audit.check()),
    );
    let b = state.backends;
    let mut checks = Map::new();
    for (name, backend, mut result) in [
        ("chat_index", b.chat_index, check_result(chat_index)),
        ("idempotency", b.idempotency, check_result(idempotency)),
        ("rate_limiter", b.rate_limiter, check_result(rate_limiter)),
        ("audit", b.audit, check_result(audit)),
    ] {
        result["backend"] = json!(backend);
        checks.insert(name.into(), result);
    }

    let probes = state.router.nodes().iter().map(|node| {
        let router = state.router.clone();
        async move {
            let result = tokio::time::timeout(CHECK_TIMEOUT, router.probe(node)).await;
            let mut result = check_result(result);
            let replicas = router.replicas(node);
            if replicas.len() > 1 {
                let mut listed = Vec::with_capacity(replicas.len());
                for r in &replicas {
                    let up = if r.resting_for.is_some() { 0.0 } else { 1.0 };
                    metrics::gauge!("sofiia_node_replica_up",
                        "node" => node.to_string(), "replica" => r.index.to_string())
                    .set(up);
                    listed.push(match r.resting_for {
                        None => json!({"index": r.index, "status": "ok"}),
                        Some(left) => json!({
                            "index": r.index,
                            "status": "resting",
                            "resting_ms": u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                        }),
                    });
                }
                result["replicas"] = Value::Array(listed);
            }
            (node.to_string(), result)
        }
    });
    let nodes: Map<String, Value> = join_all(probes).await.into_iter().collect();

    for (backend, result) in &checks {
        metrics::gauge!("sofiia_backend_up", "backend" => backend.clone()).set(up(result));
    }
    for (node, result) in &nodes {
        metrics::gauge!("sofiia_node_up", "node" => node.clone()).set(up(result));
    }
    Health {
        ready: checks.values().all(|c| c["status"] == "ok"),
        checks,
        nodes,
    }
}

/// Probes every [`PROBE_INTERVAL`] until the task is aborted.
pub async fn run_prober(readiness: Arc<Readiness>) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    loop {
        interval.tick().await;
        readiness.current().await;
    }
}
