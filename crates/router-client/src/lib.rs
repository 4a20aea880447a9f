//! Routing sends to inference nodes.
//!
//! The console hands every send to a [`NodeRouter`]: it knows the configured
//! nodes and the default one, and performs the infer call. Implementations:
//!
//! - [`HttpRouter`]: speaks the node protocol over HTTP to the nodes of a
//!   [`NodesConfig`] (`SOFIIA_NODES`), with pooled connections and a per-call
//!   timeout;
//! - [`EchoRouter`]: the built-in local echo node used when no nodes are
//!   configured, answering in-process;
//! - [`Instrumented`]: wraps any router and records the `sofiia_infer_total`
//!   and `sofiia_infer_duration_seconds` metrics;
//! - `testing::FakeRouter` (feature `testing`): a scriptable double for unit
//!   tests, next to the behavioural suite every router passes
//!   (`node_router_tests!`).
//!
//! # The node protocol
//!
//! `POST {node_base}/v1/infer` with headers `Content-Type: application/json`,
//! `X-Request-Id` and `Idempotency-Key` (stable per send) and the body
//! `{"chat_id","message_id","operator_id","node","text"}`. A node answers
//! `200 {"text": "..."}`; other fields are allowed and ignored. The wire types
//! live in [`protocol`], shared with the `sofiia-router-stub` node.
//!
//! # Streaming
//!
//! [`NodeRouter::infer_observed`] runs the same call and reports to an
//! [`InferObserver`] as it goes. An observer that
//! [wants the stream](InferObserver::wants_stream) receives the reply in
//! pieces ([`InferObserver::delta`]) whose concatenation is the reply's text:
//! [`HttpRouter`] then asks the node for `text/event-stream` and reads its
//! `delta` events as they arrive (a node that answers JSON instead gives one
//! piece, the whole reply). Every observer hears of each replica tried
//! ([`InferObserver::attempt`]).
//!
//! | what happened | [`RouterError`] | console answer |
//! | --- | --- | --- |
//! | node not configured (no I/O at all) | [`UnknownNode`](RouterError::UnknownNode) | 400 |
//! | node answered non-2xx | [`Status`](RouterError::Status) | 502 |
//! | node could not be reached | [`Unreachable`](RouterError::Unreachable) | 502 |
//! | 2xx whose body is not `{"text": string}` or over 1 MiB | [`InvalidReply`](RouterError::InvalidReply) | 502 |
//! | no complete answer within the per-call timeout, or a first byte or the next chunk later than its deadline | [`Timeout`](RouterError::Timeout) | 504 |
//! | a streamed answer broke off (connection lost, an `error` event, no `done`) | [`Interrupted`](RouterError::Interrupted) | 502 |
//! | key or request id not a header value (nothing sent) | [`InvalidRequest`](RouterError::InvalidRequest) | 500, a console bug |
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use sofiia_router_client::{DynNodeRouter, HttpRouter, Instrumented, NodeRouter, NodesConfig};
//!
//! # fn main() -> Result<(), sofiia_router_client::ConfigError> {
//! let nodes = NodesConfig::parse("NODA1=http://10.0.0.1:9000,NODA2=http://10.0.0.2:9000/")?
//!     .with_default_name("NODA2")?;
//! assert_eq!(nodes.default_node().as_str(), "NODA2");
//! assert_eq!(nodes.base_url(&nodes.nodes()[1]), Some("http://10.0.0.2:9000"));
//!
//! let router: Arc<DynNodeRouter> = Arc::new(Instrumented::new(HttpRouter::new(
//!     nodes,
//!     Duration::from_secs(30),
//! )?));
//! assert_eq!(router.nodes().len(), 2);
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId, OperatorText};

mod config;
mod echo;
mod http;
mod instrumented;
pub mod protocol;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::config::{ConfigError, NodesConfig, UrlProblem};
pub use crate::echo::EchoRouter;
pub use crate::http::{DEFAULT_COOLDOWN, DEFAULT_IDLE_TIMEOUT, HttpRouter};
pub use crate::instrumented::{INFER_DURATION_SECONDS, INFER_TOTAL, Instrumented};

