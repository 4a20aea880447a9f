//! Test support: [`FakeRouter`], a scriptable [`NodeRouter`] for unit tests of
//! code that sends (the console's handlers), and the behavioural suite every
//! router passes.
//!
//! Enabled by the crate feature `testing`.
//!
//! # Faking infer calls
//!
//! [`FakeRouter`] answers from a queue of [`Scripted`] outcomes, then from a
//! closure, then with an echo; it records every [`InferRequest`] it receives
//! and can hold calls in flight until released, so a test can observe what
//! the console does while a send is running.
//!
//! ```
//! use sofiia_router_client::NodeRouter;
//! use sofiia_router_client::testing::{FakeRouter, Scripted, request};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let router = FakeRouter::new(["NODA1", "NODA2"]);
//! router.push(Scripted::Status(503));
//! let noda2 = router.nodes()[1].clone();
//!
//! let err = router.infer(&request(&noda2, "status?")).await.unwrap_err();
//! assert_eq!(err.kind(), "status");
//! let reply = router.infer(&request(&noda2, "status?")).await.unwrap();
//! assert_eq!(reply.text, "[NODA2] echo: status?");
//! assert_eq!(router.call_count(), 2);
//! assert_eq!(router.calls()[0].node, noda2);
//! # }
//! ```
//!
//! # The behavioural suite
//!
//! The `case_*` functions check what every [`NodeRouter`] promises, and
//! [`node_router_tests!`](crate::node_router_tests) expands to one
//! `#[tokio::test]` per case. The subject must be a router whose every node
//! answers infer calls and probes.
//!
//! ```
//! use std::sync::Arc;
//! use sofiia_router_client::EchoRouter;
//! use sofiia_router_client::testing::Subject;
//!
//! async fn subject() -> Subject {
//!     Subject::new(Arc::new(EchoRouter::new()))
//! }
//!
//! sofiia_router_client::node_router_tests!(subject);
//! # fn main() {}
//! ```

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId, OperatorText};
use sofiia_testkit::Guarded;
use tokio::sync::watch;

use crate::{DynNodeRouter, InferReply, InferRequest, NodeRouter, RouterError};

/// An infer request to `node` with fresh ids, for tests.
///
/// # Panics
///
/// When `text` is not a valid [`OperatorText`].
pub fn request(node: &NodeId, text: &str) -> InferRequest {
    let message_id = MessageId::generate();
    InferRequest {
        node: node.clone(),
        chat_id: ChatId::new("test-chat").expect("valid chat id"),
        message_id,
        operator_id: OperatorId::new("test-operator").expect("valid operator id"),
        text: OperatorText::new(text).expect("tests pass valid operator text"),
        idempotency_key: format!("key-{message_id}"),
        request_id: format!("req-{message_id}"),
    }
}

/// An [`InferObserver`](crate::InferObserver) that keeps what it hears:
/// the pieces of a streamed reply and the replicas tried.
#[derive(Debug, Default)]
pub struct Recorder {
    stream: bool,
    pieces: std::sync::Mutex<Vec<String>>,
    attempts: std::sync::Mutex<Vec<crate::ReplicaAttempt>>,
}

impl Recorder {
    /// A recorder that wants the reply streamed.
    pub fn streaming() -> Self {
        Recorder {
            stream: true,
            ..Recorder::default()
        }
    }

