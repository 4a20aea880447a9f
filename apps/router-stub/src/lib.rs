//! A small inference node speaking the sofiia node protocol, for local runs,
//! end-to-end tests and load measurements.
//!
//! [`StubNode::spawn`] starts a real HTTP server (actix-web) on its own
//! thread, with its own runtime, and returns a [`StubHandle`] once it is
//! listening, so it can be used from any caller: a plain test, a
//! `#[tokio::test]` of either flavour, or code already running inside
//! actix-web. The handle reads what the node received and changes how it
//! behaves while it runs; dropping it stops the server.
//!
//! # HTTP interface
//!
//! | method and path | answer |
//! | --- | --- |
//! | `POST /v1/infer` | the node protocol: `200 {"text":"[<NAME>] echo: <text>","node":"<NAME>"}`, after the configured delay, or the configured failure; asked for `text/event-stream`, the same reply as `delta` events and a `done` event (see below) |
//! | `GET /v1/health` | `200 {"status":"ok","node":"<NAME>"}` |
//! | `GET /_stub/calls` | `{"count":n,"calls":[...]}`: every infer call received, without its text |
//! | `DELETE /_stub/calls` | forgets the calls: `{"cleared":n}` |
//! | `GET /_stub/behaviour` | `{"node","delay_ms","fail_status","reply","stream","chunks","chunk_delay_ms","fail_after_chunks","break_with"}` |
//! | `POST /_stub/behaviour` | `{"delay_ms"?: n, "fail_status"?: n or null, "reply"?: "echo" or "not_json" or "missing_text" or "oversized", "stream"?: bool, "chunks"?: n, "chunk_delay_ms"?: n, "fail_after_chunks"?: n or null, "break_with"?: "error_event" or "disconnect"}`; answers the new behaviour |
//!
//! # Streaming
//!
//! An infer call whose `Accept` names `text/event-stream` is answered with
//! `Content-Type: text/event-stream` (while `stream` is on, the default):
//! the echo cut into `chunks` pieces (default 4, never more than its
//! characters), each an `event: delta` with `data: {"text":"<piece>"}`
//! preceded by `chunk_delay_ms`, then `event: done` with `data:
//! {"text":"<whole reply>","node":"<NAME>"}`. With `fail_after_chunks`
//! set to *n*, the stream breaks after *n* pieces: an `event: error` with
//! the JSON error body (`break_with: "error_event"`, the default), or the
//! connection cut without one (`"disconnect"`). `stream: false` makes the
//! node one that does not stream: it answers JSON whatever is asked. A
//! failure status or a reply mode other than `echo` answers as without the
//! header.
//!
//! `POST /v1/infer` wants `Content-Type: application/json` (else 415), an
//! `Idempotency-Key` header (else 400) and a protocol body whose ids and text
//! pass the domain's rules (else 400); errors are JSON
//! `{"error","detail","node"}`. The `X-Request-Id` header, when sent, is
//! recorded and echoed back.
//!
//! ```
//! use std::time::Duration;
//!
//! use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId, OperatorText};
//! use sofiia_router_client::{HttpRouter, InferRequest, NodeRouter, NodesConfig};
//! use sofiia_router_stub::{StubConfig, StubNode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stub = StubNode::spawn_loopback(StubConfig::new(NodeId::new("NODA1")?))?;
//! let nodes = NodesConfig::from_entries([("NODA1", stub.base_url())])?;
//! let router = HttpRouter::new(nodes, Duration::from_secs(5))?;
//!
//! let reply = router
//!     .infer(&InferRequest {
//!         node: NodeId::new("NODA1")?,
//!         chat_id: ChatId::new("incident-42")?,
//!         message_id: MessageId::generate(),
//!         operator_id: OperatorId::new("alice")?,
//!         text: OperatorText::new("status?")?,
//!         idempotency_key: "send-0001".into(),
//!         request_id: "req-0001".into(),
//!     })
//!     .await?;
//! assert_eq!(reply.text, "[NODA1] echo: status?");
//! assert_eq!(stub.calls()[0].idempotency_key, "send-0001");
//! stub.stop().await;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId};
use sofiia_router_client::protocol::{
    HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, INFER_PATH, InferBody, InferResponse, MAX_REPLY_BYTES,
    REQUEST_ID_HEADER,
};