/// One infer call: what the console asks a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferRequest {
    /// The node to ask.
    pub node: NodeId,
    /// The chat the send belongs to.
    pub chat_id: ChatId,
    /// The id of the operator's message.
    pub message_id: MessageId,
    /// The operator who sent it.
    pub operator_id: OperatorId,
    /// The operator's text.
    pub text: OperatorText,
    /// Stable for every attempt of one send, so a node can deduplicate too.
    pub idempotency_key: String,
    /// The console's request id, for correlating logs across services.
    pub request_id: String,
}

/// A node's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct InferReply {
    /// The agent's reply text.
    pub text: String,
}

impl Debug for InferReply {
    // Reply text is message text: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferReply")
            .field("text_chars", &self.text.chars().count())
            .finish()
    }
}

/// One replica tried by an infer call, as [`InferObserver::attempt`] hears
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAttempt {
    /// The replica's position in its node's list, from 0.
    pub replica: usize,
    /// `ok`, or the [`RouterError::kind`] of its failure.
    pub outcome: &'static str,
}

/// What an infer call reports while it runs; every method has a default
/// that does nothing, and `()` is the observer that wants nothing.
///
/// Methods are called on the task running the call, in order, and must not
/// block: an observer hands what it gets on (a channel, a buffer) and
/// returns.
pub trait InferObserver: Send + Sync {
    /// Whether the caller wants the reply as it is written. `false` (the
    /// default): no [`delta`](Self::delta) is reported and the node is asked
    /// for a JSON answer.
    fn wants_stream(&self) -> bool {
        false
    }

    /// The next piece of the reply, never empty. Only called when
    /// [`wants_stream`](Self::wants_stream); the pieces of a call that
    /// succeeds, joined, are its reply text. A call may fail after some
    /// pieces (then [`RouterError::Interrupted`] or
    /// [`RouterError::Timeout`]).
    fn delta(&self, _text: &str) {}

    /// A replica was tried: reported for nodes with more than one replica,
    /// once per replica tried, in order.
    fn attempt(&self, _attempt: ReplicaAttempt) {}
}

impl InferObserver for () {}

/// Why an infer call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The node is not configured.
    #[error("node {node} is not configured")]
    UnknownNode {
        /// The requested node.
        node: NodeId,
    },
    /// The node answered with a non-success HTTP status.
    #[error("node {node} answered HTTP {status}")]
    Status {
        /// The node.
        node: NodeId,
        /// The HTTP status it answered.
        status: u16,
    },
    /// The node could not be reached (connection refused, reset, DNS, ...).
    #[error("node {node} could not be reached")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// The transport error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The node did not answer within the per-call timeout.
    #[error("node {node} did not answer within {}ms", after.as_millis())]
    Timeout {
        /// The node.
        node: NodeId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The node answered 2xx with a body that is not the protocol's.
    #[error("node {node} answered with an invalid body")]
    InvalidReply {
        /// The node.
        node: NodeId,
        /// What was wrong with the body.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The node's streamed answer broke off after it began: the connection
    /// was lost, the node sent an `error` event, or the stream ended without
    /// its `done` event.
    #[error("node {node}'s streamed reply broke off")]
    Interrupted {
        /// The node.
        node: NodeId,
        /// What happened.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The request cannot be put on the wire, so nothing was sent: an
    /// idempotency key or request id that is not a valid HTTP header value.
    /// The console validates both first, so this is a caller bug.
    #[error("the request for node {node} cannot be sent")]
    InvalidRequest {
        /// The node.
        node: NodeId,
        /// What was wrong with the request.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl RouterError {
    /// A short, stable label for metrics and logs: `unknown_node`, `status`,
    /// `unreachable`, `timeout`, `invalid_reply`, `interrupted` or
    /// `invalid_request`.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::UnknownNode { .. } => "unknown_node",
            RouterError::Status { .. } => "status",
            RouterError::Unreachable { .. } => "unreachable",
            RouterError::Timeout { .. } => "timeout",
            RouterError::InvalidReply { .. } => "invalid_reply",
            RouterError::Interrupted { .. } => "interrupted",
            RouterError::InvalidRequest { .. } => "invalid_request",
        }
    }

    /// The node the failed call was for.
    pub fn node(&self) -> &NodeId {
        match self {
            RouterError::UnknownNode { node }
            | RouterError::Status { node, .. }
            | RouterError::Unreachable { node, .. }
            | RouterError::Timeout { node, .. }
            | RouterError::InvalidReply { node, .. }
            | RouterError::Interrupted { node, .. }
            | RouterError::InvalidRequest { node, .. } => node,
        }
    }
}

/// One replica of a node, as [`NodeRouter::replicas`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Its position in the node's list, from 0 (labels use this, never the
    /// URL).
    pub index: usize,
    /// How much longer it rests after failing; `None` while sends use it.
    pub resting_for: Option<Duration>,
}

