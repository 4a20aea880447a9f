//! The baseline: a bare actix-web proxy that forwards a send to the node.
//!
//! It answers `POST /api/chats/{chat_id}/send` the way the console's send
//! path would if it kept only its transport: parse the same JSON body, build
//! the same node protocol request (`chat_id`, a fresh `message_id`,
//! `operator_id`, `node`, `text`, with `X-Request-Id` and
//! `Idempotency-Key`) and call the node through the very
//! [`HttpRouter`] the console uses, so the HTTP client, its pool, its
//! timeouts and its headers are the console's by construction, not a copy
//! that could drift. No authentication, idempotency, rate limits, chat
//! index, audit, request middleware, logs or metrics.
//!
//! It runs as a child process of the harness (`sofiia-bench serve-baseline`)
//! with as many workers as the console, so both sides are separate
//! processes competing for the same cores in the same way.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::json;
use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId, OperatorText};
use sofiia_router_client::{HttpRouter, InferRequest, NodeRouter as _, NodesConfig};

/// The idempotency key header the console reads.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The body limit of the console's extractors (64 KiB).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The operator the baseline names in node requests: it has no tokens.
const OPERATOR: &str = "bench";

/// The console's send body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: String,
    node: Option<String>,
}

struct Proxy {
    router: HttpRouter,
    operator: OperatorId,
}

fn bad_request(reason: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "error": reason }))
}

async fn send(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<SendBody>,
    proxy: web::Data<Proxy>,
) -> HttpResponse {
    let Ok(chat_id) = ChatId::new(path.into_inner()) else {
        return bad_request("chat id");
    };
    let Some(key) = req
        .headers()
        .get(&IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return bad_request("idempotency key");
    };
    let body = body.into_inner();
    let Ok(text) = OperatorText::new(body.text) else {
        return bad_request("text");
    };
    let node = match body.node.map(NodeId::new).transpose() {
        Ok(Some(node)) => node,
        Ok(None) => proxy.router.default_node().clone(),
        Err(_) => return bad_request("node"),
    };
    let infer = InferRequest {
        node: node.clone(),
        chat_id: chat_id.clone(),
        message_id: MessageId::generate(),
        operator_id: proxy.operator.clone(),
        text,
        idempotency_key: key.to_owned(),
        // The console's request middleware makes the same kind of id.
        request_id: uuid::Uuid::new_v4().simple().to_string(),
    };
    match proxy.router.infer(&infer).await {
        Ok(reply) => HttpResponse::Ok().json(json!({
            "chat_id": chat_id,
            "node": node,
            "reply": { "text": reply.text },
        })),
        Err(e) => HttpResponse::BadGateway().json(json!({ "error": e.kind() })),
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Serves the baseline on `bind` until killed, forwarding to the node at
/// `node_url` (named `node`) with infer calls limited to `timeout`; prints
/// the listening line first.
///
/// # Errors
///
/// When the node URL is invalid, the client cannot be built or the address
/// cannot be bound.
pub(crate) fn serve(
    bind: SocketAddr,
    node: &str,
    node_url: &str,
    timeout: Duration,
    workers: usize,
) -> io::Result<()> {
    let nodes = NodesConfig::parse(&format!("{node}={node_url}")).map_err(io::Error::other)?;
    let router = HttpRouter::new(nodes, timeout).map_err(io::Error::other)?;
    let operator = OperatorId::new(OPERATOR).map_err(io::Error::other)?;
    let proxy = web::Data::new(Proxy { router, operator });
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(proxy.clone())
                .app_data(web::JsonConfig::default().limit(MAX_BODY_BYTES))
                .route("/api/chats/{chat_id}/send", web::post().to(send))
                .route("/api/health", web::get().to(health))
        })
        .workers(workers.max(1))
        .listen(listener)?
        .run();
        let line = json!({ "msg": "listening", "addr": addr.to_string(), "node": node });
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        drop(stdout);
        server.await
    })
}