/// The largest infer request body accepted, in bytes; well above the largest
/// valid one (16 000 characters of text plus ids).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How long a graceful stop lets in-flight requests finish.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// How long dropping a [`StubHandle`] waits for the server thread to end.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// The accepted range of injected failure statuses: final statuses only, as
/// a 1xx cannot end an exchange.
const FAIL_STATUS_RANGE: std::ops::RangeInclusive<u16> = 200..=599;

/// How a stub node answers `POST /v1/infer` when it does not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplyMode {
    /// `200 {"text":"[<NAME>] echo: <text>","node":"<NAME>"}`: the protocol.
    #[default]
    Echo,
    /// `200` with a plain-text body.
    NotJson,
    /// `200` with a JSON object lacking `text`.
    MissingText,
    /// `200` with a protocol reply whose body exceeds the client's limit
    /// ([`MAX_REPLY_BYTES`]).
    Oversized,
}

/// How a stub node's stream breaks when it is set to fail mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamBreak {
    /// An `event: error` with a JSON error body, then the end of the stream.
    #[default]
    ErrorEvent,
    /// The connection is cut, with no `done` and no error event.
    Disconnect,
}

/// How a stub node streams its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Whether it streams when asked; `false` makes it answer JSON always.
    pub enabled: bool,
    /// Into how many `delta` events a reply is cut (at least 1; never more
    /// than the reply has characters).
    pub chunks: usize,
    /// The pause before each `delta` event.
    pub chunk_delay: Duration,
    /// When set, the stream breaks after this many `delta` events.
    pub fail_after_chunks: Option<usize>,
    /// How it breaks.
    pub break_with: StreamBreak,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            enabled: true,
            chunks: 4,
            chunk_delay: Duration::ZERO,
            fail_after_chunks: None,
            break_with: StreamBreak::ErrorEvent,
        }
    }
}

/// How a stub node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StubConfig {
    /// The node's name, used in replies and health answers.
    pub name: NodeId,
    /// How long each infer call waits before answering.
    pub delay: Duration,
    /// When set, infer calls answer this status (200..=599) with a JSON
    /// error body instead of replying.
    pub fail_status: Option<u16>,
    /// What a non-failing infer call answers.
    pub reply: ReplyMode,
    /// actix-web worker threads (at least 1). One is plenty: delays are
    /// asynchronous and cost no thread.
    pub workers: usize,
    /// How it streams when asked.
    pub stream: StreamConfig,
}

impl StubConfig {
    /// A node named `name` that answers at once with an echo, on one worker.
    pub fn new(name: NodeId) -> Self {
        StubConfig {
            name,
            delay: Duration::ZERO,
            fail_status: None,
            reply: ReplyMode::Echo,
            workers: 1,
            stream: StreamConfig::default(),
        }
    }

    /// Sets [`stream`](Self::stream).
    #[must_use]
    pub fn with_stream(mut self, stream: StreamConfig) -> Self {
        self.stream = stream;
        self
    }

    /// Sets [`delay`](Self::delay).
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets [`fail_status`](Self::fail_status).
    #[must_use]
    pub fn with_fail_status(mut self, status: Option<u16>) -> Self {
        self.fail_status = status;
        self
    }

    /// Sets [`reply`](Self::reply).
    #[must_use]
    pub fn with_reply(mut self, reply: ReplyMode) -> Self {
        self.reply = reply;
        self
    }

    /// Sets [`workers`](Self::workers).
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }
}

/// One infer call as the stub received it. The operator's text is not kept,
/// only its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCall {
    /// The body's `chat_id`.
    pub chat_id: ChatId,
    /// The body's `message_id`.
    pub message_id: MessageId,
    /// The body's `operator_id`.
    pub operator_id: OperatorId,
    /// The body's `node`: the node the console meant to ask.
    pub node: NodeId,
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The `X-Request-Id` header, when sent.
    pub request_id: Option<String>,
    /// The text's length in characters.
    pub text_chars: usize,
}

/// Starts stub nodes.
#[derive(Debug, Clone, Copy)]
pub struct StubNode;

