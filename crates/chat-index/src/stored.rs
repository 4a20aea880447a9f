//! A chat and a message as the SQL backends store them, one column a field,
//! and their validation back into [`Chat`] and [`Message`], so that every
//! such backend refuses a damaged row alike.
//!
//! Reading the columns stays with each backend (each driver has its own row
//! type); what a value must be to be served is decided here.

use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Message, MessageId, NodeId, OperatorId, Role, Timestamp,
    ValidationError,
};

/// Why a stored row cannot be served, or a count cannot be stored. Each
/// backend keeps it, transparently, as a variant of its own error, which
/// surfaces as [`ChatIndexError::Backend`](crate::ChatIndexError::Backend).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoredError {
    /// A column holds a value its domain type refuses.
    #[error("a stored value of {table}.{column} is invalid")]
    Corrupt {
        /// The backend's table.
        table: &'static str,
        /// The column in it.
        column: &'static str,
        /// What the domain type refused.
        #[source]
        source: ValidationError,
    },
    /// A message count does not fit the other side: a negative stored count
    /// read back, or a count past `i64::MAX` to be written.
    #[error("a stored message count does not fit")]
    CountOverflow,
}

/// The error for `column` of `table`.
fn corrupt(
    table: &'static str,
    column: &'static str,
) -> impl FnOnce(ValidationError) -> StoredError {
    move |source| StoredError::Corrupt {
        table,
        column,
        source,
    }
}

/// A chat's row as stored, before validation: columns `id`, `title`,
/// `node`, `created_at`, `updated_at` and `message_count` (times in Unix
/// milliseconds).
pub(crate) struct ChatRow {
    pub(crate) id: String,
    pub(crate) title: Option<String>,
    pub(crate) node: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) message_count: i64,
}

impl ChatRow {
    /// The chat this row holds; errors name its columns in `table`.
    pub(crate) fn into_chat(self, table: &'static str) -> Result<Chat, StoredError> {
        let corrupt = |column| corrupt(table, column);
        Ok(Chat {
            id: ChatId::new(self.id).map_err(corrupt("id"))?,
            title: self
                .title
                .map(ChatTitle::new)
                .transpose()
                .map_err(corrupt("title"))?,
            node: NodeId::new(self.node).map_err(corrupt("node"))?,
            created_at: Timestamp::from_unix_millis(self.created_at)
                .map_err(corrupt("created_at"))?,
            updated_at: Timestamp::from_unix_millis(self.updated_at)
                .map_err(corrupt("updated_at"))?,
            message_count: u64::try_from(self.message_count)
                .map_err(|_| StoredError::CountOverflow)?,
        })
    }
}

/// A message's row as stored, before validation: columns `id`, `role`,
/// `text`, `ts` (Unix milliseconds), `operator_id` and `node`. Its chat is
/// the one the page was read for, so the row need not carry it.
pub(crate) struct MessageRow {
    pub(crate) id: String,
    pub(crate) role: String,
    pub(crate) text: String,
    pub(crate) ts: i64,
    pub(crate) operator_id: String,
    pub(crate) node: String,
}

impl MessageRow {
    /// The message this row holds, of chat `chat_id`; errors name its
    /// columns in `table`.
    pub(crate) fn into_message(
        self,
        table: &'static str,
        chat_id: ChatId,
    ) -> Result<Message, StoredError> {
        let corrupt = |column| corrupt(table, column);
        Ok(Message {
            id: MessageId::parse(&self.id).map_err(corrupt("id"))?,
            chat_id,
            role: Role::parse(&self.role).map_err(corrupt("role"))?,
            text: self.text,
            ts: Timestamp::from_unix_millis(self.ts).map_err(corrupt("ts"))?,
            operator_id: OperatorId::new(self.operator_id).map_err(corrupt("operator_id"))?,
            node: NodeId::new(self.node).map_err(corrupt("node"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn chat_row() -> ChatRow {
        ChatRow {
            id: "incident-42".to_owned(),
            title: Some("kept".to_owned()),
            node: "NODA1".to_owned(),
            created_at: 1_000,
            updated_at: 2_000,
            message_count: 2,
        }
    }

    #[test]
    fn a_valid_chat_row_reads_back() {
        let chat = chat_row().into_chat("chats").unwrap();
        assert_eq!(chat.id.as_str(), "incident-42");
        assert_eq!(chat.title.as_ref().map(ChatTitle::as_str), Some("kept"));
        assert_eq!(chat.updated_at.as_unix_millis(), 2_000);
        assert_eq!(chat.message_count, 2);
    }

    #[test]
    fn a_corrupt_value_names_its_table_and_column() {
        let row = ChatRow {
            node: "not a node".to_owned(),
            ..chat_row()
        };
        let err = row.into_chat("chat_index_chats").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a stored value of chat_index_chats.node is invalid"
        );
        assert!(
            err.source()
                .is_some_and(|e| e.downcast_ref::<ValidationError>().is_some()),
            "{err:?}"
        );

        let row = ChatRow {
            message_count: -1,
            ..chat_row()
        };
        assert!(matches!(
            row.into_chat("chats"),
            Err(StoredError::CountOverflow)
        ));

        let row = MessageRow {
            id: "0190a5d4-0000-7000-8000-000000000000".to_owned(),
            role: "robot".to_owned(),
            text: "hi".to_owned(),
            ts: 0,
            operator_id: "alice".to_owned(),
            node: "NODA1".to_owned(),
        };
        let chat = ChatId::new("incident-42").unwrap();
        let err = row.into_message("messages", chat).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a stored value of messages.role is invalid"
        );
    }
}
