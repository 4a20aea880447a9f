//! The node protocol over HTTP.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, Response, Url, redirect};
use serde::Deserialize;
use sofiia_core_domain::NodeId;

use crate::config::{ConfigError, NodesConfig};
use crate::protocol::{
    HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, INFER_PATH, InferBody, MAX_REPLY_BYTES, REQUEST_ID_HEADER,
};
use crate::{
    InferObserver, InferReply, InferRequest, NodeRouter, ReplicaAttempt, ReplicaStatus, RouterError,
};

/// Longest time spent opening a TCP connection when the call timeout is
/// longer: a node that does not accept within this is treated as unreachable
/// instead of eating the whole call budget.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound of a probe's timeout: readiness checks must answer quickly even
/// when infer calls may take long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a replica that failed is rested before sends try it again,
/// unless [`HttpRouter::with_cooldown`] says otherwise.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10);

/// The longest pause between two chunks of an answer, unless
/// [`HttpRouter::with_idle_timeout`] says otherwise (or the call timeout is
/// shorter).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// What `Accept` says when the caller wants the reply as it is written: a
/// stream, else the protocol's JSON.
const ACCEPT_STREAM: &str = "text/event-stream, application/json;q=0.5";

/// The largest streamed answer read, in bytes: the reply's text appears
/// twice (the deltas, then `done`), each JSON-escaped.
const MAX_STREAM_BYTES: usize = 4 * MAX_REPLY_BYTES;

/// How long an unused pooled connection is kept. Below the usual server-side
/// keep-alive limits would be ideal, but nodes vary; stale connections are
/// retried by the client library when the server closed them first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`NodeRouter`] speaking the node protocol over HTTP/1.1 to the nodes of a
/// [`NodesConfig`].
///
/// One pooled client serves every node, so consecutive sends to a node reuse
/// connections. Each infer call has one deadline covering connecting, sending,
/// waiting and reading the whole reply, over every replica it tries; the
/// reply body is read up to [`MAX_REPLY_BYTES`]. Within it, two more
/// deadlines: the answer's first byte (its status line) must come within
/// the *first-byte timeout* (by default the call timeout,
/// [`with_first_byte_timeout`](Self::with_first_byte_timeout)), and each
/// later chunk within the *idle timeout* of the one before
/// ([`DEFAULT_IDLE_TIMEOUT`], [`with_idle_timeout`](Self::with_idle_timeout)).
///
/// # Streaming
///
/// A call whose observer [wants the stream](InferObserver::wants_stream)
/// asks for `text/event-stream` (JSON accepted too). `delta` events
/// (`{"text": "<piece>"}`) are reported as they arrive; the `done` event
/// (`{"text": "<whole reply>"}`) ends the call, and must equal the pieces
/// joined. An `error` event, a lost connection or an end without `done` is
/// [`RouterError::Interrupted`]; a piece later than the idle timeout is
/// [`RouterError::Timeout`]; more than [`MAX_REPLY_BYTES`] of text is
/// [`RouterError::InvalidReply`]. A node answering JSON gives one piece. Redirects are not followed
/// (a 3xx is a [`RouterError::Status`]) so the operator's text never goes
/// anywhere but the configured node, and proxy environment variables are
/// ignored for the same reason.
///
/// # Replicas
///
/// A node may have several replicas. A send goes to one: the replicas that
/// are not resting take turns, in configuration order. A replica that
/// refuses the connection (or does not accept it within 5 s) or answers 5xx
/// has received no part of the send's reply, so the send moves on to the
/// next replica with the same `Idempotency-Key`; any other failure is the
/// send's answer. A replica that failed so, or let the deadline pass, is
/// rested for the cooldown ([`DEFAULT_COOLDOWN`]): sends try the others
/// first, and try it again once the cooldown is over (a half-open circuit: one
/// more failure rests it again, a success ends it). When every replica is
/// resting they are still tried, soonest-rested first, so a node is never
/// refused without being asked. [`NodeRouter::replicas`] reports each
/// replica's state.
///
/// Errors: an unconfigured node is [`RouterError::UnknownNode`] before any
/// I/O; a refused, reset or unresolvable connection, or one not accepted
/// within 5 s when the call timeout is longer, is
/// [`RouterError::Unreachable`]; the call deadline expiring at any stage is
/// [`RouterError::Timeout`]; a non-2xx answer is [`RouterError::Status`]; a
/// 2xx body over the cap or without a string `text` is
/// [`RouterError::InvalidReply`], whose source says what was wrong but never
/// repeats the body. After failing over, the last replica's failure is the
/// answer.
///
/// ```
/// use std::time::Duration;
/// use sofiia_router_client::{HttpRouter, NodeRouter, NodesConfig};
///
/// let nodes = NodesConfig::parse("NODA1=http://127.0.0.1:9001|http://127.0.0.1:9011")?;
/// let router = HttpRouter::new(nodes, Duration::from_millis(30_000))?;
/// assert_eq!(router.default_node().as_str(), "NODA1");
/// assert_eq!(router.timeout(), Duration::from_secs(30));
/// assert_eq!(router.replicas(router.default_node()).len(), 2);
/// # Ok::<(), sofiia_router_client::ConfigError>(())
/// ```
pub struct HttpRouter {
    config: NodesConfig,
    // Parallel to `config.nodes()`, parsed once so a call does no URL work.
    endpoints: Vec<Node>,
    client: Client,
    timeout: Duration,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    probe_timeout: Duration,
    cooldown: Duration,
}