    /// The pieces heard so far, in order.
    pub fn pieces(&self) -> Vec<String> {
        self.pieces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The replicas tried so far, in order.
    pub fn attempts(&self) -> Vec<crate::ReplicaAttempt> {
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl crate::InferObserver for Recorder {
    fn wants_stream(&self) -> bool {
        self.stream
    }

    fn delta(&self, text: &str) {
        self.pieces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(text.to_owned());
    }

    fn attempt(&self, attempt: crate::ReplicaAttempt) {
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(attempt);
    }
}

/// One scripted outcome of a [`FakeRouter`] infer call. The node in errors
/// is the requested one.
#[derive(Debug)]
#[non_exhaustive]
pub enum Scripted {
    /// A reply with this text.
    Reply(String),
    /// [`RouterError::Status`] with this HTTP status.
    Status(u16),
    /// [`RouterError::Unreachable`].
    Unreachable,
    /// [`RouterError::Timeout`] after [`FakeRouter::TIMEOUT`], returned at
    /// once: no test waits for it.
    Timeout,
    /// [`RouterError::InvalidReply`].
    InvalidReply,
    /// Exactly this result.
    Result(Result<InferReply, RouterError>),
}

impl Scripted {
    fn into_result(self, node: &NodeId) -> Result<InferReply, RouterError> {
        let node = node.clone();
        match self {
            Scripted::Reply(text) => Ok(InferReply { text }),
            Scripted::Status(status) => Err(RouterError::Status { node, status }),
            Scripted::Unreachable => Err(unreachable_error(&node)),
            Scripted::Timeout => Err(RouterError::Timeout {
                node,
                after: FakeRouter::TIMEOUT,
            }),
            Scripted::InvalidReply => Err(RouterError::InvalidReply {
                node,
                source: Box::new(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "scripted invalid reply",
                )),
            }),
            Scripted::Result(result) => result,
        }
    }
}

fn unreachable_error(node: &NodeId) -> RouterError {
    RouterError::Unreachable {
        node: node.clone(),
        source: Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
    }
}

type Responder = dyn Fn(&InferRequest) -> Result<InferReply, RouterError> + Send + Sync;

/// A scriptable [`NodeRouter`] test double.
///
/// Each infer call for a configured node is recorded, waits while the router
/// is [held](Self::hold), then takes its outcome from, in order:
///
/// 1. the queue filled by [`push`](Self::push);
/// 2. the closure set by [`respond_with`](Self::respond_with);
/// 3. an echo, `[<NODE>] echo: <text>`, like `sofiia-router-stub`'s.
///
/// A call for a node that is not configured is recorded too and fails with
/// [`RouterError::UnknownNode`] at once, consuming nothing, as the real
/// routers do without any I/O. Probes succeed except for nodes passed to
/// [`fail_probe`](Self::fail_probe).
pub struct FakeRouter {
    nodes: Vec<NodeId>,
    default: usize,
    state: Mutex<State>,
    // Counts recorded calls, so tests can wait for a call to be in flight.
    calls_seen: watch::Sender<usize>,
    // `true` while calls are held.
    held: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Scripted>,
    responder: Option<Arc<Responder>>,
    calls: Vec<InferRequest>,
    failing_probes: HashSet<NodeId>,
}

impl FakeRouter {
    /// The `after` of scripted timeouts: the console's default infer timeout.
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// A fake router knowing `nodes`, in that order; the first is the
    /// default.
    ///
    /// # Panics
    ///
    /// When `nodes` is empty, holds an invalid node name or a duplicate.
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ids: Vec<NodeId> = Vec::new();
        for name in nodes {
            let node = NodeId::new(name.as_ref()).expect("FakeRouter: invalid node name");
            assert!(!ids.contains(&node), "FakeRouter: duplicate node {node}");
            ids.push(node);
        }
        assert!(!ids.is_empty(), "FakeRouter: at least one node is needed");
        FakeRouter {
            nodes: ids,
            default: 0,
            state: Mutex::new(State::default()),
            calls_seen: watch::Sender::new(0),
            held: watch::Sender::new(false),
        }
    }

    /// Makes `node` the default node.
    ///
    /// # Panics
    ///
    /// When `node` is not one of the router's nodes.
    #[must_use]
    pub fn with_default(mut self, node: &str) -> Self {
        self.default = self
            .nodes
            .iter()
            .position(|n| n.as_str() == node)
            .unwrap_or_else(|| panic!("FakeRouter: default {node} is not configured"));
        self
    }

    /// Queues the outcome of a future call.
    pub fn push(&self, outcome: Scripted) -> &Self {
        self.state().script.push_back(outcome);
        self
    }

    /// Answers calls that find the queue empty with `responder`.
    pub fn respond_with<F>(&self, responder: F) -> &Self
    where
        F: Fn(&InferRequest) -> Result<InferReply, RouterError> + Send + Sync + 'static,
    {
        self.state().responder = Some(Arc::new(responder));
        self
    }

    /// Holds every infer call, new or already waiting, after it is recorded
    /// and before it answers, until [`release`](Self::release).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held calls, and all later ones, answer.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Waits until at least `n` infer calls have been received (whether they
    /// have answered or not).
    pub async fn wait_for_calls(&self, n: usize) {
        let mut seen = self.calls_seen.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we
        // borrow it.
        let _ = seen.wait_for(|count| *count >= n).await;
    }

    /// Makes probes of `node` fail with [`RouterError::Unreachable`].
    pub fn fail_probe(&self, node: &NodeId) {
        self.state().failing_probes.insert(node.clone());
    }

    /// Every infer request received so far, in arrival order.
    pub fn calls(&self) -> Vec<InferRequest> {
        self.state().calls.clone()
    }

    /// How many infer requests were received.
    pub fn call_count(&self) -> usize {
        self.state().calls.len()
    }

    /// The latest infer request received.
    pub fn last_call(&self) -> Option<InferRequest> {
        self.state().calls.last().cloned()
    }

    /// Forgets the recorded calls (the scripted outcomes stay).
    pub fn clear_calls(&self) {
        self.state().calls.clear();
        self.calls_seen.send_replace(0);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the
        // calls from the test's own assertions.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for FakeRouter {
    /// Knows `NODA1` (the default) and `NODA2`, like the product's setup.
    fn default() -> Self {
        Self::new(["NODA1", "NODA2"])
    }
}

impl fmt::Debug for FakeRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("FakeRouter")
            .field("nodes", &self.nodes)
            .field("default", &self.nodes[self.default])
            .field("scripted", &state.script.len())
            .field("calls", &state.calls.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl NodeRouter for FakeRouter {
    fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    fn default_node(&self) -> &NodeId {
        &self.nodes[self.default]
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        {
            let mut state = self.state();
            state.calls.push(req.clone());
            self.calls_seen.send_replace(state.calls.len());
        }
        if !self.knows(&req.node) {
            return Err(RouterError::UnknownNode {
                node: req.node.clone(),
            });
        }
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
        let (scripted, responder) = {
            let mut state = self.state();
            (state.script.pop_front(), state.responder.clone())
        };
        match (scripted, responder) {
            (Some(outcome), _) => outcome.into_result(&req.node),
            (None, Some(responder)) => responder(req),
            (None, None) => Ok(InferReply {
                text: format!("[{}] echo: {}", req.node, req.text.as_str()),
            }),
        }
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        if !self.knows(node) {
            return Err(RouterError::UnknownNode { node: node.clone() });
        }
        if self.state().failing_probes.contains(node) {
            return Err(unreachable_error(node));
        }
        Ok(())
    }
}

/// A router under test, with whatever must stay alive while it is used (a
/// node server, a temporary directory...).
pub struct Subject(Guarded<DynNodeRouter>);

impl Subject {
    /// A subject that needs nothing kept alive.
    pub fn new(router: Arc<DynNodeRouter>) -> Self {
        Subject(Guarded::new(router))
    }

    /// A subject that keeps `guard` alive until the case ends.
    pub fn with_guard(router: Arc<DynNodeRouter>, guard: impl Any + Send) -> Self {
        Subject(Guarded::with_guard(router, guard))
    }

    /// The router.
    pub fn router(&self) -> &DynNodeRouter {
        self.0.get()
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("router", &self.router())
            .finish_non_exhaustive()
    }
}

/// A node name no subject configures.
fn stranger() -> NodeId {
    NodeId::new("not-configured-in-any-suite").expect("valid node name")
}

/// The node list is non-empty, free of duplicates, holds the default, and
/// `knows` agrees with it.
pub async fn case_nodes_are_consistent(router: &DynNodeRouter) {
    let nodes = router.nodes();
    assert!(!nodes.is_empty(), "a router knows at least one node");
    for (i, node) in nodes.iter().enumerate() {
        assert!(!nodes[..i].contains(node), "{node} is listed twice");
        assert!(router.knows(node), "knows({node}) must be true");
    }
    assert!(
        nodes.contains(router.default_node()),
        "the default node must be configured"
    );
    assert!(!router.knows(&stranger()));
}

/// Every configured node answers an infer call with a reply.
pub async fn case_every_node_answers(router: &DynNodeRouter) {
    for node in router.nodes() {
        let reply = router
            .infer(&request(node, "status?"))
            .await
            .unwrap_or_else(|e| panic!("{node} must answer: {e}"));
        assert!(!reply.text.is_empty(), "{node} answered an empty text");
    }
}

/// A node that is not configured fails with `UnknownNode`, for infer calls
/// and probes alike.
pub async fn case_unknown_node_is_rejected(router: &DynNodeRouter) {
    let node = stranger();
    let err = router
        .infer(&request(&node, "hello"))
        .await
        .expect_err("an unknown node cannot answer");
    assert!(
        matches!(err, RouterError::UnknownNode { .. }),
        "infer: UnknownNode expected, got {err:?}"
    );
    assert_eq!(err.kind(), "unknown_node");
    assert_eq!(err.node(), &node);
    let err = router
        .probe(&node)
        .await
        .expect_err("an unknown node cannot be probed");
    assert!(
        matches!(err, RouterError::UnknownNode { .. }),
        "probe: UnknownNode expected, got {err:?}"
    );
}

/// Every configured node answers a probe.
pub async fn case_every_node_answers_probes(router: &DynNodeRouter) {
    for node in router.nodes() {
        router
            .probe(node)
            .await
            .unwrap_or_else(|e| panic!("probe of {node} must succeed: {e}"));
    }
}

/// Concurrent calls to the default node all answer, each with its own reply.
pub async fn case_concurrent_calls_answer(router: &DynNodeRouter) {
    let node = router.default_node();
    let texts = ["one", "two", "three", "four"];
    let reqs: Vec<InferRequest> = texts.iter().map(|t| request(node, t)).collect();
    let (a, b, c, d) = tokio::join!(
        router.infer(&reqs[0]),
        router.infer(&reqs[1]),
        router.infer(&reqs[2]),
        router.infer(&reqs[3]),
    );
    for (text, result) in texts.iter().zip([a, b, c, d]) {
        let reply = result.unwrap_or_else(|e| panic!("call {text:?} failed: {e}"));
        assert!(!reply.text.is_empty(), "call {text:?} answered empty");
    }
}

/// Expands to one `#[tokio::test]` per case of the behavioural suite, each
/// building its subject with `$subject().await`, an `async fn() ->`
/// [`Subject`]. The caller needs `tokio` (with `macros` and `rt`) as a
/// dev-dependency; invoke it once per module.
#[macro_export]
macro_rules! node_router_tests {
    ($subject:path) => {
        $crate::node_router_tests!(@case $subject,
            router_nodes_are_consistent => case_nodes_are_consistent,
            router_every_node_answers => case_every_node_answers,
            router_unknown_node_is_rejected => case_unknown_node_is_rejected,
            router_every_node_answers_probes => case_every_node_answers_probes,
            router_concurrent_calls_answer => case_concurrent_calls_answer,
        );
    };
    (@case $subject:path, $($test:ident => $case:ident,)+) => {
        $(
            #[::tokio::test]
            async fn $test() {
                let subject = $subject().await;
                $crate::testing::$case(subject.router()).await;
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn subject() -> Subject {
        Subject::new(Arc::new(FakeRouter::default()))
    }

    crate::node_router_tests!(subject);

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[tokio::test]
    async fn answers_from_script_then_closure_then_echo() {
        let router = FakeRouter::new(["A"]);
        let a = node("A");
        router
            .push(Scripted::Reply("first".into()))
            .push(Scripted::Unreachable)
            .push(Scripted::InvalidReply)
            .push(Scripted::Timeout)
            .push(Scripted::Result(Err(RouterError::Status {
                node: a.clone(),
                status: 429,
            })));
        let kinds = [
            router.infer(&request(&a, "1")).await.map(|r| r.text),
            router.infer(&request(&a, "2")).await.map(|r| r.text),
            router.infer(&request(&a, "3")).await.map(|r| r.text),
            router.infer(&request(&a, "4")).await.map(|r| r.text),
            router.infer(&request(&a, "5")).await.map(|r| r.text),
        ]
        .map(|r| r.unwrap_or_else(|e| e.kind().to_owned()));
        assert_eq!(
            kinds,
            ["first", "unreachable", "invalid_reply", "timeout", "status"]
        );
        assert_eq!(
            router.infer(&request(&a, "6")).await.unwrap().text,
            "[A] echo: 6"
        );
        router.respond_with(|req| {
            Ok(InferReply {
                text: format!("closure for {}", req.chat_id),
            })
        });
        assert_eq!(
            router.infer(&request(&a, "7")).await.unwrap().text,
            "closure for test-chat"
        );
        assert_eq!(router.call_count(), 7);
    }

    #[tokio::test]
    async fn records_every_request_including_unknown_nodes() {
        let router = FakeRouter::default().with_default("NODA2");
        assert_eq!(router.default_node(), &node("NODA2"));
        router.push(Scripted::Reply("kept for NODA1".into()));
        let unknown = request(&node("NODA9"), "x");
        let err = router.infer(&unknown).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }));
        let known = request(&node("NODA1"), "y");
        assert_eq!(router.infer(&known).await.unwrap().text, "kept for NODA1");
        assert_eq!(router.calls(), [unknown, known.clone()]);
        assert_eq!(router.last_call(), Some(known));
        router.clear_calls();
        assert_eq!(router.call_count(), 0);
    }

    #[tokio::test]
    async fn held_calls_wait_for_release() {
        let router = Arc::new(FakeRouter::new(["A"]));
        router.hold();
        let task = tokio::spawn({
            let router = Arc::clone(&router);
            async move { router.infer(&request(&node("A"), "held")).await }
        });
        router.wait_for_calls(1).await;
        assert!(!task.is_finished());
        router.release();
        assert_eq!(task.await.unwrap().unwrap().text, "[A] echo: held");
    }

    #[tokio::test]
    async fn probes_can_fail() {
        let router = FakeRouter::default();
        let noda2 = node("NODA2");
        router.fail_probe(&noda2);
        assert!(router.probe(&node("NODA1")).await.is_ok());
        let err = router.probe(&noda2).await.unwrap_err();
        assert_eq!(err.kind(), "unreachable");
    }

    #[test]
    #[should_panic(expected = "duplicate node")]
    fn rejects_duplicate_nodes() {
        let _ = FakeRouter::new(["A", "A"]);
    }
}
