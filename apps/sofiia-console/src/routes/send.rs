//! `POST /api/chats/{chat_id}/send`: parse, run the send workflow, answer.

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sofiia_core_domain::{ChatId, NodeId, OperatorText};
use sofiia_idempotency::actix::{key_from_request, replay};

use crate::problem::ApiError;
use crate::request::{Operator, RequestMeta, RequestStart};
use crate::send::{SendAnswer, SendRequest};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendBody {
    text: String,
    node: Option<String>,
}

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
