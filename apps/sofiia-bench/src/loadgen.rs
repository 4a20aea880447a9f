//! A closed-loop HTTP/1.1 load generator.
//!
//! `concurrency` simulated clients each hold one keep-alive connection and
//! send their next request as soon as the previous answer is read in full:
//! the offered load adapts to the server (closed loop), so latency is the
//! server's service time under that many requests in flight, not a queue
//! the generator built up. Each request's latency, from just before it is
//! written to the last byte of the answer, goes into an HDR histogram.
//!
//! The generator runs on a tokio runtime of its own with few threads (one by
//! default) so that it takes as little of the machine as possible from the
//! servers it measures; its cost per request is a few microseconds of raw
//! hyper client work, the same for the baseline and every scenario.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::{LoadResult, latency_histogram, record};

/// The request body type the generator sends.
pub(crate) type Body = Full<Bytes>;

/// What the simulated clients send and what counts as success.
pub(crate) trait Workload: Send + Sync + 'static {
    /// The `seq`-th request of client `client` (both from 0). `seq` is unique
    /// across clients when the run is bounded by a request count.
    fn request(&self, client: usize, seq: u64) -> Request<Body>;

    /// Whether an answer is a success. Default: status 200.
    fn accept(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        status == StatusCode::OK
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Run `warmup` unmeasured, then measure for `measure`.
    Duration {
        /// Unmeasured start: connections open, caches and pools warm up.
        warmup: Duration,
        /// The measured window.
        measure: Duration,
    },
    /// Send exactly this many requests between all clients, all measured.
    Requests(u64),
}

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Simulated clients, each with one connection and one request in flight.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Threads of the generator's runtime.
    pub threads: usize,
}

/// Runs `workload` against `config.addr` and returns what was measured.
///
/// # Errors
///
/// Only when the generator's runtime cannot be built; a server that refuses
/// connections or answers errors shows in the result's error counts.
pub(crate) fn run(config: LoadConfig, workload: Arc<dyn Workload>) -> io::Result<LoadResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .thread_name("bench-loadgen")
        .enable_all()
        .build()?;
    Ok(runtime.block_on(run_async(config, workload)))
}

/// The plan shared by every client: when to measure, when to stop, and the
/// shared request counter of a count-bounded run.
struct Plan {
    measure_from: Instant,
    end: Option<Instant>,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Plan {
    fn new(stop: Stop, start: Instant) -> Self {
        match stop {
            Stop::Duration { warmup, measure } => Plan {
                measure_from: start + warmup,
                end: Some(start + warmup + measure),
                limit: None,
                issued: AtomicU64::new(0),
            },
            Stop::Requests(n) => Plan {
                measure_from: start,
                end: None,
                limit: Some(n),
                issued: AtomicU64::new(0),
            },
        }
    }

    /// The next sequence number for a client whose own count is `local`, or
    /// `None` when the run is over.
    fn next(&self, local: u64) -> Option<u64> {
        match (self.end, self.limit) {
            (Some(end), _) => (Instant::now() < end).then_some(local),
            (None, Some(limit)) => {
                let seq = self.issued.fetch_add(1, Ordering::Relaxed);
                (seq < limit).then_some(seq)
            }
            (None, None) => None,
        }
    }

    /// Whether a request that completed at `done` is inside the window.
    fn measured(&self, done: Instant) -> bool {
        done >= self.measure_from && self.end.is_none_or(|end| done <= end)
    }
}

struct ClientStats {
    ok: u64,
    ok_total: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    latency: hdrhistogram::Histogram<u64>,
}

async fn run_async(config: LoadConfig, workload: Arc<dyn Workload>) -> LoadResult {
    let start = Instant::now();
    let plan = Arc::new(Plan::new(config.stop, start));
    let clients: Vec<_> = (0..config.concurrency.max(1))
        .map(|client| {
            let plan = Arc::clone(&plan);
            let workload = Arc::clone(&workload);
            tokio::spawn(run_client(client, config.addr, workload, plan))
        })
        .collect();
    let mut total = LoadResult {
        ok: 0,
        ok_total: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency: latency_histogram(),
    };
    for client in clients {
        match client.await {
            Ok(stats) => {
                total.ok += stats.ok;
                total.ok_total += stats.ok_total;
                total.errors += stats.errors;
                for (kind, n) in stats.error_kinds {
                    *total.error_kinds.entry(kind).or_default() += n;
                }
                // Same bounds on both sides: adding cannot fail.
                let _ = total.latency.add(&stats.latency);
            }
            Err(_) => {
                total.errors += 1;
                *total
                    .error_kinds
                    .entry("client task panicked".to_owned())
                    .or_default() += 1;
            }
        }
    }
    total.elapsed = match config.stop {
        Stop::Duration { measure, .. } => measure,
        Stop::Requests(_) => start.elapsed(),
    };
    total
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {}", e.kind()))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped; errors show
        // on the next request of this client.
        let _ = connection.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
) -> Result<(StatusCode, HeaderMap), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    // The whole body, so the connection is ready for the next request and
    // the latency includes the transfer.
    body.collect().await.map_err(|e| format!("body: {e}"))?;
    Ok((parts.status, parts.headers))
}

async fn run_client(
    client: usize,
    addr: SocketAddr,
    workload: Arc<dyn Workload>,
    plan: Arc<Plan>,
) -> ClientStats {
    let mut stats = ClientStats {
        ok: 0,
        ok_total: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        latency: latency_histogram(),
    };
    let mut sender: Option<SendRequest<Body>> = None;
    let mut local = 0u64;
    while let Some(seq) = plan.next(local) {
        local += 1;
        let conn = match sender.as_mut() {
            Some(conn) => conn,
            None => match connect(addr).await {
                Ok(conn) => sender.insert(conn),
                Err(kind) => {
                    stats.errors += 1;
                    *stats.error_kinds.entry(kind).or_default() += 1;
                    // A refused connection fails at once; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let request = workload.request(client, seq);
        let started = Instant::now();
        let outcome = exchange(conn, request).await;
        let done = Instant::now();
        let counted = plan.measured(done);
        match outcome {
            Ok((status, headers)) if workload.accept(status, &headers) => {
                stats.ok_total += 1;
                if counted {
                    stats.ok += 1;
                    record(&mut stats.latency, done - started);
                }
            }
            Ok((status, _)) => {
                if counted {
                    stats.errors += 1;
                    *stats
                        .error_kinds
                        .entry(format!("status {}", status.as_u16()))
                        .or_default() += 1;
                }
            }
            Err(kind) => {
                sender = None;
                if counted {
                    stats.errors += 1;
                    *stats.error_kinds.entry(kind).or_default() += 1;
                }
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_plan_measures_only_its_window() {
        let start = Instant::now();
        let plan = Plan::new(
            Stop::Duration {
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(2),
            },
            start,
        );
        assert!(!plan.measured(start + Duration::from_millis(500)));
        assert!(plan.measured(start + Duration::from_millis(1500)));
        assert!(!plan.measured(start + Duration::from_millis(3500)));
        // Not over yet: the client's own counter is its sequence.
        assert_eq!(plan.next(7), Some(7));
    }

    #[test]
    fn a_request_plan_hands_out_each_sequence_number_once() {
        let plan = Plan::new(Stop::Requests(3), Instant::now());
        let seqs: Vec<_> = (0..5).map(|_| plan.next(0)).collect();
        assert_eq!(seqs, vec![Some(0), Some(1), Some(2), None, None]);
        assert!(plan.measured(Instant::now()));
    }
}
