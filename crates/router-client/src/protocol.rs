//! The node protocol's wire format, shared by [`HttpRouter`](crate::HttpRouter)
//! and the `sofiia-router-stub` node so the two cannot drift apart.
//!
//! ```
//! use sofiia_router_client::protocol::{InferBody, InferResponse};
//!
//! let body: InferBody = serde_json::from_str(
//!     r#"{"chat_id":"incident-42","message_id":"0190a5b8-7c3e-7d4f-8a1b-2c3d4e5f6a7b",
//!         "operator_id":"alice","node":"NODA1","text":"status?"}"#,
//! )?;
//! assert_eq!(body.node.as_str(), "NODA1");
//!
//! // A node may add fields; a client reads only `text`.
//! let reply: InferResponse = serde_json::from_str(r#"{"text":"all green","node":"NODA1"}"#)?;
//! assert_eq!(reply.text, "all green");
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use sofiia_core_domain::{ChatId, MessageId, NodeId, OperatorId, OperatorText};

use crate::InferRequest;

/// Path of the infer call, appended to a node's base URL.
pub const INFER_PATH: &str = "/v1/infer";

/// Path of the health check, appended to a node's base URL.
pub const HEALTH_PATH: &str = "/v1/health";

/// Header carrying the console's request id (lower case, as HTTP/2 wants it).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Header carrying the send's idempotency key, stable across retries.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The largest reply body a client reads, in bytes: far above any real reply,
/// low enough that a broken node cannot make the console buffer without bound.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The body of `POST /v1/infer`.
///
/// Deserializing validates every field with the domain's rules, so a node
/// that accepts a body has well-formed ids and text. Unknown fields are
/// ignored, so the console may add fields without breaking older nodes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferBody {
    /// The chat the send belongs to.
    pub chat_id: ChatId,
    /// The id of the operator's message.
    pub message_id: MessageId,
    /// The operator who sent it.
    pub operator_id: OperatorId,
    /// The node the console meant to ask.
    pub node: NodeId,
    /// The operator's text.
    pub text: OperatorText,
}

impl From<&InferRequest> for InferBody {
    fn from(req: &InferRequest) -> Self {
        InferBody {
            chat_id: req.chat_id.clone(),
            message_id: req.message_id,
            operator_id: req.operator_id.clone(),
            node: req.node.clone(),
            text: req.text.clone(),
        }
    }
}

impl fmt::Debug for InferBody {
    // `OperatorText`'s Debug already hides the text; spelled out so a change
    // of field type cannot start logging it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferBody")
            .field("chat_id", &self.chat_id)
            .field("message_id", &self.message_id)
            .field("operator_id", &self.operator_id)
            .field("node", &self.node)
            .field("text_chars", &self.text.as_str().chars().count())
            .finish()
    }
}

/// A node's `200` answer to `POST /v1/infer`.
///
/// Only `text` is part of the protocol; `node` is what `sofiia-router-stub`
/// adds to make misrouting visible. Clients must read `text` alone and ignore
/// everything else, whatever its type.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The agent's reply.
    pub text: String,
    /// The answering node's name, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl fmt::Debug for InferResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferResponse")
            .field("text_chars", &self.text.chars().count())
            .field("node", &self.node)
            .finish()
    }
}
