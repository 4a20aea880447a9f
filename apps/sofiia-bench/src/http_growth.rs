//! Page fetch as a chat grows, through the console's HTTP API, for every
//! chat index backend the console accepts, Redis included when it does.
//!
//! The crate-level measurement (`growth`) calls the stores directly; this
//! one exists for backends the harness cannot call directly, and measures
//! the others the same way so the rows compare. Each chat is filled with
//! real sends (so the fill rate is the console's single-chat send rate) and
//! its newest page, `GET /api/chats/{id}/messages?limit=50`, is read by one
//! client, one request at a time.

use std::sync::Arc;
use std::time::Instant;

use crate::loadgen::{self, LoadConfig, Stop};
use crate::procs::Server;
use crate::rig::{ConsoleSpec, Rig};
use crate::workloads::{Gets, Sends};

/// One row: a backend at a chat size, over HTTP.
#[derive(Debug, Clone)]
pub(crate) struct HttpGrowthRow {
    pub backend: &'static str,
    pub messages: u64,
    pub fill_sends_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn start(rig: &Rig, stub: &Server, backend: &'static str, token: &str) -> Result<Server, String> {
    let spec = ConsoleSpec::new(&format!("http-growth-{backend}"))
        .var("SOFIIA_OPERATOR_TOKENS", format!("bench:{token}"))
        .var("SOFIIA_CHAT_INDEX_BACKEND", backend)
        .var(
            "SOFIIA_REDIS_PREFIX",
            format!("sofiia-bench:{}:growth:", rig.session),
        );
    rig.console(&spec, stub)
        .map_err(|e| format!("console ({backend} chat index): {e}"))
}

/// Measures `backends` at `sizes` (messages, ascending).
///
/// # Errors
///
/// When a console does not start or the load generator fails.
pub(crate) fn run(
    rig: &Rig,
    backends: &[&'static str],
    sizes: &[u64],
    iterations: u64,
) -> Result<Vec<HttpGrowthRow>, String> {
    let s = &rig.settings;
    let stub = rig.stub()?;
    let token = format!("tok-{}-bench-operator-token", rig.session);
    let mut rows = Vec::new();
    for &backend in backends {
        let console = start(rig, &stub, backend, &token)?;
        let chat = format!("growth-{backend}");
        let mut sends = 0u64;
        for &messages in sizes {
            let target = messages.div_ceil(2);
            let started = Instant::now();
            crate::rig::clear_stub_calls(&stub);
            let fill = loadgen::run(
                LoadConfig {
                    addr: console.addr(),
                    concurrency: s.concurrency,
                    stop: Stop::Requests(target - sends),
                    threads: s.loadgen_threads,
                },
                Arc::new(
                    Sends::new(
                        console.addr(),
                        std::slice::from_ref(&token),
                        &chat,
                        &format!("{}-growth-{backend}-{messages}", rig.session),
                    )
                    .single_chat(),
                ),
            )
            .map_err(|e| format!("load generator: {e}"))?;
            let took = started.elapsed();
            if fill.errors > 0 {
                return Err(format!(
                    "filling the {backend} chat failed: {}",
                    fill.error_summary()
                ));
            }
            let fill_sends_per_sec = fill.ok_total as f64 / took.as_secs_f64().max(1e-9);
            sends = target;
            let read = loadgen::run(
                LoadConfig {
                    addr: console.addr(),
                    concurrency: 1,
                    stop: Stop::Requests(iterations),
                    threads: 1,
                },
                Arc::new(Gets::new(
                    console.addr(),
                    Some(&token),
                    &format!("/api/chats/{chat}/messages?limit=50"),
                )),
            )
            .map_err(|e| format!("load generator: {e}"))?;
            crate::progress(&format!(
                "http growth: {backend} at {} messages: first page p50 {:.3} ms (filled at {fill_sends_per_sec:.0} sends/s)",
                sends * 2,
                read.latency_ms(0.5)
            ));
            rows.push(HttpGrowthRow {
                backend,
                messages: sends * 2,
                fill_sends_per_sec,
                p50_ms: read.latency_ms(0.5),
                p99_ms: read.latency_ms(0.99),
                errors: read.errors,
            });
        }
        console.stop();
    }
    Ok(rows)
}
