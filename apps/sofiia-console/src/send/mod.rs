//! The send workflow: one operator message to a node and its reply into the
//! chat, at most once per idempotency key, within the quotas, on the record.
//!
//! A send runs as a task of its own, tracked so that a graceful shutdown
//! waits for it: a client that goes away cancels nothing. Its steps
//! (`docs/architecture.md` draws them):
//!
//! 1. **Reserve** the key (scoped by operator, fingerprinted by route, chat
//!    and body), first among this process's own sends, then in the
//!    idempotency store. A completed key replays its answer, a running one
//!    is 409, one whose result is being stored is 503, one used for another
//!    request is 422, an unreachable store is 503. None of these spends
//!    quota or reaches a node. A key whose node answered but whose holder
//!    stopped before storing the result is *resumed*: steps 5 and 6 run
//!    from the kept reply.
//! 2. **Validate**: choose the node (the send's, else the chat's, else the
//!    default); an unknown node is 400. A chat's node never changes, so
//!    the chats this process has seen are remembered and not read again.
//!    The stores the send writes after the node answers and that live on
//!    another server (a PostgreSQL or Redis chat index, a PostgreSQL audit
//!    trail) are asked whether they answer, at the same time: one that does
//!    not is 503, and nothing reaches a node.
//! 3. **Charge** the chat's and the operator's quotas, all or nothing: 429,
//!    or 503 when the limiter is unreachable (unless it fails open).
//! 4. **Infer** on the node, with a node-side key derived from the operator
//!    and the client's key: 502 or 504 when it fails.
//!
//!    Any failure of steps 2 to 4 releases the key (nothing was stored, so a
//!    retry runs again). From here on the key is never released.
//! 5. **Store**: keep the reply with the key (the *pending result*), then
//!    store the exchange in the chat index and its `chat.send` event in the
//!    audit trail, both at once. Every attempt has a deadline; failed
//!    attempts are retried with a growing delay until they succeed. The
//!    caller gets 503 after the first attempts fail, and every retry of the
//!    key gets 503 until the exchange is stored, then the original answer.
//! 6. **Complete** the key with the answer.
//!
//! Every outcome's audit event is made by one function, `audit_event`, and written
//! either in step 5 (the send's own event, before the key completes) or
//! once the outcome is known.
//!
//! # Streaming and attaching
//!
//! Every send this process runs has a live reply: the pieces of the
//! node's answer as they come (when the request asked for a stream), then
//! the send's answer. A streamed request reads it from the start. A retry
//! with the same key and request while the send runs here *attaches*: a
//! streamed retry reads the same reply from its first piece; a JSON retry
//! waits for the answer, at most [`SendParts::attach_wait`], else 409. A
//! node that fails after it began its reply has been reached: the key is not
//! released but completed with that failure, which every retry of the key
//! replays.

mod active;
mod chats;
mod live;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slog::{Logger, o, warn};
use sofiia_audit_store::Outcome;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_core_domain::{
    ChatId, DynClock, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, OperatorText,
    Role, error_chain,
};
use sofiia_idempotency::{
    Begin, Fingerprint, Guard, Held, IdempotencyKey, PendingGuard, ScopedKey, StoredResponse,
};
use sofiia_ratelimit::{Charge, Decision, DynRateLimiter, Quota};
use sofiia_router_client::{DynNodeRouter, InferRequest, ReplicaAttempt, RouterError};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use self::active::{ActiveSends, Busy, Phase};
use self::chats::KnownChats;
use self::live::{Attempts, Live, Observer};
pub use self::live::{ReplyStream, Update};
use crate::auditor::{AuditUnavailable, Auditor, Event};
use crate::request::RequestMeta;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The route whose sends this module runs; part of every fingerprint.
pub const SEND_ROUTE: &str = "/api/chats/{chat_id}/send";

/// One validated send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The chat; created by this send if it does not exist.
    pub chat_id: ChatId,
    /// Who sends.
    pub operator: OperatorId,
    /// What they send.
    pub text: OperatorText,
    /// The node the operator chose, if any.
    pub node: Option<NodeId>,
    /// The client's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The request's id, peer and user agent.
    pub meta: RequestMeta,
    /// When the request arrived.
    pub started: Instant,
    /// Whether the client wants the reply as it is written.
    pub stream: bool,
}

impl SendRequest {
    fn key(&self) -> ScopedKey {
        ScopedKey::new(self.operator.as_str(), self.idempotency_key.clone())
    }

    /// The canonical request a key is bound to: re-serialised from the
    /// parsed body, so whitespace or key order in the client's JSON does
    /// not matter.
    fn fingerprint(&self) -> Fingerprint {
        #[derive(Serialize)]
        struct Canonical<'a> {
            node: Option<&'a str>,
            text: &'a str,
        }
        let body = serde_json::to_vec(&Canonical {
            node: self.node.as_ref().map(NodeId::as_str),
            text: self.text.as_str(),
        })
        .unwrap_or_default();
        Fingerprint::builder()
            .part(b"POST")
            .part(SEND_ROUTE.as_bytes())
            .part(self.chat_id.as_str().as_bytes())
            .part(&body)
            .finish()
    }
}

