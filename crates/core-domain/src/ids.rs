//! Validated identifiers.
//!
//! Each id is a newtype that can only hold a value that passed its rules, so
//! code that receives one never re-checks it. Parsing is strict: no trimming,
//! no case folding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{Field, ValidationError};

/// Checks `s` against `^[A-Za-z0-9][A-Za-z0-9<extra>]{0,max-1}$`.
fn check_name(s: &str, field: Field, max: usize, extra: &[u8]) -> Result<(), ValidationError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(ValidationError::Empty { field });
    };
    if bytes.len() > max {
        return Err(ValidationError::TooLong { field, max });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(ValidationError::Malformed {
            field,
            reason: "must start with an ASCII letter or digit",
        });
    }
    if !bytes[1..]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(b))
    {
        return Err(ValidationError::Malformed {
            field,
            reason: "contains a character outside the allowed set",
        });
    }
    Ok(())
}

macro_rules! name_id {
    (
        $(#[$meta:meta])*
        $name:ident, field = $field:expr, max = $max:expr, extra = $extra:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`.
            ///
            /// # Errors
            ///
            /// [`ValidationError`] naming the field when `value` breaks the rules above.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_name(&value, $field, $max, $extra)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the id, returning its string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
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

name_id!(
    /// A chat id: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
    ///
    /// ```
    /// use sofiia_core_domain::ChatId;
    /// assert!(ChatId::new("ops:incident-42").is_ok());
    /// assert!(ChatId::new("-starts-with-dash").is_err());
    /// ```
    ChatId, field = Field::ChatId, max = 128, extra = b"._:-"
);

name_id!(
    /// An operator id, decided by the operator's bearer token:
    /// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
    OperatorId, field = Field::OperatorId, max = 64, extra = b"._-"
);

name_id!(
    /// The name of an inference node, such as `NODA1`:
    /// `^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`. Names are case-sensitive.
    NodeId, field = Field::Node, max = 32, extra = b"_-"
);

/// A message id: a version 7 UUID in its lowercase hyphenated form.
///
/// Ids made by [`MessageId::generate`] in one process sort in the order they
/// were made, so the operator's message of a send sorts before the agent's
/// reply when both carry the same timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new id, greater than every id this process generated before.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the canonical lowercase hyphenated form.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] for any other form, including upper case, braces
    /// or a URN prefix, so one message has exactly one spelling.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let malformed = ValidationError::Malformed {
            field: Field::MessageId,
            reason: "must be a lowercase hyphenated UUID",
        };
        if s.len() != 36 {
            return Err(malformed);
        }
        let uuid = Uuid::try_parse(s).map_err(|_| malformed.clone())?;
        if uuid.hyphenated().to_string() != s {
            return Err(malformed);
        }
        Ok(Self(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0.hyphenated())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for MessageId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_id_rules() {
        for ok in ["a", "A", "0", "chat-1", "a.b_c:d-e", &"x".repeat(128)] {
            assert!(ChatId::new(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            "a\n",
            &"x".repeat(129),
            "a%20",
        ] {
            assert!(ChatId::new(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            ChatId::new(""),
            Err(ValidationError::Empty {
                field: Field::ChatId
            })
        );
        assert_eq!(
            ChatId::new("x".repeat(129)),
            Err(ValidationError::TooLong {
                field: Field::ChatId,
                max: 128
            })
        );
    }

    #[test]
    fn operator_and_node_rules() {
        assert!(OperatorId::new("alice").is_ok());
        assert!(OperatorId::new("alice:x").is_err());
        assert!(NodeId::new("NODA1").is_ok());
        assert!(NodeId::new("NODA.1").is_err());
        assert!(NodeId::new("x".repeat(33)).is_err());
    }

    #[test]
    fn ids_round_trip_through_serde_and_reject_bad_values() {
        let id: ChatId = serde_json::from_str("\"chat-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"chat-1\"");
        assert!(serde_json::from_str::<ChatId>("\"bad id\"").is_err());
    }

    #[test]
    fn message_ids_are_ordered_by_creation_and_strictly_parsed() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ids.windows(2).all(|w| w[0].to_string() < w[1].to_string()),
            "string order must match id order"
        );
        let text = ids[0].to_string();
        assert_eq!(MessageId::parse(&text).unwrap(), ids[0]);
        assert!(MessageId::parse(&text.to_uppercase()).is_err());
        assert!(MessageId::parse(&format!("{{{text}}}")).is_err());
        assert!(MessageId::parse(&text.replace('-', "")).is_err());
        assert!(MessageId::parse("not-a-uuid").is_err());
    }
}