impl StubNode {
    /// Starts a stub node listening on `bind` (port 0 picks a free port) and
    /// returns once it accepts connections.
    ///
    /// The server runs on a dedicated thread with its own actix-web runtime,
    /// so this works from synchronous code and from inside any async
    /// runtime; the short blocking wait for the server to start is the only
    /// blocking this does.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a configuration out of range (a
    /// fail status outside 200..=599, zero workers); any error of binding
    /// `bind` or starting the server.
    pub fn spawn(bind: SocketAddr, config: StubConfig) -> io::Result<StubHandle> {
        if let Some(status) = config.fail_status {
            check_fail_status(status)?;
        }
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a stub node needs at least one worker",
            ));
        }
        check_chunks(config.stream.chunks)?;
        // Bound here, not on the server thread, so bind errors and the port
        // chosen for port 0 are known before anything else starts.
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let workers = config.workers;
        let shared = Arc::new(Shared::new(config));

        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<ServerHandle>>(1);
        let (exited_tx, exited_rx) = mpsc::channel::<()>();
        let (exited_async_tx, exited_async_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("router-stub-{}", shared.name))
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    // Dropped when this thread is done, after the runtime:
                    // that is what `stop` and `Drop` wait for.
                    let _exited = (exited_tx, exited_async_tx);
                    let system = actix_web::rt::System::new();
                    system.block_on(async move {
                        match build_server(listener, shared, workers) {
                            Ok(server) => {
                                let _ = ready_tx.send(Ok(server.handle()));
                                // Ends when stopped; an error here has no one
                                // left to report to.
                                let _ = server.await;
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    });
                }
            })?;
        let server = match ready_rx.recv() {
            Ok(result) => result?,
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other(
                    "the stub node's server thread ended before serving",
                ));
            }
        };
        Ok(StubHandle {
            addr,
            shared,
            running: Some(Running {
                server,
                thread,
                exited: Mutex::new(exited_rx),
                exited_async: exited_async_rx,
            }),
        })
    }

    /// [`spawn`](Self::spawn) on `127.0.0.1` with a free port.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub fn spawn_loopback(config: StubConfig) -> io::Result<StubHandle> {
        Self::spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
    }
}

/// A running stub node. Dropping it stops the server at once (in-flight
/// calls are cut) and waits, up to a few seconds, for its port to be closed;
/// [`stop`](Self::stop) stops it gracefully.
pub struct StubHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

struct Running {
    server: ServerHandle,
    thread: JoinHandle<()>,
    // In a Mutex only to keep the handle `Sync`; used by `Drop` alone.
    exited: Mutex<mpsc::Receiver<()>>,
    exited_async: tokio::sync::oneshot::Receiver<()>,
}

impl StubHandle {
    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's base URL, `http://<addr>`, as `SOFIIA_NODES` wants it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node's name.
    pub fn name(&self) -> &NodeId {
        &self.shared.name
    }

    /// Every infer call received so far, in arrival order; a call is
    /// recorded as soon as its body is accepted, before any delay.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.state().calls.clone()
    }

    /// How many infer calls were received.
    pub fn call_count(&self) -> usize {
        self.shared.state().calls.len()
    }

    /// How many health checks (`GET /v1/health`) were received.
    pub fn health_check_count(&self) -> usize {
        self.shared
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.shared.state().calls.clear();
    }

    /// Sets the delay of infer calls that arrive from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state().behaviour.delay = delay;
    }

    /// Makes infer calls that arrive from now on fail with `status`, or
    /// answer normally again with `None`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a status outside 200..=599; the
    /// behaviour is then unchanged.
    pub fn set_fail_status(&self, status: Option<u16>) -> io::Result<()> {
        if let Some(status) = status {
            check_fail_status(status)?;
        }
        self.shared.state().behaviour.fail_status = status;
        Ok(())
    }

    /// Sets what non-failing infer calls that arrive from now on answer.
    pub fn set_reply(&self, reply: ReplyMode) {
        self.shared.state().behaviour.reply = reply;
    }

    /// Sets how infer calls that arrive from now on stream.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for zero chunks; the behaviour is
    /// then unchanged.
    pub fn set_stream(&self, stream: StreamConfig) -> io::Result<()> {
        check_chunks(stream.chunks)?;
        self.shared.state().behaviour.stream = stream;
        Ok(())
    }

    /// Stops the server gracefully: no new connections, in-flight calls get
    /// up to 5 seconds to finish, idle connections are closed. Returns once
    /// the server thread is done and the port is closed. Works on any async
    /// runtime.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.server.stop(true).await;
            // Resolves when the thread drops the sender, i.e. when it ends;
            // the JoinHandle is dropped (the thread is finishing anyway)
            // rather than joined, which would block the caller's runtime.
            let _ = running.exited_async.await;
        }
    }
}

