//! The send path: one operator message to a node and its reply into the chat,
//! at most once per idempotency key, within the quotas, on the record.
//!
//! Order of operations (`docs/architecture.md` explains each step):
//! 1. **Reserve the idempotency key** (scoped by operator, fingerprinted by
//!    route, chat and body). A completed key replays its stored answer, a key
//!    in flight answers 409, a key used for another request 422, an
//!    unreachable store 503; none of these spends quota or reaches a node.
//! 2. **Charge the quotas** of the chat and of the operator, all or nothing.
//!    A refusal (429) or an unreachable limiter (503, unless configured to fail
//!    open) releases the key.
//! 3. **Choose the node**: the send's, else the chat's, else the default. An
//!    unknown node (400) releases the key.
//! 4. **Infer**. A failure (502/504) releases the key, so a retry runs again.
//! 5. **Store** both messages, and the chat on its first send, atomically,
//!    retried twice if the chat index is unavailable (a repeated append of
//!    the same exchange is a no-op). A failure releases the key.
//! 6. **Audit** the send. If the event cannot be written the client gets
//!    503, but the key still completes with the real answer (step 7), so a
//!    retry replays it instead of sending twice.
//! 7. **Complete the key** with the answer, then answer.
//!
//! Steps 1 to 7 run in a task of their own: a client that disconnects
//! mid-send cannot cancel them half-way, so a key is never left in flight
//! by a send that was stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use serde::Serialize;
use slog::{o, warn};
use sofiia_audit_store::Outcome;
use sofiia_core_domain::{
    ChatId, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, OperatorText, Role,
};
use sofiia_idempotency::{Begin, Fingerprint, IdempotencyKey, ScopedKey, StoredResponse};
use sofiia_ratelimit::{Charge, Decision, PolicyState};
use sofiia_router_client::{InferRequest, RouterError};

use crate::audit::{self, Event, RequestMeta};
use crate::config::RateLimitFailMode;
use crate::problem::{ApiError, error_chain};
use crate::state::AppState;

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
}

/// The answer to a successful send.
#[derive(Debug, Clone, Serialize)]
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

/// What to answer.
#[derive(Debug)]
pub enum SendAnswer {
    /// A new send succeeded: the stored answer and the quotas after it.
    Sent {
        /// The answer, exactly as stored for replays.
        response: StoredResponse,
        /// Each quota's state, for the `RateLimit` fields.
        quotas: Vec<PolicyState>,
    },
    /// The key had completed: the stored answer again.
    Replayed(StoredResponse),
}

/// The canonical request a key is bound to: re-serialised from the parsed
/// body, so whitespace or key order in the client's JSON does not matter.
fn fingerprint(req: &SendRequest) -> Fingerprint {
    #[derive(Serialize)]
    struct Canonical<'a> {
        node: Option<&'a str>,
        text: &'a str,
    }
    let body = serde_json::to_vec(&Canonical {
        node: req.node.as_ref().map(NodeId::as_str),
        text: req.text.as_str(),
    })
    .unwrap_or_default();
    Fingerprint::builder()
        .part(b"POST")
        .part(SEND_ROUTE.as_bytes())
        .part(req.chat_id.as_str().as_bytes())
        .part(&body)
        .finish()
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

fn log(
    state: &AppState,
    req: &SendRequest,
    flow: &'static str,
    kv: slog::OwnedKV<impl slog::SendSyncRefUnwindSafeKV + 'static>,
) {
    let logger = state.logger.new(o!(
        "flow" => flow,
        "request_id" => req.meta.request_id.clone(),
        "operator" => req.operator.to_string(),
        "chat_id" => req.chat_id.to_string(),
    ));
    slog::info!(logger.new(kv), "{}", flow);
}

/// Adds the IETF `RateLimit-Policy` and `RateLimit` fields for `quotas`.
pub fn rate_limit_headers(quotas: &[PolicyState]) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    if quotas.is_empty() {
        return headers;
    }
    for (name, value) in [
        ("ratelimit-policy", sofiia_ratelimit::policy_header(quotas)),
        ("ratelimit", sofiia_ratelimit::ratelimit_header(quotas)),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.push((HeaderName::from_static(name), value));
        }
    }
    headers
}

/// Runs one send in a task of its own; see the module docs.
///
/// # Errors
///
/// The problem to answer; every store is as it was unless the error says
/// otherwise (see step 6).
pub async fn run(state: Arc<AppState>, req: SendRequest) -> Result<SendAnswer, ApiError> {
    let task = actix_web::rt::spawn(async move { execute(&state, req).await });
    match task.await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::internal("the send task panicked")),
    }
}