/// One node's replicas and whose turn it is.
struct Node {
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

struct Replica {
    infer: Url,
    health: Url,
    /// Until when it rests, if it failed.
    resting_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn resting_until(&self) -> Option<Instant> {
        *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rest(&self, until: Option<Instant>) {
        *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = until;
    }
}

/// What one attempt on one replica came to.
struct Attempt {
    error: RouterError,
    /// The replica received no part of the send's reply: the next one may
    /// be asked.
    pass_over: bool,
}

impl HttpRouter {
    /// A router for `config` whose infer calls each get `timeout` in all.
    ///
    /// Probes get `min(timeout, 2 s)`; see
    /// [`with_probe_timeout`](Self::with_probe_timeout).
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout,
    /// [`ConfigError::HttpClient`] when the HTTP client cannot be built.
    pub fn new(config: NodesConfig, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        let mut builder = Client::builder()
            .user_agent(concat!("sofiia-router-client/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(redirect::Policy::none())
            .no_proxy();
        // When the call timeout is shorter, it bounds connecting by itself; a
        // second timer firing at the same instant would make the error kind
        // (unreachable or timeout) a race.
        if CONNECT_TIMEOUT < timeout {
            builder = builder.connect_timeout(CONNECT_TIMEOUT);
        }
        let client = builder.build().map_err(|e| ConfigError::HttpClient {
            source: Box::new(e),
        })?;
        let endpoints = config
            .iter()
            .map(|(node, bases)| {
                let join = |base: &str, path: &str| {
                    Url::parse(&format!("{base}{path}")).map_err(|e| ConfigError::UnparseableUrl {
                        node: node.clone(),
                        source: Box::new(e),
                    })
                };
                let replicas = bases
                    .iter()
                    .map(|base| {
                        Ok(Replica {
                            infer: join(base, INFER_PATH)?,
                            health: join(base, HEALTH_PATH)?,
                            resting_until: Mutex::new(None),
                        })
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()?;
                Ok(Node {
                    replicas,
                    next: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(HttpRouter {
            config,
            endpoints,
            client,
            timeout,
            first_byte_timeout: timeout,
            idle_timeout: timeout.min(DEFAULT_IDLE_TIMEOUT),
            probe_timeout: timeout.min(PROBE_TIMEOUT),
            cooldown: DEFAULT_COOLDOWN,
        })
    }

    /// Sets how long a replica may take to start answering (its status
    /// line) before the call moves on to the next replica; capped at the
    /// call timeout. Shorter than the call timeout, it leaves time to fail
    /// over from a replica that hangs.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout.
    pub fn with_first_byte_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.first_byte_timeout = timeout.min(self.timeout);
        Ok(self)
    }

    /// Sets the longest pause between two chunks of an answer; capped at
    /// the call timeout.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.idle_timeout = timeout.min(self.timeout);
        Ok(self)
    }

    /// The first-byte deadline of each attempt.
    pub fn first_byte_timeout(&self) -> Duration {
        self.first_byte_timeout
    }

    /// The longest pause between two chunks of an answer.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sets how long a failing replica rests before sends try it again.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Sets the timeout of [`probe`](NodeRouter::probe) calls.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.probe_timeout = timeout;
        Ok(self)
    }

    /// The configuration this router was built from.
    pub fn config(&self) -> &NodesConfig {
        &self.config
    }

    /// The deadline of each infer call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The deadline of each probe.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    fn endpoints(&self, node: &NodeId) -> Result<&Node, RouterError> {
        self.config
            .nodes()
            .iter()
            .position(|n| n == node)
            .map(|index| &self.endpoints[index])
            .ok_or_else(|| RouterError::UnknownNode { node: node.clone() })
    }

    /// The order in which a send tries `node`'s replicas: those not resting,
    /// starting at the one whose turn it is, then the resting ones,
    /// soonest-rested first.
    fn order(&self, node: &Node) -> Vec<usize> {
        let now = Instant::now();
        let count = node.replicas.len();
        let start = node.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut ready = Vec::with_capacity(count);
        let mut resting = Vec::new();
        for i in (0..count).map(|k| (start + k) % count) {
            match node.replicas[i].resting_until() {
                Some(until) if until > now => resting.push((until, i)),
                _ => ready.push(i),
            }
        }
        resting.sort();
        ready.extend(resting.into_iter().map(|(_, i)| i));
        ready
    }

    async fn exchange(
        &self,
        url: &Url,
        req: &InferRequest,
        wire: &Wire,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, Attempt> {
        let node = &req.node;
        let stream = observer.wants_stream();
        let call = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if stream {
                    ACCEPT_STREAM
                } else {
                    "application/json"
                },
            )
            .header(REQUEST_ID_HEADER, wire.request_id.clone())
            .header(IDEMPOTENCY_KEY_HEADER, wire.idempotency_key.clone())
            .body(wire.body.clone())
            .send();
        // A first-byte deadline as long as the call's is left to the call's
        // own, so that one expiry has one meaning.
        let response = if self.first_byte_timeout < self.timeout {
            tokio::time::timeout(self.first_byte_timeout, call)
                .await
                .map_err(|_| Attempt {
                    error: RouterError::Timeout {
                        node: node.clone(),
                        after: self.first_byte_timeout,
                    },
                    pass_over: true,
                })?
        } else {
            call.await
        };
        let response = response.map_err(|e| Attempt {
            // Only a connection never made is sure not to have reached
            // the node.
            pass_over: e.is_connect(),
            error: transport_error(node, self.timeout, e),
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Attempt {
                pass_over: status.is_server_error(),
                error: RouterError::Status {
                    node: node.clone(),
                    status: status.as_u16(),
                },
            });
        }
        if stream && is_event_stream(&response) {
            return self.read_stream(node, response, observer).await;
        }
        let mut response = response;
        let bytes = read_capped(&mut response, MAX_REPLY_BYTES, self.idle_timeout)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => transport_error(node, self.timeout, e),
                ReadError::Idle => RouterError::Timeout {
                    node: node.clone(),
                    after: self.idle_timeout,
                },
                ReadError::Reply(e) => invalid(node, e),
            })
            .map_err(|error| Attempt {
                error,
                pass_over: false,
            })?;
        let reply: ReplyText = serde_json::from_slice(&bytes).map_err(|e| Attempt {
            error: invalid(node, ReplyError::from_json(&e)),
            pass_over: false,
        })?;
        if stream && !reply.text.is_empty() {
            observer.delta(&reply.text);
        }
        Ok(InferReply { text: reply.text })
    }

    /// Reads a `text/event-stream` answer, reporting each piece.
    async fn read_stream(
        &self,
        node: &NodeId,
        response: Response,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, Attempt> {
        let mut events = Box::pin(capped_bytes(response.bytes_stream()).eventsource());
        let mut joined = String::new();
        let mut pieces = 0usize;
        // Before the first piece, nothing of the reply was given: the next
        // replica may still be asked.
        let fail = |error: RouterError, pieces: usize| Attempt {
            pass_over: pieces == 0
                && matches!(
                    error,
                    RouterError::Interrupted { .. } | RouterError::Timeout { .. }
                ),
            error,
        };
        loop {
            let next = match tokio::time::timeout(self.idle_timeout, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let error = RouterError::Timeout {
                        node: node.clone(),
                        after: self.idle_timeout,
                    };
                    return Err(fail(error, pieces));
                }
            };
            let event = match next {
                None => {
                    let error = interrupted(node, StreamBroke::NoDone);
                    return Err(fail(error, pieces));
                }
                Some(Err(EventStreamError::Transport(StreamRead::TooLarge))) => {
                    let error = invalid(
                        node,
                        ReplyError::TooLarge {
                            limit: MAX_REPLY_BYTES,
                        },
                    );
                    return Err(fail(error, pieces));
                }
                Some(Err(EventStreamError::Transport(StreamRead::Transport(e)))) => {
                    let error = interrupted(node, e);
                    return Err(fail(error, pieces));
                }
                Some(Err(_)) => {
                    return Err(fail(invalid(node, ReplyError::NotEventStream), pieces));
                }
                Some(Ok(event)) => event,
            };
            match event.event.as_str() {
                "delta" => {
                    let piece = event_text(node, &event.data).map_err(|e| fail(e, pieces))?;
                    if joined.len() + piece.len() > MAX_REPLY_BYTES {
                        let error = invalid(
                            node,
                            ReplyError::TooLarge {
                                limit: MAX_REPLY_BYTES,
                            },
                        );
                        return Err(fail(error, pieces));
                    }
                    if !piece.is_empty() {
                        joined.push_str(&piece);
                        pieces += 1;
                        observer.delta(&piece);
                    }
                }
                "done" => {
                    let text = event_text(node, &event.data).map_err(|e| fail(e, pieces))?;
                    if pieces == 0 {
                        if !text.is_empty() {
                            observer.delta(&text);
                        }
                    } else if text != joined {
                        return Err(fail(invalid(node, ReplyError::DoneDiffers), pieces));
                    }
                    return Ok(InferReply { text });
                }
                "error" => {
                    return Err(fail(interrupted(node, StreamBroke::ErrorEvent), pieces));
                }
                // Comments (keep-alives) never get here; other events are
                // not the protocol's and are skipped.
                _ => {}
            }
        }
    }
}

/// The parts of an infer request every attempt sends alike.
struct Wire {
    request_id: HeaderValue,
    idempotency_key: HeaderValue,
    body: Vec<u8>,
}

#[async_trait]
impl NodeRouter for HttpRouter {
    fn nodes(&self) -> &[NodeId] {
        self.config.nodes()
    }

    fn default_node(&self) -> &NodeId {
        self.config.default_node()
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        self.infer_observed(req, &()).await
    }

    async fn infer_observed(
        &self,
        req: &InferRequest,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, RouterError> {
        let endpoints = self.endpoints(&req.node)?;
        let invalid = |source: Box<dyn StdError + Send + Sync>| RouterError::InvalidRequest {
            node: req.node.clone(),
            source,
        };
        // Checked here rather than left to the client library, whose error
        // for a bad header would be indistinguishable from a transport error.
        let request_id = HeaderValue::from_str(&req.request_id)
            .map_err(|_| invalid(Box::new(BadHeader(REQUEST_ID_HEADER))))?;
        let idempotency_key = HeaderValue::from_str(&req.idempotency_key)
            .map_err(|_| invalid(Box::new(BadHeader(IDEMPOTENCY_KEY_HEADER))))?;
        let body = serde_json::to_vec(&InferBody::from(req)).map_err(|e| invalid(Box::new(e)))?;
        let wire = Wire {
            request_id,
            idempotency_key,
            body,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let report = endpoints.replicas.len() > 1;
        let mut last = None;
        for i in self.order(endpoints) {
            let replica = &endpoints.replicas[i];
            let call = self.exchange(&replica.infer, req, &wire, observer);
            // Dropping `call` on expiry aborts the request and closes its
            // connection, so a late reply cannot be mistaken for the next one.
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Err(Attempt {
                    error: RouterError::Timeout {
                        node: req.node.clone(),
                        after: self.timeout,
                    },
                    pass_over: false,
                }),
            };
            if report {
                observer.attempt(ReplicaAttempt {
                    replica: i,
                    outcome: result.as_ref().map_or_else(|a| a.error.kind(), |_| "ok"),
                });
            }
            match result {
                Ok(reply) => {
                    replica.rest(None);
                    return Ok(reply);
                }
                Err(attempt) => {
                    if attempt.pass_over || matches!(attempt.error, RouterError::Timeout { .. }) {
                        replica.rest(Some(Instant::now() + self.cooldown));
                    }
                    if !attempt.pass_over {
                        return Err(attempt.error);
                    }
                    last = Some(attempt.error);
                }
            }
        }
        Err(last.unwrap_or_else(|| RouterError::UnknownNode {
            node: req.node.clone(),
        }))
    }

    fn replicas(&self, node: &NodeId) -> Vec<ReplicaStatus> {
        let Ok(endpoints) = self.endpoints(node) else {
            return Vec::new();
        };
        let now = Instant::now();
        endpoints
            .replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| ReplicaStatus {
                index,
                resting_for: replica
                    .resting_until()
                    .and_then(|until| until.checked_duration_since(now))
                    .filter(|left| !left.is_zero()),
            })
            .collect()
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        let endpoints = self.endpoints(node)?;
        // Every replica at once; the node answers if any of them does.
        let probes = endpoints.replicas.iter().map(|replica| {
            Box::pin(async move {
                let call = self
                    .client
                    .get(replica.health.clone())
                    .header(ACCEPT, "application/json")
                    .send();
                match tokio::time::timeout(self.probe_timeout, call).await {
                    // Any status means something speaking HTTP answered;
                    // whether the node is healthy beyond that is its own
                    // business.
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(e)) => Err(transport_error(node, self.probe_timeout, e)),
                    Err(_) => Err(RouterError::Timeout {
                        node: node.clone(),
                        after: self.probe_timeout,
                    }),
                }
            })
        });
        futures_util::future::select_ok(probes).await.map(drop)
    }
}

impl fmt::Debug for HttpRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRouter")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("probe_timeout", &self.probe_timeout)
            .finish_non_exhaustive()
    }
}

/// The only part of a reply the protocol defines.
#[derive(Deserialize)]
struct ReplyText {
    text: String,
}

fn transport_error(node: &NodeId, after: Duration, e: reqwest::Error) -> RouterError {
    // A connect timeout means the node never accepted: unreachable, like a
    // refused connection, not a node that is slow to answer.
    if e.is_timeout() && !e.is_connect() {
        RouterError::Timeout {
            node: node.clone(),
            after,
        }
    } else {
        RouterError::Unreachable {
            node: node.clone(),
            source: Box::new(e),
        }
    }
}

fn invalid(node: &NodeId, e: ReplyError) -> RouterError {
    RouterError::InvalidReply {
        node: node.clone(),
        source: Box::new(e),
    }
}

fn interrupted(node: &NodeId, e: impl StdError + Send + Sync + 'static) -> RouterError {
    RouterError::Interrupted {
        node: node.clone(),
        source: Box::new(e),
    }
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The text of a `delta` or `done` event.
fn event_text(node: &NodeId, data: &str) -> Result<String, RouterError> {
    serde_json::from_str::<ReplyText>(data)
        .map(|reply| reply.text)
        .map_err(|e| invalid(node, ReplyError::from_json(&e)))
}

/// Why a stream's bytes stopped.
#[derive(Debug)]
enum StreamRead {
    Transport(reqwest::Error),
    TooLarge,
}

/// How a stream broke off, without repeating anything the node sent.
#[derive(Debug, thiserror::Error)]
enum StreamBroke {
    #[error("the stream ended before its done event")]
    NoDone,
    #[error("the node sent an error event")]
    ErrorEvent,
}

/// The body's bytes, ending with [`StreamRead::TooLarge`] past
/// [`MAX_STREAM_BYTES`] so a node cannot make the parser buffer without
/// bound.
fn capped_bytes(
    body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>>,
) -> impl Stream<Item = Result<bytes::Bytes, StreamRead>> {
    let mut read = 0usize;
    body.map(move |chunk| {
        let chunk = chunk.map_err(StreamRead::Transport)?;
        read += chunk.len();
        if read > MAX_STREAM_BYTES {
            Err(StreamRead::TooLarge)
        } else {
            Ok(chunk)
        }
    })
}

enum ReadError {
    Transport(reqwest::Error),
    Idle,
    Reply(ReplyError),
}

async fn read_capped(
    response: &mut Response,
    limit: usize,
    idle: Duration,
) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(ReadError::Reply(ReplyError::TooLarge { limit }));
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(idle, response.chunk())
            .await
            .map_err(|_| ReadError::Idle)?
            .map_err(ReadError::Transport)?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            return Err(ReadError::Reply(ReplyError::TooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What is wrong with a 2xx reply body. Deliberately says where, never what:
/// the body is agent text, which must not reach logs through an error chain.
#[derive(Debug, thiserror::Error)]
enum ReplyError {
    #[error("the reply body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the reply body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("the reply body is JSON but not an object with a string `text`")]
    NoText,
    #[error("the answer is not a valid event stream")]
    NotEventStream,
    #[error("the done event's text differs from the deltas joined")]
    DoneDiffers,
}

impl ReplyError {
    fn from_json(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => ReplyError::NoText,
            _ => ReplyError::NotJson {
                line: e.line(),
                column: e.column(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} header value is not a valid HTTP header value")]
struct BadHeader(&'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;

    fn router(timeout: Duration) -> HttpRouter {
        // Loopback discard port; none of these tests gets as far as connecting.
        let config = NodesConfig::parse("NODA1=http://127.0.0.1:9,NODA2=http://127.0.0.2:9/base/")
            .unwrap()
            .with_default_name("NODA2")
            .unwrap();
        HttpRouter::new(config, timeout).unwrap()
    }

    #[test]
    fn builds_endpoint_urls_from_bases() {
        let router = router(Duration::from_secs(30));
        let noda2 = NodeId::new("NODA2").unwrap();
        let endpoints = &router.endpoints(&noda2).unwrap().replicas[0];
        assert_eq!(endpoints.infer.as_str(), "http://127.0.0.2:9/base/v1/infer");
        assert_eq!(
            endpoints.health.as_str(),
            "http://127.0.0.2:9/base/v1/health"
        );
        assert_eq!(router.default_node(), &noda2);
        assert_eq!(router.probe_timeout(), PROBE_TIMEOUT);
    }

    #[test]
    fn rejects_zero_timeouts() {
        let config = NodesConfig::parse("NODA1=http://127.0.0.1:9").unwrap();
        assert!(matches!(
            HttpRouter::new(config.clone(), Duration::ZERO),
            Err(ConfigError::ZeroTimeout)
        ));
        let router = HttpRouter::new(config, Duration::from_millis(500)).unwrap();
        assert_eq!(router.probe_timeout(), Duration::from_millis(500));
        assert!(matches!(
            router.with_probe_timeout(Duration::ZERO),
            Err(ConfigError::ZeroTimeout)
        ));
    }

    #[tokio::test]
    async fn unknown_node_fails_without_io() {
        // Any I/O would surface as an unreachable error instead of UnknownNode.
        let router = router(Duration::from_secs(30));
        let other = NodeId::new("NODA3").unwrap();
        let err = router.infer(&request(&other, "hi")).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
        let err = router.probe(&other).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn header_values_are_checked_before_sending() {
        let router = router(Duration::from_secs(30));
        let node = router.default_node().clone();
        let mut req = request(&node, "hi");
        req.idempotency_key = "bad\nkey".into();
        let err = router.infer(&req).await.unwrap_err();
        assert!(matches!(err, RouterError::InvalidRequest { .. }), "{err:?}");
        assert_eq!(err.kind(), "invalid_request");
        let source = StdError::source(&err).unwrap().to_string();
        assert!(source.contains("idempotency-key"), "{source}");
    }

    fn json_error(body: &[u8]) -> serde_json::Error {
        match serde_json::from_slice::<ReplyText>(body) {
            Ok(_) => panic!("body should not parse"),
            Err(e) => e,
        }
    }

    #[test]
    fn reply_errors_do_not_repeat_the_body() {
        for body in [
            r#""secret reply""#,
            r#"{"text": ["secret reply"]}"#,
            "secret reply",
        ] {
            let e = json_error(body.as_bytes());
            let text = ReplyError::from_json(&e).to_string();
            assert!(!text.contains("secret"), "{text}");
        }
        let e = json_error(b"{\"txt\":1}");
        assert!(matches!(ReplyError::from_json(&e), ReplyError::NoText));
        let e = json_error(b"<html>");
        assert!(matches!(
            ReplyError::from_json(&e),
            ReplyError::NotJson { .. }
        ));
    }

    #[test]
    fn debug_shows_configuration_only() {
        let debug = format!("{:?}", router(Duration::from_secs(30)));
        assert!(debug.contains("NODA1"), "{debug}");
        assert!(debug.contains("timeout"), "{debug}");
    }
}
