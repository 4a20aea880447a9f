//! Rules every backend applies to [`ChatIndexStore::import_chat`] alike, so
//! that a caller's bug is rejected the same way whichever store runs.
//!
//! [`ChatIndexStore::import_chat`]: crate::ChatIndexStore::import_chat

use std::collections::HashSet;

use sofiia_core_domain::{Chat, Message};

use crate::ChatIndexError;

/// Why an import was refused. Each is a bug in the caller (or a target that
/// holds other data under the same ids), not bad user input, so it surfaces
/// as [`ChatIndexError::Backend`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// A message of the batch names another chat than the one imported.
    #[error("a message of the batch belongs to another chat than the one imported")]
    ChatMismatch,
    /// One message id appears twice in the batch.
    #[error("a message id appears twice in the batch")]
    DuplicateId,
    /// The chat's `updated_at` lies before its `created_at`.
    #[error("the imported chat's updated_at lies before its created_at")]
    UpdatedBeforeCreated,
    /// A message id of the batch is stored, but in another chat: message
    /// ids are unique store-wide, and skipping it would lose the message.
    #[error("a message id of the batch is already stored in another chat")]
    IdInOtherChat,
}

impl From<ImportError> for ChatIndexError {
    fn from(err: ImportError) -> Self {
        ChatIndexError::Backend {
            source: Box::new(err),
        }
    }
}

/// Checks what can be checked without the store.
pub(crate) fn check(chat: &Chat, messages: &[Message]) -> Result<(), ImportError> {
    if chat.updated_at < chat.created_at {
        return Err(ImportError::UpdatedBeforeCreated);
    }
    if messages.iter().any(|m| m.chat_id != chat.id) {
        return Err(ImportError::ChatMismatch);
    }
    let mut seen = HashSet::with_capacity(messages.len());
    if !messages.iter().all(|m| seen.insert(m.id)) {
        return Err(ImportError::DuplicateId);
    }
    Ok(())
}