async fn execute(state: &AppState, req: SendRequest) -> Result<SendAnswer, ApiError> {
    let started = Instant::now();
    let key = ScopedKey::new(req.operator.as_str(), req.idempotency_key.clone());
    let actor = req.operator.to_string();
    let target = req.chat_id.to_string();

    // 1. The key.
    let guard = match state.idempotency.begin(&key, &fingerprint(&req)).await {
        Ok(Begin::Execute(guard)) => {
            count_idempotency("new");
            guard
        }
        Ok(Begin::Replay(stored)) => {
            count_idempotency("replay");
            log(
                state,
                &req,
                "replay",
                o!("status" => stored.status, "latency_ms" => started.elapsed().as_millis() as u64),
            );
            audit::record(
                state,
                &req.meta,
                Event::new(&actor, "chat.send.replay", &target, Outcome::Ok)
                    .status(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK)),
            )
            .await?;
            return Ok(SendAnswer::Replayed(stored));
        }
        Ok(Begin::InFlight { retry_after }) => {
            count_idempotency("conflict");
            audit::record(
                state,
                &req.meta,
                Event::new(&actor, "chat.send.conflict", &target, Outcome::Denied)
                    .status(StatusCode::CONFLICT),
            )
            .await?;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
                "a send with this Idempotency-Key is still running; retry after Retry-After to get its answer",
            )
            .with_retry_after(retry_after));
        }
        Ok(Begin::Mismatch) => {
            count_idempotency("mismatch");
            audit::record(
                state,
                &req.meta,
                Event::new(&actor, "chat.send.mismatch", &target, Outcome::Denied)
                    .status(StatusCode::UNPROCESSABLE_ENTITY),
            )
            .await?;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different request (another chat or body); use a new key",
            ));
        }
        Err(e) => {
            count_idempotency("error");
            return Err(store_unavailable("idempotency store").with_source(e));
        }
    };

    // 2. The quotas. From here every early return must release the key.
    let charges = [
        Charge {
            policy: "chat",
            key: req.chat_id.to_string(),
            quota: state.quotas.chat,
        },
        Charge {
            policy: "operator",
            key: req.operator.to_string(),
            quota: state.quotas.operator,
        },
    ];
    let quotas = match state.rate_limiter.check(&charges).await {
        Ok(decision) => {
            count_decision(&decision);
            if !decision.allowed {
                guard.release().await;
                let scopes: Vec<&str> = decision
                    .policies
                    .iter()
                    .filter(|p| !p.allowed)
                    .map(|p| p.policy)
                    .collect();
                let retry_after = decision.retry_after();
                log(
                    state,
                    &req,
                    "ratelimit",
                    o!("scope" => scopes.join(","), "status" => 429, "retry_after_ms" => retry_after.as_millis() as u64),
                );
                audit::record(
                    state,
                    &req.meta,
                    Event::new(&actor, "chat.send.rate_limited", &target, Outcome::Denied)
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .detail("scope", scopes.join(",")),
                )
                .await?;
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!(
                        "the {} quota is spent; retry after Retry-After seconds",
                        scopes.join(" and ")
                    ),
                )
                .with_extension("scope", scopes.first().copied().unwrap_or("chat"))
                .with_extension("scopes", scopes.clone())
                .with_retry_after(retry_after);
                for (name, value) in rate_limit_headers(&decision.policies) {
                    error = error.with_header(name, value);
                }
                return Err(error);
            }
            decision.policies
        }
        Err(e) => match state.quotas.fail_mode {
            RateLimitFailMode::Closed => {
                guard.release().await;
                return Err(store_unavailable("rate limiter").with_source(e));
            }
            RateLimitFailMode::Open => {
                warn!(
                    state.logger, "rate limiter unavailable; letting the send through (fail mode open)";
                    "flow" => "ratelimit",
                    "request_id" => req.meta.request_id.clone(),
                    "error" => error_chain(&e),
                );
                Vec::new()
            }
        },
    };

    // 3. The node.
    let chat = match state.chat_index.get_chat(&req.chat_id).await {
        Ok(chat) => chat,
        Err(e) => {
            guard.release().await;
            return Err(e.into());
        }
    };
    let chat_created = chat.is_none();
    let node = req
        .node
        .clone()
        .or_else(|| chat.map(|c| c.node))
        .unwrap_or_else(|| state.router.default_node().clone());
    if !state.router.knows(&node) {
        guard.release().await;
        return Err(RouterError::UnknownNode { node }.into());
    }

    // 4. Infer.
    let message = Message {
        id: MessageId::generate(),
        chat_id: req.chat_id.clone(),
        role: Role::Operator,
        text: req.text.as_str().to_owned(),
        ts: state.clock.now(),
        operator_id: req.operator.clone(),
        node: node.clone(),
    };
    let infer = state
        .router
        .infer(&InferRequest {
            node: node.clone(),
            chat_id: req.chat_id.clone(),
            message_id: message.id,
            operator_id: req.operator.clone(),
            text: req.text.clone(),
            idempotency_key: req.idempotency_key.as_str().to_owned(),
            request_id: req.meta.request_id.clone().unwrap_or_default(),
        })
        .await;
    let reply = match infer {
        Ok(reply) => reply,
        Err(e) => {
            guard.release().await;
            let error = ApiError::from(e);
            audit::record(
                state,
                &req.meta,
                Event::new(&actor, "chat.send", &target, Outcome::Error)
                    .status(error.status())
                    .node(node.as_str())
                    .detail("error", error.slug()),
            )
            .await?;
            return Err(error);
        }
    };

    // 5. Store.
    let reply = Message {
        id: MessageId::generate(),
        chat_id: req.chat_id.clone(),
        role: Role::Agent,
        text: reply.text,
        ts: state.clock.now(),
        operator_id: req.operator.clone(),
        node: node.clone(),
    };
    let exchange = Exchange {
        operator: message,
        agent: reply,
    };
    let new_chat = NewChat {
        id: req.chat_id.clone(),
        title: None,
        node: node.clone(),
        created_at: exchange.operator.ts,
    };
    if let Err(e) = store_exchange(state, new_chat, &exchange).await {
        guard.release().await;
        let error = ApiError::from(e);
        audit::record(
            state,
            &req.meta,
            Event::new(&actor, "chat.send", &target, Outcome::Error)
                .status(error.status())
                .node(node.as_str())
                .detail("error", error.slug()),
        )
        .await?;
        return Err(error);
    }

    let receipt = SendReceipt {
        chat_id: req.chat_id.clone(),
        node: node.clone(),
        message: exchange.operator,
        reply: exchange.agent,
    };
    let response = StoredResponse {
        status: 200,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: serde_json::to_vec(&receipt).unwrap_or_default(),
    };

    // 6. Audit, then 7. complete whatever the audit's fate: the send happened.
    let audited = audit::record(
        state,
        &req.meta,
        Event::new(&actor, "chat.send", &target, Outcome::Ok)
            .status(StatusCode::OK)
            .node(node.as_str())
            .detail("message_id", receipt.message.id.to_string())
            .detail("chat_created", chat_created),
    )
    .await;
    if let Err(e) = guard.complete(response.clone()).await {
        warn!(
            state.logger, "the send succeeded but its idempotency key could not be completed; a retry after the lease expires would run again";
            "flow" => "send",
            "request_id" => req.meta.request_id.clone(),
            "error" => error_chain(&e),
        );
    }
    audited?;
    Ok(SendAnswer::Sent { response, quotas })
}

/// Delays before retrying a write that failed as unavailable.
const STORE_RETRIES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];

/// Stores the exchange, retrying while the chat index is unavailable. A
/// write that timed out may have been applied; appending the same exchange
/// again is a no-op, so retrying is safe, and it saves a send whose node
/// already answered from being reported failed (and run again by the retry).
async fn store_exchange(
    state: &AppState,
    new_chat: NewChat,
    exchange: &Exchange,
) -> Result<(), sofiia_chat_index::ChatIndexError> {
    let mut delays = STORE_RETRIES.iter();
    loop {
        match state
            .chat_index
            .append_exchange(new_chat.clone(), exchange)
            .await
        {
            Ok(_) => return Ok(()),
            Err(sofiia_chat_index::ChatIndexError::Unavailable { source }) => {
                let Some(delay) = delays.next() else {
                    return Err(sofiia_chat_index::ChatIndexError::Unavailable { source });
                };
                tokio::time::sleep(*delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn store_unavailable(what: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "Service unavailable",
        format!("the {what} is unavailable, so nothing was sent; retry later"),
    )
    .with_retry_after(Duration::from_secs(1))
}