/// The answer to a successful send, as the API returns it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SendReceipt {
    /// The chat.
    pub chat_id: ChatId,
    /// The node that answered.
    pub node: NodeId,
    /// The operator's message as stored.
    pub message: Message,
    /// The agent's reply as stored.
    pub reply: Message,
}

/// A send's answer, whole.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer, exactly as stored for replays.
    pub response: StoredResponse,
    /// The quota decision, for the `RateLimit` fields; `None` when no quota
    /// was charged for this request (a replay), or the limiter was
    /// unreachable and fails open.
    pub quotas: Option<Decision>,
    /// Whether it is the answer of an earlier request with the key
    /// (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// How a send ended, as every request waiting for it sees it.
pub type Finished = Result<Answer, Arc<SendError>>;

/// What to answer.
#[derive(Debug)]
pub enum SendAnswer {
    /// The answer, whole.
    Done(Answer),
    /// The reply as it is written, then the answer (a request that asked
    /// for a stream).
    Streaming {
        /// The reply.
        stream: ReplyStream,
        /// Whether it is the reply of an earlier request with the key.
        replayed: bool,
    },
}

/// Which store a send could not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The idempotency keys.
    Idempotency,
    /// The rate limiter.
    RateLimiter,
    /// The chat index.
    ChatIndex,
    /// The audit trail.
    AuditTrail,
}

impl Store {
    /// How the store is named to clients.
    pub fn name(self) -> &'static str {
        match self {
            Store::Idempotency => "idempotency store",
            Store::RateLimiter => "rate limiter",
            Store::ChatIndex => "chat index",
            Store::AuditTrail => "audit trail",
        }
    }
}

/// Why a send was not answered 200. `problem.rs` turns each into a problem
/// document; [`SendError::status`] is the HTTP status it carries.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A send with this key is running (409).
    #[error("a send with this key is still running")]
    InFlight {
        /// When to ask again.
        retry_after: Duration,
    },
    /// The send's node answered, but its exchange is not stored yet; the key
    /// keeps the reply (503).
    #[error("the send ran; its exchange is not stored yet")]
    NotStoredYet {
        /// When to ask again.
        retry_after: Duration,
        /// Why the last attempt failed, if one did.
        #[source]
        source: Option<BoxError>,
    },
    /// The key was used for a different request (422).
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    /// The node is not configured (400).
    #[error("node {node} is not configured")]
    UnknownNode {
        /// The node named.
        node: NodeId,
    },
    /// A quota is spent (429).
    #[error("a quota is spent")]
    RateLimited {
        /// The refusing decision.
        decision: Decision,
    },
    /// A store was unreachable before the node was called; nothing was sent
    /// (503).
    #[error("the {} is unavailable; nothing was sent", store.name())]
    Unavailable {
        /// Which.
        store: Store,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The node failed or timed out (502, 504).
    #[error(transparent)]
    Node(RouterError),
    /// The outcome could not be audited, so it is refused (503).
    #[error(transparent)]
    Audit(#[from] AuditUnavailable),
    /// The console failed (500).
    #[error("{0}")]
    Internal(&'static str),
}

impl SendError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            SendError::InFlight { .. } => 409,
            SendError::KeyReused => 422,
            SendError::UnknownNode { .. } => 400,
            SendError::RateLimited { .. } => 429,
            SendError::NotStoredYet { .. }
            | SendError::Unavailable { .. }
            | SendError::Audit(_) => 503,
            SendError::Node(RouterError::Timeout { .. }) => 504,
            SendError::Node(RouterError::UnknownNode { .. }) => 400,
            SendError::Node(_) => 502,
            SendError::Internal(_) => 500,
        }
    }
}

/// What a send does when the rate limiter's backend is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitFailMode {
    /// Refuse the send with 503 (the default): limits are never bypassed.
    Closed,
    /// Let the send through unlimited, with a warning in the log.
    Open,
}

/// The send quotas and what to do when the limiter is unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Per chat.
    pub chat: Quota,
    /// Per operator.
    pub operator: Quota,
    /// Closed (503) or open (unlimited) when the limiter is unreachable.
    pub fail_mode: RateLimitFailMode,
}

/// What the workflow runs on.
#[derive(Debug, Clone)]
pub struct SendParts {
    /// Idempotency keys.
    pub idempotency: sofiia_idempotency::Idempotency,
    /// Send quotas.
    pub rate_limiter: Arc<DynRateLimiter>,
    /// The quotas it enforces.
    pub quotas: Quotas,
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// The audit trail.
    pub auditor: Auditor,
    /// Where "now" comes from.
    pub clock: Arc<DynClock>,
    /// The JSON logger.
    pub logger: Logger,
    /// The deadline of each store call, and of each storing attempt.
    pub store_timeout: Duration,
    /// Which stores written after the node answers live on another server,
    /// and are checked before the node is called.
    pub check_before_node: RemoteStores,
    /// Whether a send's audit event may be answered once committed rather
    /// than on disk, because the completed key, written after it, takes it
    /// to disk (see `Stores::one_sqlite_file`).
    pub events_made_durable_by_key: bool,
    /// How long a JSON retry of a send running here waits for its answer
    /// before it is answered 409; zero answers 409 at once.
    pub attach_wait: Duration,
    /// The answer kept with a key whose node failed after it began its
    /// reply, from the failure and the request id (problem+json, rendered
    /// where every problem is).
    pub failure_answer: fn(&SendError, Option<&str>) -> StoredResponse,
}

