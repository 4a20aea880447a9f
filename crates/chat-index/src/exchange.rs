//! Rules every backend applies to [`ChatIndexStore::append_exchange`] alike,
//! so that a caller's bug is rejected the same way whichever store runs.
//!
//! [`ChatIndexStore::append_exchange`]: crate::ChatIndexStore::append_exchange

use sofiia_core_domain::{Exchange, NewChat, Role};

use crate::ChatIndexError;

/// Why an exchange was refused. Each is a bug in the caller, not bad user
/// input, so it surfaces as [`ChatIndexError::Backend`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The two messages name different chats.
    #[error("the operator and agent messages of an exchange belong to different chats")]
    ChatMismatch,
    /// `new_chat` would create a chat other than the one the messages name.
    #[error("new_chat names a different chat than the exchange")]
    NewChatMismatch,
    /// The operator message is not `Role::Operator` or the reply not `Role::Agent`.
    #[error("the messages of an exchange have the wrong roles")]
    Roles,
    /// Both messages carry one id.
    #[error("the operator and agent messages of an exchange share one id")]
    SameId,
    /// The operator message id is stored, but in another chat; replaying it
    /// there would silently answer for the wrong chat.
    #[error("the operator message id is already stored in another chat")]
    OperatorIdInOtherChat,
    /// The operator message is new but the reply's id is taken.
    #[error("the agent message id is already stored")]
    AgentIdTaken,
}

impl From<ExchangeError> for ChatIndexError {
    fn from(err: ExchangeError) -> Self {
        ChatIndexError::Backend {
            source: Box::new(err),
        }
    }
}

/// Checks what can be checked without the store.
pub(crate) fn check(new_chat: &NewChat, exchange: &Exchange) -> Result<(), ExchangeError> {
    let (operator, agent) = (&exchange.operator, &exchange.agent);
    if operator.chat_id != agent.chat_id {
        return Err(ExchangeError::ChatMismatch);
    }
    if new_chat.id != operator.chat_id {
        return Err(ExchangeError::NewChatMismatch);
    }
    if operator.role != Role::Operator || agent.role != Role::Agent {
        return Err(ExchangeError::Roles);
    }
    if operator.id == agent.id {
        return Err(ExchangeError::SameId);
    }
    Ok(())
}
