//! `POST /api/chats/{chat_id}/send`: parse, run the send workflow, answer
//! (JSON, or server-sent events for `Accept: text/event-stream`).

use actix_web::http::StatusCode;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sofiia_core_domain::{ChatId, NodeId, OperatorText};
use sofiia_idempotency::actix::{key_from_request, replay};

use super::stream;
use crate::problem::ApiError;
use crate::request::{Operator, RequestMeta, RequestStart};
use crate::send::{Answer, SendAnswer, SendReceipt, SendRequest};
use crate::state::AppState;

/// A message to send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    /// What the operator says.
    #[schema(value_type = OperatorText)]
    text: String,
    /// The node to ask, for this send only: one of the configured nodes.
    /// Absent: the chat's node, else the default node.
    #[schema(value_type = Option<super::openapi::ConfiguredNode>)]
    node: Option<String>,
}

/// Sends an operator's message to a node and stores the exchange; safe to
/// retry with the same `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/chats/{chat_id}/send",
    operation_id = "sendMessage",
    tag = "chats",
    params(
        ("chat_id" = ChatId, Path, description = "The chat; created by its first send."),
        ("Idempotency-Key" = String, Header, description = "The send's key, 8 to 255 visible ASCII characters (or the same as a quoted structured-field string); a retry with it never runs the send twice.",
            pattern = "^[\\x21\\x23-\\x7E][\\x21-\\x7E]{7,254}$"),
    ),
    request_body = SendBody,
    responses((status = 200, description = "The operator's message and the agent's reply, as stored. A replay of an earlier answer carries `Idempotent-Replayed: true`. With `Accept: text/event-stream`, server-sent events instead: `delta` events (`{\"text\": \"<piece>\"}`) as the node writes the reply, then `done` (this JSON) or `error` (a problem document); errors known before the first event are problem+json answers as without the header.",
        content(
            (SendReceipt = "application/json"),
            (String = "text/event-stream", example = "event: delta\ndata: {\"text\":\"[NODA1] echo: \"}\n\nevent: delta\ndata: {\"text\":\"status?\"}\n\nevent: done\ndata: {\"chat_id\":\"incident-42\", ...}\n\n"),
        ),
        headers(
            ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier send with this key."),
            ("RateLimit-Policy" = String, description = "The quotas (IETF draft-ietf-httpapi-ratelimit-headers)."),
            ("RateLimit" = String, description = "What remains of the quotas."),
        ))),
    security(("bearer" = [])),
)]
pub(super) async fn send(
    req: HttpRequest,
    operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<SendBody>,
) -> Result<HttpResponse, ApiError> {
    let chat_id = ChatId::new(path.into_inner())?;
    let idempotency_key = key_from_request(&req)?;
    let body = body.into_inner();
    let text = OperatorText::new(body.text)?;
    let node = body.node.map(NodeId::new).transpose()?;
    let started = req
        .extensions()
        .get::<RequestStart>()
        .map_or_else(std::time::Instant::now, |s| s.0);
    let stream = stream::wanted(&req);
    let meta = RequestMeta::of(&req);
    let request_id = meta.request_id.clone();

    let answer = state
        .sender
        .send(SendRequest {
            chat_id,
            operator: operator.0,
            text,
            node,
            idempotency_key,
            meta,
            started,
            stream,
        })
        .await
        .map_err(|e| ApiError::from(&*e))?;
    match answer {
        SendAnswer::Done(answer) if stream && answer.response.status == 200 => {
            Ok(stream::whole(&req, &answer, state.sse_keep_alive))
        }
        SendAnswer::Done(answer) => Ok(json_answer(&answer)),
        SendAnswer::Streaming {
            stream: reply,
            replayed,
        } => stream::live(&req, reply, replayed, request_id, state.sse_keep_alive).await,
    }
}

/// A whole answer as JSON.
fn json_answer(answer: &Answer) -> HttpResponse {
    if answer.replayed {
        return replay(&answer.response);
    }
    let response = &answer.response;
    let mut res =
        HttpResponse::build(StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK));
    for (name, value) in &response.headers {
        res.insert_header((name.as_str(), value.as_str()));
    }
    if let Some(decision) = &answer.quotas {
        sofiia_ratelimit::actix::insert_headers(&mut res, decision);
    }
    res.body(response.body.clone())
}