/// The stores a send writes after its node answered that live on another
/// server (see [`SendParts::check_before_node`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStores {
    /// The chat index.
    pub chat_index: bool,
    /// The audit trail.
    pub audit: bool,
}

/// Delays between storing attempts after the node answered; the last one
/// repeats until the exchange is stored.
const STORE_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// After this many failed storing attempts the caller is answered 503 (the
/// workflow goes on storing).
const ATTEMPTS_BEFORE_ANSWER: usize = 3;

/// `Retry-After` while a result is being stored.
const STORING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs sends.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parts: SendParts,
    active: Arc<ActiveSends>,
    chats: KnownChats,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
}

impl Sender {
    /// The longest a send takes to be answered when every store and the
    /// node take as long as they may: three store calls before the node
    /// (reserve, the chat's node, the quotas), the node's `infer_timeout`,
    /// and three storing attempts with the delays
    /// between them. A graceful shutdown must allow at least this much.
    pub fn answer_budget(infer_timeout: Duration, store_timeout: Duration) -> Duration {
        let attempts = u32::try_from(ATTEMPTS_BEFORE_ANSWER).unwrap_or(u32::MAX);
        let delays: Duration = STORE_RETRY_DELAYS
            .iter()
            .take(ATTEMPTS_BEFORE_ANSWER - 1)
            .sum();
        infer_timeout + store_timeout * (3 + attempts) + delays
    }

    /// A sender over `parts`, running its sends on the current tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(parts: SendParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts,
                active: Arc::new(ActiveSends::default()),
                chats: KnownChats::default(),
                tasks: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Runs `req` as a task of its own and returns its first answer: for
    /// a request that asked for a stream, the reply as it comes (the send's
    /// answer ends it). The task goes on if the caller stops waiting, and
    /// may go on after the answer (storing a result that was answered 503).
    ///
    /// # Errors
    ///
    /// [`SendError`]: what to answer instead of 200.
    pub async fn send(&self, req: SendRequest) -> Result<SendAnswer, Arc<SendError>> {
        let (reply, answer) = oneshot::channel();
        let this = self.clone();
        self.inner.tasks.spawn_on(
            async move {
                this.run(
                    req,
                    Reply {
                        answer: Some(reply),
                        live: None,
                    },
                )
                .await;
            },
            &self.inner.runtime,
        );
        answer.await.unwrap_or_else(|_| {
            Err(Arc::new(SendError::Internal(
                "the send task ended without an answer",
            )))
        })
    }

