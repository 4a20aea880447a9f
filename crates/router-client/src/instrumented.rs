//! Infer metrics around any router.

use std::time::Instant;

use async_trait::async_trait;
use sofiia_core_domain::NodeId;

use crate::{InferObserver, InferReply, InferRequest, NodeRouter, RouterError};

/// Counter of infer calls, labelled `node` and `outcome` (`ok` or
/// [`RouterError::kind`]).
pub const INFER_TOTAL: &str = "sofiia_infer_total";

/// Histogram of infer call durations in seconds, labelled `node`.
pub const INFER_DURATION_SECONDS: &str = "sofiia_infer_duration_seconds";

/// The `node` label of calls for a node the router does not know, so a
/// client naming arbitrary nodes cannot create unbounded label values.
const UNKNOWN_NODE_LABEL: &str = "unknown";

/// Wraps a [`NodeRouter`] and records, through the [`metrics`] facade, every
/// infer call as [`INFER_TOTAL`]`{node,outcome}` and
/// [`INFER_DURATION_SECONDS`]`{node}`.
///
/// Label values are bounded: `node` is a configured node's name or
/// `unknown`, `outcome` is `ok` or one of [`RouterError::kind`]'s labels.
/// Probes are passed through unrecorded; they are not sends.
///
/// ```
/// use sofiia_router_client::{EchoRouter, Instrumented, NodeRouter};
///
/// Instrumented::<EchoRouter>::describe_metrics();
/// let router = Instrumented::new(EchoRouter::new());
/// assert_eq!(router.default_node().as_str(), "echo");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Instrumented<R> {
    inner: R,
}

impl<R> Instrumented<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Instrumented { inner }
    }

    /// The wrapped router.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Unwraps the router.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Registers the metrics' descriptions and units with the installed
    /// recorder; call once after installing it, so `/metrics` shows `# HELP`
    /// lines.
    pub fn describe_metrics() {
        metrics::describe_counter!(
            INFER_TOTAL,
            "Infer calls to inference nodes, by node and outcome."
        );
        metrics::describe_histogram!(
            INFER_DURATION_SECONDS,
            metrics::Unit::Seconds,
            "Duration of infer calls to inference nodes, by node."
        );
    }
}

#[async_trait]
impl<R: NodeRouter> NodeRouter for Instrumented<R> {
    fn nodes(&self) -> &[NodeId] {
        self.inner.nodes()
    }

    fn default_node(&self) -> &NodeId {
        self.inner.default_node()
    }

    fn knows(&self, node: &NodeId) -> bool {
        self.inner.knows(node)
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        self.infer_observed(req, &()).await
    }

    async fn infer_observed(
        &self,
        req: &InferRequest,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, RouterError> {
        let started = Instant::now();
        let result = self.inner.infer_observed(req, observer).await;
        let elapsed = started.elapsed();
        let node = if self.inner.knows(&req.node) {
            req.node.as_str().to_owned()
        } else {
            UNKNOWN_NODE_LABEL.to_owned()
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!(INFER_TOTAL, "node" => node.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(INFER_DURATION_SECONDS, "node" => node).record(elapsed.as_secs_f64());
        result
    }

    fn replicas(&self, node: &NodeId) -> Vec<crate::ReplicaStatus> {
        self.inner.replicas(node)
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        self.inner.probe(node).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::EchoRouter;
    use crate::testing::{FakeRouter, Scripted, Subject, request};

    async fn subject() -> Subject {
        Subject::new(Arc::new(Instrumented::new(FakeRouter::default())))
    }

    crate::node_router_tests!(subject);

    type Sample = (String, Vec<(String, String)>, DebugValue);

    fn record(router: &Instrumented<FakeRouter>, reqs: &[InferRequest]) -> Vec<Sample> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // A local recorder is per thread; the current-thread runtime polls
        // the calls on this thread.
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                for req in reqs {
                    let _ = router.infer(req).await;
                }
            })
        });
        let mut samples: Vec<Sample> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _description, value)| {
                let key = key.key();
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                (key.name().to_owned(), labels, value)
            })
            .collect();
        samples.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        samples
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn counts_outcomes_per_node_with_bounded_labels() {
        let fake = FakeRouter::new(["NODA1", "NODA2"]);
        fake.push(Scripted::Reply("fine".into()));
        fake.push(Scripted::Status(500));
        fake.push(Scripted::Timeout);
        let router = Instrumented::new(fake);
        let noda1 = NodeId::new("NODA1").unwrap();
        let noda2 = NodeId::new("NODA2").unwrap();
        let stranger = NodeId::new("made-up-by-a-client").unwrap();
        let samples = record(
            &router,
            &[
                request(&noda1, "a"),
                request(&noda1, "b"),
                request(&noda2, "c"),
                request(&stranger, "d"),
            ],
        );

        let counters: Vec<(&[(String, String)], u64)> = samples
            .iter()
            .filter(|s| s.0 == INFER_TOTAL)
            .map(|s| match s.2 {
                DebugValue::Counter(n) => (s.1.as_slice(), n),
                ref other => panic!("counter expected, got {other:?}"),
            })
            .collect();
        assert_eq!(
            counters,
            [
                (
                    labels(&[("node", "NODA1"), ("outcome", "ok")]).as_slice(),
                    1
                ),
                (
                    labels(&[("node", "NODA1"), ("outcome", "status")]).as_slice(),
                    1
                ),
                (
                    labels(&[("node", "NODA2"), ("outcome", "timeout")]).as_slice(),
                    1
                ),
                (
                    labels(&[("node", "unknown"), ("outcome", "unknown_node")]).as_slice(),
                    1
                ),
            ]
        );

        let histograms: Vec<(&[(String, String)], usize)> = samples
            .iter()
            .filter(|s| s.0 == INFER_DURATION_SECONDS)
            .map(|s| match &s.2 {
                DebugValue::Histogram(values) => (s.1.as_slice(), values.len()),
                other => panic!("histogram expected, got {other:?}"),
            })
            .collect();
        assert_eq!(
            histograms,
            [
                (labels(&[("node", "NODA1")]).as_slice(), 2),
                (labels(&[("node", "NODA2")]).as_slice(), 1),
                (labels(&[("node", "unknown")]).as_slice(), 1),
            ]
        );
    }

    #[tokio::test]
    async fn passes_calls_and_probes_through() {
        let router = Instrumented::new(EchoRouter::new());
        let node = router.default_node().clone();
        let reply = router.infer(&request(&node, "hi")).await.unwrap();
        assert_eq!(reply.text, "echo: hi");
        router.probe(&node).await.unwrap();
        assert_eq!(router.inner().nodes(), router.nodes());
        let _ = router.into_inner();
    }

    #[test]
    fn describes_metrics_without_a_recorder() {
        // No recorder installed: must be a no-op, not a panic.
        Instrumented::<EchoRouter>::describe_metrics();
    }
}
