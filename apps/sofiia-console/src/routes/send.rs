//! `POST /api/chats/{chat_id}/send`.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slog::o;
use sofiia_core_domain::{ChatId, NodeId, OperatorText};
use sofiia_idempotency::{IdempotencyKey, StoredResponse};

use crate::audit::RequestMeta;
use crate::auth::Operator;
use crate::problem::ApiError;
use crate::send::{self, SendAnswer, SendRequest};
use crate::state::AppState;
use crate::telemetry::flow_event;

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

    let result = send::run(
        // The Arc, not the state: the task shares it.
        state.clone().into_inner(),
        SendRequest {
            chat_id,
            operator: operator.0,
            text,
            node,
            idempotency_key,
            meta: RequestMeta::of(&req),
        },
    )
    .await;
    match result {
        Ok(SendAnswer::Sent { response, quotas }) => {
            flow_event(
                &state.logger,
                &req,
                "send",
                o!("outcome" => "ok", "status" => response.status),
            );
            let mut res = stored(&response);
            for (name, value) in send::rate_limit_headers(&quotas) {
                res.headers_mut().insert(name, value);
            }
            Ok(res)
        }
        Ok(SendAnswer::Replayed(response)) => {
            let mut res = stored(&response);
            res.headers_mut().insert(
                HeaderName::from_static("idempotent-replayed"),
                HeaderValue::from_static("true"),
            );
            Ok(res)
        }
        Err(error) => {
            flow_event(
                &state.logger,
                &req,
                "send",
                o!("outcome" => "error", "status" => error.status().as_u16(), "error" => error.slug()),
            );
            Err(error)
        }
    }
}

/// The stored answer as an HTTP response, byte for byte.
fn stored(response: &StoredResponse) -> HttpResponse {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let mut res = HttpResponse::build(status);
    for (name, value) in &response.headers {
        res.insert_header((name.as_str(), value.as_str()));
    }
    res.body(response.body.clone())
}