impl Drop for StubHandle {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        // The stop command is sent when `stop` is called; awaiting the
        // returned future would only wait for completion, done below.
        std::mem::drop(running.server.stop(false));
        let exited = running
            .exited
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded, so a wedged server cannot hang the test that drops it.
        if let Err(mpsc::RecvTimeoutError::Disconnected) = exited.recv_timeout(DROP_WAIT) {
            let _ = running.thread.join();
        }
    }
}

impl std::fmt::Debug for StubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubHandle")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .finish()
    }
}

fn check_fail_status(status: u16) -> io::Result<()> {
    if FAIL_STATUS_RANGE.contains(&status) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fail status {status} is outside 200..=599"),
        ))
    }
}

fn check_chunks(chunks: usize) -> io::Result<()> {
    if chunks == 0 {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a stream needs at least one chunk",
        ))
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    delay: Duration,
    fail_status: Option<u16>,
    reply: ReplyMode,
    stream: StreamConfig,
}

struct State {
    behaviour: Behaviour,
    calls: Vec<RecordedCall>,
}

/// What the handle and the server share.
struct Shared {
    name: NodeId,
    state: Mutex<State>,
    health_checks: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn new(config: StubConfig) -> Self {
        Shared {
            name: config.name,
            state: Mutex::new(State {
                behaviour: Behaviour {
                    delay: config.delay,
                    fail_status: config.fail_status,
                    reply: config.reply,
                    stream: config.stream,
                },
                calls: Vec::new(),
            }),
            health_checks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code; a poisoned
        // lock only means a handler panicked, and the data is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn behaviour_json(&self) -> serde_json::Value {
        let behaviour = self.state().behaviour;
        json!({
            "node": self.name,
            "delay_ms": u64::try_from(behaviour.delay.as_millis()).unwrap_or(u64::MAX),
            "fail_status": behaviour.fail_status,
            "reply": behaviour.reply,
            "stream": behaviour.stream.enabled,
            "chunks": behaviour.stream.chunks,
            "chunk_delay_ms": u64::try_from(behaviour.stream.chunk_delay.as_millis()).unwrap_or(u64::MAX),
            "fail_after_chunks": behaviour.stream.fail_after_chunks,
            "break_with": behaviour.stream.break_with,
        })
    }

    fn error(&self, status: StatusCode, error: &str, detail: &str) -> HttpResponse {
        HttpResponse::build(status).json(json!({
            "error": error,
            "detail": detail,
            "node": self.name,
        }))
    }
}

fn build_server(listener: TcpListener, shared: Arc<Shared>, workers: usize) -> io::Result<Server> {
    let data = web::Data::from(shared);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(web::resource(INFER_PATH).route(web::post().to(infer)))
            .service(web::resource(HEALTH_PATH).route(web::get().to(health)))
            .service(
                web::resource("/_stub/calls")
                    .route(web::get().to(list_calls))
                    .route(web::delete().to(clear_calls)),
            )
            .service(
                web::resource("/_stub/behaviour")
                    .route(web::get().to(get_behaviour))
                    .route(web::post().to(set_behaviour)),
            )
            .default_service(web::to(not_found))
    })
    .workers(workers)
    // Signals belong to the embedding process: a test runner's Ctrl-C must
    // not be swallowed by a stub, and the binary handles them itself.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    // Streamed pieces leave when written, not when the peer's delayed ACK
    // lets Nagle's algorithm go.
    .tcp_nodelay(true)
    .listen(listener)?
    .run();
    Ok(server)
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn infer(req: HttpRequest, payload: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    let request_id = header(&req, REQUEST_ID_HEADER);
    let mut response = infer_response(&req, payload, &shared, request_id.clone()).await;
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

async fn infer_response(
    req: &HttpRequest,
    payload: web::Payload,
    shared: &Shared,
    request_id: Option<String>,
) -> HttpResponse {
    if !is_json(req) {
        return shared.error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        );
    }
    let Some(idempotency_key) = header(req, IDEMPOTENCY_KEY_HEADER).filter(|k| !k.is_empty())
    else {
        return shared.error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "the Idempotency-Key header is required",
        );
    };
    let bytes = match payload.to_bytes_limited(MAX_REQUEST_BYTES).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return shared.error(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the request body could not be read",
            );
        }
        Err(_) => {
            return shared.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds 1 MiB",
            );
        }
    };
    let body: InferBody = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            return shared.error(StatusCode::BAD_REQUEST, "invalid_body", &e.to_string());
        }
    };
    let behaviour = {
        let mut state = shared.state();
        state.calls.push(RecordedCall {
            chat_id: body.chat_id.clone(),
            message_id: body.message_id,
            operator_id: body.operator_id.clone(),
            node: body.node.clone(),
            idempotency_key,
            request_id,
            text_chars: body.text.as_str().chars().count(),
        });
        // Read at arrival: a behaviour change affects later calls only, so
        // a test flipping it mid-call knows what the call will do.
        state.behaviour
    };
    if !behaviour.delay.is_zero() {
        actix_web::rt::time::sleep(behaviour.delay).await;
    }
    if let Some(status) = behaviour.fail_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return shared.error(status, "injected_failure", "this stub node is set to fail");
    }
    let name = &shared.name;
    if behaviour.reply == ReplyMode::Echo && behaviour.stream.enabled && wants_stream(req) {
        let text = format!("[{name}] echo: {}", body.text.as_str());
        return stream_reply(shared, text, behaviour.stream);
    }
    match behaviour.reply {
        ReplyMode::Echo => HttpResponse::Ok().json(InferResponse {
            text: format!("[{name}] echo: {}", body.text.as_str()),
            node: Some(name.to_string()),
        }),
        ReplyMode::NotJson => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(format!("[{name}] this is not a protocol reply")),
        ReplyMode::MissingText => HttpResponse::Ok().json(json!({ "node": name })),
        ReplyMode::Oversized => HttpResponse::Ok().json(InferResponse {
            text: "x".repeat(MAX_REPLY_BYTES),
            node: Some(name.to_string()),
        }),
    }
}

