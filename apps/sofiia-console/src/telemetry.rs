//! Logs and metrics: the JSON logger, the Prometheus recorder, and the flow
//! events every part of the console writes.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use actix_web::{HttpMessage as _, HttpRequest};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use slog::{Drain as _, Logger, o};

use crate::request::{LogChatId, Operator, RequestId, RequestStart};

/// A JSON-lines logger on `writer`, through a background thread so logging
/// never blocks a request. Keep the guard until exit: dropping it flushes.
///
/// Each line is put together in a buffer and handed to `writer` whole, in
/// one write, once it is complete: the pieces of a line never reach a
/// shared writer such as stdout one by one.
pub fn json_logger<W: Write + Send + 'static>(writer: W) -> (Logger, slog_async::AsyncGuard) {
    let drain = slog_json::Json::new(std::io::BufWriter::with_capacity(16 * 1024, writer))
        .add_default_keys()
        .set_newlines(true)
        .set_flush(true)
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
            describe_metrics();
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

/// The console's metrics, each with its HELP text and unit, so that
/// `/metrics` passes `promtool check metrics`. Names are fixed by the
/// contract; labels are bounded.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use sofiia_router_client::{INFER_DURATION_SECONDS, INFER_TOTAL};
    describe_counter!(
        "sofiia_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        "sofiia_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its answer, by method and route template."
    );
    describe_counter!(
        "sofiia_idempotency_total",
        Unit::Count,
        "Sends by what their Idempotency-Key found: new, replay, conflict, mismatch or error."
    );
    describe_counter!(
        sofiia_idempotency::EVICTIONS_METRIC,
        Unit::Count,
        "Answers the inmemory idempotency backend dropped before their TTL to stay within its bounds."
    );
    describe_counter!(
        "sofiia_ratelimit_total",
        Unit::Count,
        "Quota decisions of sends, by scope (chat, operator) and outcome (allowed, rejected)."
    );
    describe_counter!(
        INFER_TOTAL,
        Unit::Count,
        "Infer calls to nodes, by node and outcome."
    );
    describe_histogram!(
        INFER_DURATION_SECONDS,
        Unit::Seconds,
        "Time an infer call took, by node."
    );
    describe_counter!(
        AUDIT_EVENTS_WRITTEN,
        Unit::Count,
        "Audit events written, by action."
    );
    describe_counter!(
        AUDIT_WRITE_FAILURES,
        Unit::Count,
        "Audit events that could not be written; each refused its action with 503."
    );
    describe_counter!(
        AUTH_DENIED,
        Unit::Count,
        "Requests refused for their credentials, by reason."
    );
    describe_gauge!(
        "sofiia_backend_up",
        "Whether a store answered its last probe (1) or not (0), by backend."
    );
    describe_gauge!(
        "sofiia_node_up",
        "Whether a node answered its last probe (1) or not (0), by node."
    );
    describe_gauge!(
        "sofiia_build_info",
        "Always 1; the labels name the running build's version and git revision."
    );
}

/// The metric counting audit events written, by action (a fixed set).
pub const AUDIT_EVENTS_WRITTEN: &str = "sofiia_audit_events_total";

/// The metric counting audit events that could not be written.
pub const AUDIT_WRITE_FAILURES: &str = "sofiia_audit_write_failures_total";

/// The metric counting refused credentials, by reason.
pub const AUTH_DENIED: &str = "sofiia_auth_denied_total";

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
