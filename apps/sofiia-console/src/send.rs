//! The send path: one operator message to a node and its reply into the chat.
//!
//! Order of operations (see `docs/architecture.md`):
//! 1. look the chat up to choose the node (the send's `node`, else the
//!    chat's, else the default); an unknown node stops here;
//! 2. the infer call, with the operator message's id and the request's
//!    idempotency key and request id;
//! 3. both messages, and the chat if this is its first send, stored in one
//!    atomic step.
//!
//! Nothing is stored unless the node answered, so a failed send leaves no
//! trace in the chat index.

use serde::Serialize;
use sofiia_chat_index::ChatIndexError;
use sofiia_core_domain::{
    ChatId, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, OperatorText, Role,
};
use sofiia_idempotency::IdempotencyKey;
use sofiia_router_client::{InferRequest, RouterError};

use crate::problem::ApiError;
use crate::state::AppState;

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
    /// The client's idempotency key, passed on to the node.
    pub idempotency_key: IdempotencyKey,
    /// The request's id, passed on to the node.
    pub request_id: String,
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

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No reply from the node (or the node is unknown).
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The chat index failed.
    #[error(transparent)]
    Store(#[from] ChatIndexError),
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Router(e) => e.into(),
            SendError::Store(e) => e.into(),
        }
    }
}

impl SendError {
    /// A short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Router(e) => e.kind(),
            SendError::Store(_) => "store",
        }
    }
}

/// Runs one send; see the module docs for the order of operations.
///
/// # Errors
///
/// [`SendError`] saying which step failed; nothing is stored on error.
pub async fn execute(state: &AppState, req: SendRequest) -> Result<SendReceipt, SendError> {
    let chat = state.chat_index.get_chat(&req.chat_id).await?;
    let node = req
        .node
        .or_else(|| chat.map(|c| c.node))
        .unwrap_or_else(|| state.router.default_node().clone());
    if !state.router.knows(&node) {
        return Err(RouterError::UnknownNode { node }.into());
    }

    let message = Message {
        id: MessageId::generate(),
        chat_id: req.chat_id.clone(),
        role: Role::Operator,
        text: req.text.as_str().to_owned(),
        ts: state.clock.now(),
        operator_id: req.operator.clone(),
        node: node.clone(),
    };
    let reply = state
        .router
        .infer(&InferRequest {
            node: node.clone(),
            chat_id: req.chat_id.clone(),
            message_id: message.id,
            operator_id: req.operator.clone(),
            text: req.text,
            idempotency_key: req.idempotency_key.as_str().to_owned(),
            request_id: req.request_id,
        })
        .await?;
    let reply = Message {
        id: MessageId::generate(),
        chat_id: req.chat_id.clone(),
        role: Role::Agent,
        text: reply.text,
        ts: state.clock.now(),
        operator_id: req.operator,
        node: node.clone(),
    };

    let new_chat = NewChat {
        id: req.chat_id.clone(),
        title: None,
        node: node.clone(),
        created_at: message.ts,
    };
    let exchange = Exchange {
        operator: message,
        agent: reply,
    };
    state
        .chat_index
        .append_exchange(new_chat, &exchange)
        .await?;
    Ok(SendReceipt {
        chat_id: req.chat_id,
        node,
        message: exchange.operator,
        reply: exchange.agent,
    })
}
