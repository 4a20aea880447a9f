//! `POST /api/chats/{chat_id}/send`.

use std::time::Instant;

use actix_web::http::header::HeaderName;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slog::o;
use sofiia_core_domain::{ChatId, NodeId, OperatorText};
use sofiia_idempotency::IdempotencyKey;

use crate::auth::Operator;
use crate::problem::ApiError;
use crate::send::{SendRequest, execute};
use crate::state::AppState;
use crate::telemetry::{RequestId, flow_event};

/// The idempotency key header.
pub(super) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendBody {
    text: String,
    node: Option<String>,
}

fn idempotency_key(req: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let mut values = req.headers().get_all(&IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Err(ApiError::bad_request(
            "idempotency-key-missing",
            "the Idempotency-Key header is required on sends",
        ));
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "idempotency-key-invalid",
            "send exactly one Idempotency-Key header",
        ));
    }
    let value = value.to_str().map_err(|_| {
        ApiError::bad_request(
            "idempotency-key-invalid",
            "the Idempotency-Key header must be visible ASCII",
        )
    })?;
    IdempotencyKey::parse_header(value)
        .map_err(|e| ApiError::bad_request("idempotency-key-invalid", e.to_string()))
}

pub(super) async fn send(
    req: HttpRequest,
    operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<SendBody>,
) -> Result<HttpResponse, ApiError> {
    let chat_id = ChatId::new(path.into_inner())?;
    let idempotency_key = idempotency_key(&req)?;
    let body = body.into_inner();
    let text = OperatorText::new(body.text)?;
    let node = body.node.map(NodeId::new).transpose()?;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();

    let started = Instant::now();
    let result = execute(
        &state,
        SendRequest {
            chat_id,
            operator: operator.0,
            text,
            node,
            idempotency_key,
            request_id,
        },
    )
    .await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(receipt) => {
            flow_event(
                &state.logger,
                &req,
                "send",
                o!("outcome" => "ok", "node" => receipt.node.to_string(), "status" => 200, "latency_ms" => latency_ms),
            );
            Ok(HttpResponse::Ok().json(receipt))
        }
        Err(e) => {
            let error = ApiError::from(e);
            flow_event(
                &state.logger,
                &req,
                "send",
                o!("outcome" => "error", "status" => error.status().as_u16(), "error" => error.slug(), "latency_ms" => latency_ms),
            );
            Err(error)
        }
    }
}
