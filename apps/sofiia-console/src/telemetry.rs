//! Logs and metrics: the JSON logger, the Prometheus recorder, and the flow
//! events every part of the console writes.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use actix_web::{HttpMessage as _, HttpRequest};
use metrics::{Counter, Histogram};
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
        "sofiia_node_replica_up",
        "Whether sends use a node's replica (1) or it rests after failing (0), by node and replica index."
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
    // One child logger for the caller's fields; the request's go with the
    // record itself.
    slog::info!(
        logger.new(kv), "{}", flow;
        "flow" => flow,
        "request_id" => request_id,
        "operator" => operator,
        "chat_id" => chat_id,
        "latency_ms" => latency_ms,
    );
}

/// `sofiia_http_requests_total` and `sofiia_http_request_duration_seconds`
/// of one route, by method (and status).
#[derive(Default)]
struct RouteMetrics {
    requests: HashMap<(&'static str, u16), Counter>,
    durations: HashMap<&'static str, Histogram>,
}

/// The handles of the per-request metrics, kept once registered: finding
/// one here is a hash lookup, where registering it again (what `counter!`
/// does on every call) builds its labels and key first. Routes are the
/// route templates plus `unmatched`, methods and statuses a bounded set, so
/// this stays small.
static HTTP_METRICS: OnceLock<RwLock<HashMap<String, RouteMetrics>>> = OnceLock::new();

/// Counts one answered request in `sofiia_http_requests_total` and records
/// its duration in `sofiia_http_request_duration_seconds`.
pub fn record_http_request(method: &'static str, route: &str, status: u16, seconds: f64) {
    let routes = HTTP_METRICS.get_or_init(RwLock::default);
    {
        let known = routes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(metrics) = known.get(route)
            && let (Some(counter), Some(histogram)) = (
                metrics.requests.get(&(method, status)),
                metrics.durations.get(method),
            )
        {
            counter.increment(1);
            histogram.record(seconds);
            return;
        }
    }
    let mut known = routes.write().unwrap_or_else(PoisonError::into_inner);
    let metrics = known.entry(route.to_owned()).or_default();
    let counter = metrics.requests.entry((method, status)).or_insert_with(|| {
        metrics::counter!(
            "sofiia_http_requests_total",
            "method" => method,
            "route" => route.to_owned(),
            "status" => status.to_string(),
        )
    });
    counter.increment(1);
    let histogram = metrics.durations.entry(method).or_insert_with(|| {
        metrics::histogram!(
            "sofiia_http_request_duration_seconds",
            "method" => method,
            "route" => route.to_owned(),
        )
    });
    histogram.record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series whose line starts with `prefix`.
    fn value(rendered: &str, prefix: &str) -> Option<f64> {
        rendered
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn request_metrics_count_every_request_under_its_labels() {
        let handle = metrics_handle();
        let route = "/test/record-http-request/{id}";
        for _ in 0..3 {
            record_http_request("GET", route, 200, 0.002);
        }
        record_http_request("GET", route, 404, 0.001);
        record_http_request("POST", route, 200, 0.5);
        let rendered = handle.render();
        let series = |method: &str, status: &str| {
            value(
                &rendered,
                &format!(
                    "sofiia_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(series("GET", "200"), Some(3.0), "{rendered}");
        assert_eq!(series("GET", "404"), Some(1.0), "{rendered}");
        assert_eq!(series("POST", "200"), Some(1.0), "{rendered}");
        let durations = |method: &str| {
            value(
                &rendered,
                &format!(
                    "sofiia_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\"}}"
                ),
            )
        };
        assert_eq!(durations("GET"), Some(4.0), "{rendered}");
        assert_eq!(durations("POST"), Some(1.0), "{rendered}");
    }
}
