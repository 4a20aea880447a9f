//! `POST /api/chats/{chat_id}/send`: parse, run the send workflow, answer.

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sofiia_core_domain::{ChatId, NodeId, OperatorText};
use sofiia_idempotency::actix::{key_from_request, replay};

use crate::problem::ApiError;
use crate::request::{Operator, RequestMeta, RequestStart};
use crate::send::{SendAnswer, SendReceipt, SendRequest};
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
    responses((status = 200, description = "The operator's message and the agent's reply, as stored. A replay of an earlier answer carries `Idempotent-Replayed: true`.",
        body = SendReceipt,
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

    let answer = state
        .sender
        .send(SendRequest {
            chat_id,
            operator: operator.0,
            text,
            node,
            idempotency_key,
            meta: RequestMeta::of(&req),
            started,
        })
        .await?;
    Ok(match answer {
        SendAnswer::Sent { response, quotas } => {
            let mut res = HttpResponse::build(
                actix_web::http::StatusCode::from_u16(response.status)
                    .unwrap_or(actix_web::http::StatusCode::OK),
            );
            for (name, value) in &response.headers {
                res.insert_header((name.as_str(), value.as_str()));
            }
            if let Some(decision) = &quotas {
                sofiia_ratelimit::actix::insert_headers(&mut res, decision);
            }
            res.body(response.body)
        }
        SendAnswer::Replayed(response) => replay(&response),
    })
}
