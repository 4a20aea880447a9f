//! Chats and messages.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Field, ValidationError};
use crate::ids::{ChatId, MessageId, NodeId, OperatorId};
use crate::page::Cursor;
use crate::time::Timestamp;

fn check_text(
    s: &str,
    field: Field,
    max_chars: usize,
    allow_newlines: bool,
) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    // Cheap upper bound first: a char is at most four bytes.
    if s.len() > max_chars && s.chars().count() > max_chars {
        return Err(ValidationError::TooLong {
            field,
            max: max_chars,
        });
    }
    let bad = |c: char| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t'));
    if s.chars().any(bad) {
        return Err(ValidationError::Malformed {
            field,
            reason: "contains a control character",
        });
    }
    Ok(())
}

macro_rules! text_type {
    ($(#[$meta:meta])* $name:ident, field = $field:expr, max = $max:expr, newlines = $nl:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in characters.
            pub const MAX_CHARS: usize = $max;

            /// Validates `value`.
            ///
            /// # Errors
            ///
            /// [`ValidationError`] when `value` is empty, too long or holds a
            /// forbidden control character.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_text(&value, $field, $max, $nl)?;
                Ok(Self(value))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the value, returning its string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            // Never print the content: message text must not reach logs.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} chars)"), self.0.chars().count())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_type!(
    /// The text an operator sends: 1..=16000 characters, no control
    /// characters other than newline, carriage return and tab.
    OperatorText, field = Field::Text, max = 16_000, newlines = true
);

text_type!(
    /// A chat's title: 1..=200 characters on one line.
    ChatTitle, field = Field::Title, max = 200, newlines = false
);

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A human operator.
    Operator,
    /// The agent, through an inference node.
    Agent,
}

impl Role {
    /// `"operator"` or `"agent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }

    /// Parses [`Role::as_str`]'s form.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] for any other string.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "operator" => Ok(Role::Operator),
            "agent" => Ok(Role::Agent),
            _ => Err(ValidationError::Malformed {
                field: Field::Role,
                reason: "must be `operator` or `agent`",
            }),
        }
    }
}

/// A conversation between operators and the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Chat {
    /// The chat's id.
    pub id: ChatId,
    /// An optional human-readable title.
    pub title: Option<ChatTitle>,
    /// The node that answers sends which name none.
    pub node: NodeId,
    /// When the chat was created.
    pub created_at: Timestamp,
    /// When the chat last changed: creation, or its latest message.
    pub updated_at: Timestamp,
    /// How many messages the chat holds.
    pub message_count: u64,
}

impl Chat {
    /// The chat's position in the list of chats, most recently active first.
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.updated_at, self.id.as_str())
    }
}

/// What is needed to create a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChat {
    /// The chat's id.
    pub id: ChatId,
    /// An optional title.
    pub title: Option<ChatTitle>,
    /// The chat's default node.
    pub node: NodeId,
    /// The creation time; also the chat's first `updated_at`.
    pub created_at: Timestamp,
}

impl NewChat {
    /// The chat this creates, before any message.
    pub fn into_chat(self) -> Chat {
        Chat {
            id: self.id,
            title: self.title,
            node: self.node,
            created_at: self.created_at,
            updated_at: self.created_at,
            message_count: 0,
        }
    }
}

/// One message of a chat.
///
/// Its `Debug` form leaves the text out, so a message can be logged safely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// The message's id.
    pub id: MessageId,
    /// The chat it belongs to.
    pub chat_id: ChatId,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub text: String,
    /// When it was written.
    pub ts: Timestamp,
    /// The operator who sent it, or whose send it answers.
    pub operator_id: OperatorId,
    /// The node the send went to.
    pub node: NodeId,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("chat_id", &self.chat_id)
            .field("role", &self.role)
            .field("text_chars", &self.text.chars().count())
            .field("ts", &self.ts)
            .field("operator_id", &self.operator_id)
            .field("node", &self.node)
            .finish()
    }
}

impl Message {
    /// The message's position in its chat, newest first.
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.ts, self.id.to_string())
    }
}

/// One completed send: the operator's message and the agent's reply, which a
/// chat index stores together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The operator's message.
    pub operator: Message,
    /// The agent's reply.
    pub agent: Message,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_text_rules() {
        assert!(OperatorText::new("hello\nworld\t!").is_ok());
        assert!(OperatorText::new("").is_err());
        assert!(OperatorText::new("bell\u{7}").is_err());
        assert!(OperatorText::new("й".repeat(16_000)).is_ok());
        assert!(OperatorText::new("й".repeat(16_001)).is_err());
    }

    #[test]
    fn debug_never_shows_text() {
        let t = OperatorText::new("secret plan").unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn titles_are_one_line() {
        assert!(ChatTitle::new("Incident 42").is_ok());
        assert!(ChatTitle::new("two\nlines").is_err());
        assert!(ChatTitle::new("x".repeat(201)).is_err());
    }
}