/// Sends infer calls to the configured nodes.
#[async_trait]
pub trait NodeRouter: Debug + Send + Sync + 'static {
    /// The configured nodes, in configuration order.
    fn nodes(&self) -> &[NodeId];

    /// The node for chats that name none.
    fn default_node(&self) -> &NodeId;

    /// Whether `node` is configured.
    fn knows(&self, node: &NodeId) -> bool {
        self.nodes().contains(node)
    }

    /// Asks `req.node` for a reply.
    ///
    /// # Errors
    ///
    /// A [`RouterError`] saying why no reply came.
    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError>;

    /// [`infer`](Self::infer), reporting to `observer` as it goes (see
    /// [`InferObserver`]). The default runs `infer` and, when the observer
    /// wants the stream, reports the whole reply as one piece: right for a
    /// router whose replies come whole.
    ///
    /// # Errors
    ///
    /// As [`infer`](Self::infer).
    async fn infer_observed(
        &self,
        req: &InferRequest,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, RouterError> {
        let reply = self.infer(req).await?;
        if observer.wants_stream() && !reply.text.is_empty() {
            observer.delta(&reply.text);
        }
        Ok(reply)
    }

    /// The state of each of `node`'s replicas, in configuration order; empty
    /// for a router (or node) without replicas to report.
    fn replicas(&self, _node: &NodeId) -> Vec<ReplicaStatus> {
        Vec::new()
    }

    /// Checks that `node` answers HTTP at all (any status counts; for a
    /// node with replicas, any replica), for readiness probes and preflight
    /// checks. No infer call is made.
    ///
    /// # Errors
    ///
    /// [`RouterError::UnknownNode`], [`RouterError::Unreachable`] or
    /// [`RouterError::Timeout`].
    async fn probe(&self, node: &NodeId) -> Result<(), RouterError>;
}

/// A router as a trait object; the console holds an `Arc<DynNodeRouter>`.
pub type DynNodeRouter = dyn NodeRouter;

// Lets the console wrap the router it already shares, e.g.
// `Instrumented<Arc<DynNodeRouter>>`, and hand `Arc`s to generic code.
#[async_trait]
impl<R: NodeRouter + ?Sized> NodeRouter for Arc<R> {
    fn nodes(&self) -> &[NodeId] {
        (**self).nodes()
    }

    fn default_node(&self) -> &NodeId {
        (**self).default_node()
    }

    fn knows(&self, node: &NodeId) -> bool {
        (**self).knows(node)
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        (**self).infer(req).await
    }

    async fn infer_observed(
        &self,
        req: &InferRequest,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, RouterError> {
        (**self).infer_observed(req, observer).await
    }

    fn replicas(&self, node: &NodeId) -> Vec<ReplicaStatus> {
        (**self).replicas(node)
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        (**self).probe(node).await
    }
}