fn wants_stream(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|media| {
                media
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
}

/// `text` cut into at most `chunks` pieces of about equal length, on
/// character boundaries.
fn pieces(text: &str, chunks: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let count = chunks.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(count).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn sse_event(event: &str, data: &serde_json::Value) -> web::Bytes {
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The reply as an event stream, per `config`.
fn stream_reply(shared: &Shared, text: String, config: StreamConfig) -> HttpResponse {
    let name = shared.name.to_string();
    let mut events: Vec<(Duration, Result<web::Bytes, io::Error>)> = Vec::new();
    for (i, piece) in pieces(&text, config.chunks).into_iter().enumerate() {
        if config.fail_after_chunks == Some(i) {
            break;
        }
        events.push((
            config.chunk_delay,
            Ok(sse_event("delta", &json!({ "text": piece }))),
        ));
    }
    let sent = events.len();
    match config.fail_after_chunks {
        Some(after) if after <= sent => match config.break_with {
            StreamBreak::ErrorEvent => events.push((
                Duration::ZERO,
                Ok(sse_event(
                    "error",
                    &json!({"error": "injected_failure", "detail": "this stub node is set to fail mid-stream", "node": name}),
                )),
            )),
            // After a pause, so that what came before is on the wire (the
            // server would otherwise drop it unsent with the connection).
            StreamBreak::Disconnect => events.push((
                config.chunk_delay.max(Duration::from_millis(50)),
                Err(io::Error::other("this stub node is set to cut its stream")),
            )),
        },
        _ => events.push((
            Duration::ZERO,
            Ok(sse_event("done", &json!({ "text": text, "node": name }))),
        )),
    }
    let body = futures_util::stream::iter(events).then(|(delay, event)| async move {
        if !delay.is_zero() {
            actix_web::rt::time::sleep(delay).await;
        }
        event
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

async fn health(shared: web::Data<Shared>) -> HttpResponse {
    shared
        .health_checks
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    HttpResponse::Ok().json(json!({ "status": "ok", "node": shared.name }))
}

async fn list_calls(shared: web::Data<Shared>) -> HttpResponse {
    let calls = shared.state().calls.clone();
    HttpResponse::Ok().json(json!({ "count": calls.len(), "calls": calls }))
}

async fn clear_calls(shared: web::Data<Shared>) -> HttpResponse {
    let cleared = std::mem::take(&mut shared.state().calls).len();
    HttpResponse::Ok().json(json!({ "cleared": cleared }))
}

async fn get_behaviour(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.behaviour_json())
}

/// The body of `POST /_stub/behaviour`: absent fields keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BehaviourPatch {
    delay_ms: Option<u64>,
    // Absent keeps the status, `null` clears it.
    #[serde(default, deserialize_with = "present")]
    fail_status: Option<Option<u16>>,
    reply: Option<ReplyMode>,
    stream: Option<bool>,
    chunks: Option<usize>,
    chunk_delay_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    fail_after_chunks: Option<Option<usize>>,
    break_with: Option<StreamBreak>,
}

fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

async fn set_behaviour(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let patch: BehaviourPatch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return shared.error(StatusCode::BAD_REQUEST, "invalid_body", &e.to_string()),
    };
    if let Some(Some(status)) = patch.fail_status
        && check_fail_status(status).is_err()
    {
        return shared.error(
            StatusCode::BAD_REQUEST,
            "invalid_fail_status",
            "fail_status must be between 200 and 599",
        );
    }
    if patch.chunks == Some(0) {
        return shared.error(
            StatusCode::BAD_REQUEST,
            "invalid_chunks",
            "chunks must be at least 1",
        );
    }
    {
        let mut state = shared.state();
        let stream = &mut state.behaviour.stream;
        if let Some(enabled) = patch.stream {
            stream.enabled = enabled;
        }
        if let Some(chunks) = patch.chunks {
            stream.chunks = chunks;
        }
        if let Some(ms) = patch.chunk_delay_ms {
            stream.chunk_delay = Duration::from_millis(ms);
        }
        if let Some(after) = patch.fail_after_chunks {
            stream.fail_after_chunks = after;
        }
        if let Some(how) = patch.break_with {
            stream.break_with = how;
        }
        if let Some(delay_ms) = patch.delay_ms {
            state.behaviour.delay = Duration::from_millis(delay_ms);
        }
        if let Some(fail_status) = patch.fail_status {
            state.behaviour.fail_status = fail_status;
        }
        if let Some(reply) = patch.reply {
            state.behaviour.reply = reply;
        }
    }
    HttpResponse::Ok().json(shared.behaviour_json())
}

async fn not_found(shared: web::Data<Shared>) -> HttpResponse {
    shared.error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StubConfig {
        StubConfig::new(NodeId::new("NODA1").unwrap())
    }

    #[test]
    fn rejects_out_of_range_configuration() {
        for status in [0, 99, 100, 199, 600, 1000] {
            let err =
                StubNode::spawn_loopback(config().with_fail_status(Some(status))).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{status}");
        }
        let err = StubNode::spawn_loopback(config().with_workers(0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn spawns_and_stops_from_plain_code() {
        let stub = StubNode::spawn_loopback(config()).unwrap();
        assert_ne!(stub.addr().port(), 0);
        assert_eq!(
            stub.base_url(),
            format!("http://127.0.0.1:{}", stub.addr().port())
        );
        assert_eq!(stub.name().as_str(), "NODA1");
        assert!(stub.set_fail_status(Some(99)).is_err());
        stub.set_fail_status(Some(503)).unwrap();
        assert_eq!(stub.shared.state().behaviour.fail_status, Some(503));
        let addr = stub.addr();
        drop(stub);
        // Drop waited for the server thread, so the port is free again.
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn pieces_join_to_the_text_on_character_boundaries() {
        assert_eq!(pieces("abcdefgh", 4), ["ab", "cd", "ef", "gh"]);
        assert_eq!(pieces("abc", 10), ["a", "b", "c"]);
        assert_eq!(pieces("", 3), Vec::<String>::new());
        for (text, chunks) in [("héllo wörld ✓", 5), ("x", 1), ("日本語のテキスト", 3)]
        {
            let cut = pieces(text, chunks);
            assert!(cut.len() <= chunks, "{cut:?}");
            assert_eq!(cut.concat(), text);
        }
    }

    #[test]
    fn behaviour_patch_distinguishes_absent_from_null() {
        let patch: BehaviourPatch = serde_json::from_str(r#"{"delay_ms": 5}"#).unwrap();
        assert_eq!(patch.fail_status, None);
        let patch: BehaviourPatch = serde_json::from_str(r#"{"fail_status": null}"#).unwrap();
        assert_eq!(patch.fail_status, Some(None));
        let patch: BehaviourPatch =
            serde_json::from_str(r#"{"fail_status": 502, "reply": "not_json"}"#).unwrap();
        assert_eq!(patch.fail_status, Some(Some(502)));
        assert_eq!(patch.reply, Some(ReplyMode::NotJson));
        assert!(serde_json::from_str::<BehaviourPatch>(r#"{"delay": 5}"#).is_err());
    }
}
