use std::error::Error as StdError;
use std::fmt;

/// An error and its causes, joined by `: `, for log lines and messages:
/// `"cannot open store: disk I/O error"`.
///
/// ```
/// let e = std::io::Error::other("disk full");
/// assert_eq!(sofiia_core_domain::error_chain(&e), "disk full");
/// ```
pub fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The input that failed validation.
///
/// Callers use it to name the offending field in an error response; the
/// variants are stable, their [`Display`](fmt::Display) form is the field name
/// an HTTP client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// A chat id.
    ChatId,
    /// A message id.
    MessageId,
    /// An operator id.
    OperatorId,
    /// A node name.
    Node,
    /// A chat title.
    Title,
    /// The text of an operator message.
    Text,
    /// A page size.
    Limit,
    /// A pagination cursor.
    Cursor,
    /// A point in time.
    Timestamp,
    /// A message's role.
    Role,
}

impl Field {
    /// The field's name as it appears in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::ChatId => "chat_id",
            Field::MessageId => "message_id",
            Field::OperatorId => "operator_id",
            Field::Node => "node",
            Field::Title => "title",
            Field::Text => "text",
            Field::Limit => "limit",
            Field::Cursor => "cursor",
            Field::Timestamp => "timestamp",
            Field::Role => "role",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value from outside the process that does not satisfy the domain's rules.
///
/// Every constructor of a validated type in this crate returns this error; it
/// never carries the rejected value itself, so it is safe to log and to show to
/// the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The value is empty where at least one character is required.
    #[error("{field} must not be empty")]
    Empty {
        /// The offending field.
        field: Field,
    },
    /// The value is longer than allowed.
    #[error("{field} is longer than {max} characters")]
    TooLong {
        /// The offending field.
        field: Field,
        /// The largest accepted length, in characters.
        max: usize,
    },
    /// The value does not have the required form.
    #[error("{field} {reason}")]
    Malformed {
        /// The offending field.
        field: Field,
        /// What is wrong, phrased to follow the field name.
        reason: &'static str,
    },
    /// A number outside its accepted range.
    #[error("{field} must be between {min} and {max}")]
    OutOfRange {
        /// The offending field.
        field: Field,
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
}

impl ValidationError {
    /// The field that failed validation.
    pub fn field(&self) -> Field {
        match self {
            ValidationError::Empty { field }
            | ValidationError::TooLong { field, .. }
            | ValidationError::Malformed { field, .. }
            | ValidationError::OutOfRange { field, .. } => *field,
        }
    }
}