    /// Stops taking sends and waits until every send in flight has finished
    /// (stored, or given up), or `deadline` passes. Returns how many were
    /// still running at the deadline.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        self.inner.tasks.close();
        match tokio::time::timeout_at(deadline, self.inner.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.inner.tasks.len(),
        }
    }

    /// How many sends are running.
    pub fn running(&self) -> usize {
        self.inner.tasks.len()
    }

    fn parts(&self) -> &SendParts {
        &self.inner.parts
    }

    async fn run(&self, req: SendRequest, mut reply: Reply) {
        let attempts = Attempts::default();
        let outcome = self.execute(&req, &mut reply, &attempts).await;
        let outcome = self.finish(&req, outcome, &attempts.taken()).await;
        reply.send(outcome);
    }

    async fn execute(
        &self,
        req: &SendRequest,
        reply: &mut Reply,
        attempts: &Attempts,
    ) -> Result<Done, SendError> {
        let key = req.key();
        let fingerprint = req.fingerprint();
        let active = match self.inner.active.enter(&key, &fingerprint) {
            Ok(active) => active,
            Err(busy) => return self.join(req, busy).await,
        };
        reply.follow(active.live(), req.stream);

        // 1. Reserve.
        let guard = match self.reserve(&key, &fingerprint).await? {
            Reserved::Run(guard) => guard,
            Reserved::Replay(stored) => return Ok(Done::Replayed(stored)),
            Reserved::Resume(pending) => {
                active.storing();
                let work = PendingSend::decode(pending.pending())?;
                let response = self.store(pending, &work, true, reply).await?;
                return Ok(Done::Resumed(response));
            }
        };

        // 2 to 4. Until the node answers, a failure releases the key, unless
        // the node began its reply.
        let observer = Observer {
            live: active.live(),
            stream: req.stream,
            attempts,
        };
        let answered = match self.until_answered(req, &observer).await {
            Ok(answered) => answered,
            Err(e) => {
                self.settle(guard, &e, active.live(), req).await;
                return Err(e);
            }
        };

        // 5 and 6. The node answered: the key now only ever completes.
        active.storing();
        let work = PendingSend {
            version: PendingSend::VERSION,
            message: answered.message,
            reply: answered.reply,
            chat_created: answered.chat_created,
            meta: req.meta.clone(),
            attempts: attempts.taken().iter().map(Tried::from).collect(),
        };
        let pending = guard.answered(work.encode());
        let response = self.store(pending, &work, false, reply).await?;
        Ok(Done::Sent {
            response,
            quotas: answered.quotas,
        })
    }

    /// Step 1, in this process, when it runs the key already: attach to
    /// that send (a streamed request reads its reply; a JSON one waits for
    /// its answer, bounded), unless the key is for another request.
    async fn join(&self, req: &SendRequest, busy: Busy) -> Result<Done, SendError> {
        let (phase, live) = match busy {
            Busy::Other => {
                count_idempotency("mismatch");
                return Err(SendError::KeyReused);
            }
            Busy::Same(phase, live) => (phase, live),
        };
        if req.stream {
            count_idempotency("replay");
            return Ok(Done::Attached(live.subscribe()));
        }
        match live.subscribe().finished(self.parts().attach_wait).await {
            Some(finished) => {
                count_idempotency("replay");
                Ok(Done::Joined(finished))
            }
            None => {
                count_idempotency("conflict");
                Err(match phase {
                    Phase::Running => SendError::InFlight {
                        retry_after: STORING_RETRY_AFTER,
                    },
                    Phase::Storing => SendError::NotStoredYet {
                        retry_after: STORING_RETRY_AFTER,
                        source: None,
                    },
                })
            }
        }
    }

    /// After steps 2 to 4 failed: a node that began its reply was reached,
    /// so the key keeps the failure as its answer (no retry reaches the
    /// node again with it); otherwise the key is released.
    async fn settle(&self, guard: Guard, error: &SendError, live: &Live, req: &SendRequest) {
        if !(live.has_pieces() && matches!(error, SendError::Node(_))) {
            guard.release().await;
            return;
        }
        let answer = (self.parts().failure_answer)(error, req.meta.request_id.as_deref());
        if let Err(e) = self
            .within(Store::Idempotency, guard.complete(&answer))
            .await
        {
            warn!(
                self.parts().logger, "the node failed mid-reply and the key could not keep the failure; it frees when its lease ends";
                "flow" => "send",
                "request_id" => req.meta.request_id.clone(),
                "error" => error_chain(&e),
            );
        }
    }

    /// Step 1, in the idempotency store.
    async fn reserve(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
    ) -> Result<Reserved, SendError> {
        let begin = self
            .within(
                Store::Idempotency,
                self.parts().idempotency.begin(key, fingerprint),
            )
            .await;
        let begin = match begin {
            Ok(begin) => begin,
            Err(e) => {
                count_idempotency("error");
                return Err(e);
            }
        };
        match begin {
            Begin::Execute(guard) => {
                count_idempotency("new");
                Ok(Reserved::Run(guard))
            }
            Begin::Resume(pending) => {
                count_idempotency("replay");
                Ok(Reserved::Resume(pending))
            }
            Begin::Replay(stored) => {
                count_idempotency("replay");
                Ok(Reserved::Replay(stored))
            }
            Begin::InFlight { retry_after } => {
                count_idempotency("conflict");
                Err(SendError::InFlight { retry_after })
            }
            Begin::Pending { retry_after } => {
                count_idempotency("conflict");
                Err(SendError::NotStoredYet {
                    retry_after,
                    source: None,
                })
            }
            Begin::Mismatch => {
                count_idempotency("mismatch");
                Err(SendError::KeyReused)
            }
        }
    }

    /// Steps 2 to 4.
    async fn until_answered(
        &self,
        req: &SendRequest,
        observer: &Observer<'_>,
    ) -> Result<Answered, SendError> {
        let (node, chat_created) = self.validate(req).await?;
        let quotas = self.charge(req).await?;
        if let Some(quotas) = &quotas {
            observer.live.charged(quotas);
        }
        let (message, reply) = self.infer(req, node, observer).await?;
        Ok(Answered {
            message,
            reply,
            chat_created,
            quotas,
        })
    }

    /// Step 2: the node the send goes to, and whether the send creates its
    /// chat.
    async fn validate(&self, req: &SendRequest) -> Result<(NodeId, bool), SendError> {
        let parts = self.parts();
        let (chat_node, ()) =
            futures_util::try_join!(self.chat_node(req), self.check_remote_stores())?;
        let chat_created = chat_node.is_none();
        let node = req
            .node
            .clone()
            .or(chat_node)
            .unwrap_or_else(|| parts.router.default_node().clone());
        if !parts.router.knows(&node) {
            return Err(SendError::UnknownNode { node });
        }
        Ok((node, chat_created))
    }

    /// Step 2: the chat's node, if the chat exists.
    async fn chat_node(&self, req: &SendRequest) -> Result<Option<NodeId>, SendError> {
        if let Some(node) = self.inner.chats.node(&req.chat_id) {
            return Ok(Some(node));
        }
        let chat = self
            .within(
                Store::ChatIndex,
                self.parts().chat_index.get_chat(&req.chat_id),
            )
            .await?;
        if let Some(chat) = &chat {
            self.inner.chats.remember(&chat.id, &chat.node);
        }
        Ok(chat.map(|c| c.node))
    }

    /// Step 2: the stores on other servers that the send writes after the
    /// node answers still answer, so that an outage is a 503 before the
    /// node, not a reply kept until the store is back.
    async fn check_remote_stores(&self) -> Result<(), SendError> {
        let parts = self.parts();
        let remote = parts.check_before_node;
        let chat_index = async {
            if remote.chat_index {
                self.within(Store::ChatIndex, parts.chat_index.check())
                    .await?;
            }
            Ok(())
        };
        let audit = async {
            if remote.audit {
                self.within(Store::AuditTrail, parts.auditor.store().check())
                    .await?;
            }
            Ok(())
        };
        futures_util::try_join!(chat_index, audit).map(drop)
    }

    /// Step 3: `Some(decision)` when charged, `None` when the limiter is
    /// unreachable and fails open.
    async fn charge(&self, req: &SendRequest) -> Result<Option<Decision>, SendError> {
        let parts = self.parts();
        let charges = [
            Charge::new("chat", req.chat_id.as_str(), parts.quotas.chat),
            Charge::new("operator", req.operator.as_str(), parts.quotas.operator),
        ];
        match self
            .within(Store::RateLimiter, parts.rate_limiter.check(&charges))
            .await
        {
            Ok(decision) => {
                count_decision(&decision);
                if decision.allowed {
                    Ok(Some(decision))
                } else {
                    Err(SendError::RateLimited { decision })
                }
            }
            Err(e) if parts.quotas.fail_mode == RateLimitFailMode::Open => {
                warn!(
                    parts.logger, "rate limiter unavailable; letting the send through (fail mode open)";
                    "flow" => "ratelimit",
                    "request_id" => req.meta.request_id.clone(),
                    "error" => error_chain(&e),
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Step 4: the operator's message and the agent's reply.
    async fn infer(
        &self,
        req: &SendRequest,
        node: NodeId,
        observer: &Observer<'_>,
    ) -> Result<(Message, Message), SendError> {
        let parts = self.parts();
        let message = Message {
            id: MessageId::generate(),
            chat_id: req.chat_id.clone(),
            role: Role::Operator,
            text: req.text.as_str().to_owned(),
            ts: parts.clock.now(),
            operator_id: req.operator.clone(),
            node: node.clone(),
        };
        let request = InferRequest {
            node: node.clone(),
            chat_id: req.chat_id.clone(),
            message_id: message.id,
            operator_id: req.operator.clone(),
            text: req.text.clone(),
            idempotency_key: req.key().upstream_key(),
            request_id: req.meta.request_id.clone().unwrap_or_default(),
        };
        let reply = parts
            .router
            .infer_observed(&request, observer)
            .await
            .map_err(|e| match e {
                RouterError::UnknownNode { node } => SendError::UnknownNode { node },
                other => SendError::Node(other),
            })?;
        let reply = Message {
            id: MessageId::generate(),
            chat_id: req.chat_id.clone(),
            role: Role::Agent,
            text: reply.text,
            ts: parts.clock.now(),
            operator_id: req.operator.clone(),
            node,
        };
        Ok((message, reply))
    }

    /// Steps 5 and 6, retried until done: the answer once stored. The
    /// caller is answered 503 after [`ATTEMPTS_BEFORE_ANSWER`] failed
    /// attempts; this goes on.
    async fn store(
        &self,
        mut pending: PendingGuard,
        work: &PendingSend,
        resumed: bool,
        reply: &mut Reply,
    ) -> Result<StoredResponse, SendError> {
        let response = work.response();
        let mut progress = Progress::default();
        let mut failures = 0;
        loop {
            let attempt = self.store_once(&mut pending, work, resumed, &mut progress, &response);
            let failure = match tokio::time::timeout(self.parts().store_timeout, attempt).await {
                Ok(Ok(Stored::Done)) => return Ok(response),
                Ok(Ok(Stored::CompletedElsewhere(answer))) => return Ok(answer),
                Ok(Ok(Stored::TakenOver)) => {
                    return Err(SendError::NotStoredYet {
                        retry_after: STORING_RETRY_AFTER,
                        source: Some("another instance took the send over".into()),
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "storing took longer than {} ms",
                    self.parts().store_timeout.as_millis()
                )
                .into(),
            };
            warn!(
                self.parts().logger, "the node answered but the send could not be stored yet; retrying";
                "flow" => "send",
                "request_id" => work.meta.request_id.clone(),
                "operator" => work.message.operator_id.to_string(),
                "chat_id" => work.message.chat_id.to_string(),
                "attempt" => failures + 1,
                "error" => error_chain(&*failure),
            );
            failures += 1;
            if failures == ATTEMPTS_BEFORE_ANSWER {
                reply.send(Err(Arc::new(SendError::NotStoredYet {
                    retry_after: STORING_RETRY_AFTER,
                    source: Some(failure),
                })));
            }
            let delay = STORE_RETRY_DELAYS
                .get(failures - 1)
                .or(STORE_RETRY_DELAYS.last())
                .copied()
                .unwrap_or(STORING_RETRY_AFTER);
            tokio::time::sleep(delay).await;
        }
    }

    /// One storing attempt; what is done stays done for the next one.
    async fn store_once(
        &self,
        pending: &mut PendingGuard,
        work: &PendingSend,
        resumed: bool,
        progress: &mut Progress,
        response: &StoredResponse,
    ) -> Result<Stored, BoxError> {
        match pending.hold().await? {
            Held::Held => {}
            Held::Completed(answer) => return Ok(Stored::CompletedElsewhere(answer)),
            Held::TakenOver => return Ok(Stored::TakenOver),
        }
        // The exchange and the send's event do not depend on each other:
        // both are written at once, and the key completes once both are.
        // An attempt that runs out of time is dropped mid-way: what it may
        // have handed to the trail is marked before it starts. (Appending
        // the same exchange again stores nothing new.)
        let tried = progress.audit_tried;
        progress.audit_tried |= !progress.audited;
        let (exchange, audited) = futures_util::join!(
            self.store_exchange(work, progress.exchange),
            self.store_event(work, resumed, tried, progress.audited),
        );
        progress.exchange |= exchange.is_ok();
        progress.audited |= audited.is_ok();
        exchange?;
        audited?;
        match pending.complete(response).await {
            Ok(()) => Ok(Stored::Done),
            Err(sofiia_idempotency::IdempotencyError::LeaseLost) => Ok(Stored::TakenOver),
            Err(e) => Err(e.into()),
        }
    }

    /// The exchange into the chat index, unless an earlier attempt stored it.
    async fn store_exchange(&self, work: &PendingSend, stored: bool) -> Result<(), BoxError> {
        if !stored {
            let chat = self
                .parts()
                .chat_index
                .append_exchange(work.new_chat(), &work.exchange())
                .await?;
            self.inner.chats.remember(&chat.id, &chat.node);
        }
        Ok(())
    }

    /// The send's `chat.send` event into the audit trail, unless it is there.
    async fn store_event(
        &self,
        work: &PendingSend,
        resumed: bool,
        tried: bool,
        audited: bool,
    ) -> Result<(), BoxError> {
        if audited {
            return Ok(());
        }
        let auditor = &self.parts().auditor;
        // The event may be written already: by the holder this send was
        // resumed from, or by an earlier attempt that timed out after
        // handing it to the trail. It is looked up then, not written twice.
        let written = (resumed || tried)
            && auditor
                .has_event(
                    work.message.operator_id.as_str(),
                    "chat.send",
                    work.message.ts,
                    "message_id",
                    &work.message.id.to_string(),
                )
                .await?;
        if !written {
            let event = audit_event(Recorded::Stored { work, resumed });
            if self.parts().events_made_durable_by_key {
                auditor.record_committed(&work.meta, event).await?;
            } else {
                auditor.record(&work.meta, event).await?;
            }
        }
        Ok(())
    }

    /// Audits, logs and counts the outcome; what to answer.
    async fn finish(
        &self,
        req: &SendRequest,
        outcome: Result<Done, SendError>,
        attempts: &[ReplicaAttempt],
    ) -> Result<SendAnswer, Arc<SendError>> {
        let parts = self.parts();
        let replayed = |status, attached| {
            Some(audit_event(Recorded::Replayed {
                req,
                status,
                attached,
            }))
        };
        let event = match &outcome {
            // Recorded while storing, before the key completed.
            Ok(Done::Sent { .. } | Done::Resumed(_)) => None,
            Ok(Done::Replayed(response)) => replayed(response.status, false),
            // Its answer is the running send's, not known yet.
            Ok(Done::Attached(_)) => replayed(200, true),
            Ok(Done::Joined(Ok(answer))) => replayed(answer.response.status, true),
            // The running send's failure, which that send audited.
            Ok(Done::Joined(Err(_))) => None,
            Err(error) => refusal_event(req, error, attempts),
        };
        let outcome = match event {
            Some(event) => match parts.auditor.record(&req.meta, event).await {
                Ok(()) => outcome,
                Err(e) => Err(SendError::Audit(e)),
            },
            None => outcome,
        };
        self.log(req, &outcome);
        let done = |response, quotas, replayed| {
            SendAnswer::Done(Answer {
                response,
                quotas,
                replayed,
            })
        };
        match outcome {
            Ok(Done::Sent { response, quotas }) => Ok(done(response, quotas, false)),
            Ok(Done::Replayed(response) | Done::Resumed(response)) => {
                Ok(done(response, None, true))
            }
            Ok(Done::Attached(stream)) => Ok(SendAnswer::Streaming {
                stream,
                replayed: true,
            }),
            Ok(Done::Joined(finished)) => finished.map(|answer| done(answer.response, None, true)),
            Err(e) => Err(Arc::new(e)),
        }
    }

    fn log(&self, req: &SendRequest, outcome: &Result<Done, SendError>) {
        let logger = self.parts().logger.new(o!(
            "request_id" => req.meta.request_id.clone(),
            "operator" => req.operator.to_string(),
            "chat_id" => req.chat_id.to_string(),
            "latency_ms" => u64::try_from(req.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ));
        match outcome {
            Ok(Done::Sent { response, .. }) => {
                slog::info!(logger, "send"; "flow" => "send", "outcome" => "ok", "status" => response.status);
            }
            Ok(Done::Resumed(response)) => {
                slog::info!(logger, "send"; "flow" => "send", "outcome" => "resumed", "status" => response.status);
            }
            Ok(Done::Replayed(response)) => {
                slog::info!(logger, "replay"; "flow" => "replay", "status" => response.status);
            }
            Ok(Done::Attached(_)) => {
                slog::info!(logger, "replay"; "flow" => "replay", "attached" => true, "stream" => true);
            }
            Ok(Done::Joined(finished)) => {
                let status = finished
                    .as_ref()
                    .map_or_else(|e| e.status(), |a| a.response.status);
                slog::info!(logger, "replay"; "flow" => "replay", "attached" => true, "status" => status);
            }
            Err(e) => {
                if let SendError::RateLimited { decision } = e {
                    slog::info!(
                        logger, "ratelimit";
                        "flow" => "ratelimit",
                        "scope" => refusing_scopes(decision).join(","),
                        "status" => 429,
                        "retry_after_ms" => u64::try_from(decision.retry_after().as_millis()).unwrap_or(u64::MAX),
                    );
                }
                slog::info!(
                    logger, "send";
                    "flow" => "send",
                    "outcome" => "error",
                    "status" => e.status(),
                    "error" => e.to_string(),
                );
            }
        }
    }

    /// `call`, bounded by the store deadline.
    async fn within<T, E>(
        &self,
        store: Store,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, SendError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let deadline = self.parts().store_timeout;
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SendError::Unavailable {
                store,
                source: Box::new(e),
            }),
            Err(_) => Err(SendError::Unavailable {
                store,
                source: format!(
                    "the {} did not answer within {} ms",
                    store.name(),
                    deadline.as_millis()
                )
                .into(),
            }),
        }
    }
}

/// How a send ended well.
#[derive(Debug)]
enum Done {
    /// It ran and is stored.
    Sent {
        response: StoredResponse,
        quotas: Option<Decision>,
    },
    /// An earlier run's answer was replayed.
    Replayed(StoredResponse),
    /// An earlier run's kept reply was stored now.
    Resumed(StoredResponse),
    /// A streamed request attached to the send of its key running here.
    Attached(ReplyStream),
    /// A JSON request waited for the send of its key running here.
    Joined(Finished),
}

/// What step 1 decided.
enum Reserved {
    Run(Guard),
    Replay(StoredResponse),
    Resume(PendingGuard),
}

/// What steps 2 to 4 produced.
struct Answered {
    message: Message,
    reply: Message,
    chat_created: bool,
    quotas: Option<Decision>,
}

/// What one storing attempt found.
enum Stored {
    Done,
    CompletedElsewhere(StoredResponse),
    TakenOver,
}

/// The storing work already done, across attempts.
#[derive(Default)]
struct Progress {
    exchange: bool,
    /// Whether an attempt has handed the event to the trail.
    audit_tried: bool,
    audited: bool,
}

/// The first answer of a send, to its caller and to the requests attached
/// to it; later ones are dropped.
struct Reply {
    answer: Option<oneshot::Sender<Result<SendAnswer, Arc<SendError>>>>,
    /// The send's reply, once it runs.
    live: Option<Arc<Live>>,
}

impl Reply {
    /// The send runs with `live` as its reply; a caller that asked for a
    /// stream gets it now.
    fn follow(&mut self, live: &Arc<Live>, stream: bool) {
        self.live = Some(Arc::clone(live));
        if stream && let Some(answer) = self.answer.take() {
            let _ = answer.send(Ok(SendAnswer::Streaming {
                stream: live.subscribe(),
                replayed: false,
            }));
        }
    }

    fn send(&mut self, outcome: Result<SendAnswer, Arc<SendError>>) {
        if let Some(live) = &self.live {
            match &outcome {
                Ok(SendAnswer::Done(answer)) => live.end(Ok(answer.clone())),
                Err(e) => live.end(Err(Arc::clone(e))),
                Ok(SendAnswer::Streaming { .. }) => {}
            }
        }
        if let Some(answer) = self.answer.take() {
            // A caller that stopped waiting is no error: the send goes on.
            let _ = answer.send(outcome);
        }
    }
}

/// A replica tried by a send's infer call, as kept with the key and
/// recorded in its audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tried {
    replica: usize,
    outcome: String,
}

impl From<&ReplicaAttempt> for Tried {
    fn from(attempt: &ReplicaAttempt) -> Self {
        Tried {
            replica: attempt.replica,
            outcome: attempt.outcome.to_owned(),
        }
    }
}

fn attempts_detail(attempts: &[Tried]) -> serde_json::Value {
    serde_json::to_value(attempts).unwrap_or_default()
}

/// What is kept with the key once the node answered: everything needed to
/// store the exchange and its audit event, by this process or, if it stops
/// first, by whichever process resumes the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingSend {
    version: u8,
    message: Message,
    reply: Message,
    chat_created: bool,
    meta: RequestMeta,
    /// The replicas tried, for a node with several (absent in results kept
    /// by earlier versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    attempts: Vec<Tried>,
}

impl PendingSend {
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, SendError> {
        serde_json::from_slice::<Self>(bytes)
            .ok()
            .filter(|p| p.version == Self::VERSION)
            .ok_or(SendError::Internal("a kept reply could not be read"))
    }

    fn exchange(&self) -> Exchange {
        Exchange {
            operator: self.message.clone(),
            agent: self.reply.clone(),
        }
    }

    fn new_chat(&self) -> NewChat {
        NewChat {
            id: self.message.chat_id.clone(),
            title: None,
            node: self.message.node.clone(),
            created_at: self.message.ts,
        }
    }

    /// The 200 answer, the same bytes whoever stores it.
    fn response(&self) -> StoredResponse {
        let receipt = SendReceipt {
            chat_id: self.message.chat_id.clone(),
            node: self.message.node.clone(),
            message: self.message.clone(),
            reply: self.reply.clone(),
        };
        StoredResponse {
            status: 200,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: serde_json::to_vec(&receipt).unwrap_or_default(),
        }
    }
}

/// What an audit event records.
enum Recorded<'a> {
    /// The send's exchange, stored now (by its own run, or resumed).
    Stored {
        work: &'a PendingSend,
        resumed: bool,
    },
    /// An earlier run's answer, replayed; `attached` when the run was
    /// still going on here.
    Replayed {
        req: &'a SendRequest,
        status: u16,
        attached: bool,
    },
    /// The send, refused or failed, after trying these replicas.
    Refused {
        req: &'a SendRequest,
        error: &'a SendError,
        attempts: &'a [ReplicaAttempt],
    },
}

/// The audit event of every outcome that has one.
fn refusal_event(
    req: &SendRequest,
    error: &SendError,
    attempts: &[ReplicaAttempt],
) -> Option<Event> {
    match error {
        SendError::InFlight { .. }
        | SendError::KeyReused
        | SendError::RateLimited { .. }
        | SendError::Node(_) => Some(audit_event(Recorded::Refused {
            req,
            error,
            attempts,
        })),
        // Nothing reached a node, or the send's own event comes once it is
        // stored.
        _ => None,
    }
}

/// Every audit event a send writes is made here.
fn audit_event(recorded: Recorded<'_>) -> Event {
    match recorded {
        Recorded::Stored { work, resumed } => {
            let m = &work.message;
            let event = Event::new(
                m.operator_id.as_str(),
                "chat.send",
                m.chat_id.as_str(),
                Outcome::Ok,
            )
            .status(200)
            .node(m.node.as_str())
            .detail("message_id", m.id.to_string())
            .detail("chat_created", work.chat_created);
            let event = if work.attempts.is_empty() {
                event
            } else {
                event.detail("attempts", attempts_detail(&work.attempts))
            };
            if resumed {
                event.detail("resumed", true)
            } else {
                event
            }
        }
        Recorded::Replayed {
            req,
            status,
            attached,
        } => {
            let event = Event::new(
                req.operator.as_str(),
                "chat.send.replay",
                req.chat_id.as_str(),
                Outcome::Ok,
            )
            .status(status);
            if attached {
                event.detail("attached", true)
            } else {
                event
            }
        }
        Recorded::Refused {
            req,
            error,
            attempts,
        } => {
            let event = |action, outcome| {
                Event::new(req.operator.as_str(), action, req.chat_id.as_str(), outcome)
                    .status(error.status())
            };
            match error {
                SendError::InFlight { .. } => event("chat.send.conflict", Outcome::Denied),
                SendError::KeyReused => event("chat.send.mismatch", Outcome::Denied),
                SendError::RateLimited { decision } => {
                    event("chat.send.rate_limited", Outcome::Denied)
                        .detail("scope", refusing_scopes(decision).join(","))
                }
                SendError::Node(e) => {
                    let event = event("chat.send", Outcome::Error)
                        .node(node_of(e).map_or("", NodeId::as_str))
                        .detail("error", node_failure(e));
                    if attempts.is_empty() {
                        event
                    } else {
                        let tried: Vec<Tried> = attempts.iter().map(Tried::from).collect();
                        event.detail("attempts", attempts_detail(&tried))
                    }
                }
                _ => event("chat.send", Outcome::Error),
            }
        }
    }
}

fn node_of(e: &RouterError) -> Option<&NodeId> {
    match e {
        RouterError::Timeout { node, .. }
        | RouterError::Status { node, .. }
        | RouterError::Unreachable { node, .. }
        | RouterError::InvalidReply { node, .. }
        | RouterError::Interrupted { node, .. }
        | RouterError::UnknownNode { node } => Some(node),
        _ => None,
    }
}

/// How a node failed, as the audit trail names it.
fn node_failure(e: &RouterError) -> &'static str {
    match e {
        RouterError::Timeout { .. } => "node-timeout",
        RouterError::Status { .. } => "node-failed",
        RouterError::Unreachable { .. } => "node-unreachable",
        RouterError::InvalidReply { .. } => "node-invalid-reply",
        RouterError::Interrupted { .. } => "node-interrupted",
        _ => "node-error",
    }
}

/// The policies that refused, by name.
pub fn refusing_scopes(decision: &Decision) -> Vec<&'static str> {
    decision.refusing().map(|p| p.policy).collect()
}

fn count_idempotency(outcome: &'static str) {
    metrics::counter!("sofiia_idempotency_total", "outcome" => outcome).increment(1);
}

fn count_decision(decision: &Decision) {
    for policy in &decision.policies {
        let outcome = if decision.allowed {
            "allowed"
        } else if policy.allowed {
            // Not charged, not the reason: counted under neither outcome.
            continue;
        } else {
            "rejected"
        };
        metrics::counter!(
            "sofiia_ratelimit_total",
            "scope" => policy.policy,
            "outcome" => outcome,
        )
        .increment(1);
    }
}
