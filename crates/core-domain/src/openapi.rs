//! OpenAPI schemas (feature `openapi`) of the types the HTTP API exchanges,
//! stating the same rules their constructors enforce, so that a client (or
//! a fuzzer) generating values from the document produces valid ones.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{RefOr, schema};
use utoipa::{PartialSchema, ToSchema};

use crate::ids::{ChatId, MessageId, NodeId, OperatorId};
use crate::model::{ChatTitle, OperatorText};
use crate::time::Timestamp;

/// A string schema.
fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(schema::SchemaType::new(Type::String))
        .description(Some(description))
}

macro_rules! schema_of {
    ($ty:ty, $build:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object($build.build()))
            }
        }
        impl ToSchema for $ty {}
    };
}

/// `^[A-Za-z0-9][A-Za-z0-9<extra>]{0,max-1}$`.
fn name(description: &str, extra: &str, max: usize) -> ObjectBuilder {
    string(description)
        .pattern(Some(format!(
            "^[A-Za-z0-9][A-Za-z0-9{extra}]{{0,{}}}$",
            max - 1
        )))
        .min_length(Some(1))
        .max_length(Some(max))
}

schema_of!(ChatId, name("A chat id.", "._:-", ChatId::MAX_LEN));
schema_of!(
    OperatorId,
    name(
        "An operator id, decided by the operator's token.",
        "._-",
        OperatorId::MAX_LEN
    )
);
schema_of!(
    NodeId,
    name("An inference node, such as NODA1.", "_-", NodeId::MAX_LEN)
);
schema_of!(
    MessageId,
    string("A message id: a version 7 UUID, lowercase and hyphenated.")
        .format(Some(SchemaFormat::Custom("uuid".to_owned())))
        .pattern(Some(
            "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
        ))
);
schema_of!(
    Timestamp,
    string("A time: RFC 3339 in UTC with milliseconds, such as 2026-01-01T00:00:00.000Z.")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
);
schema_of!(
    OperatorText,
    string("What an operator sends: no control characters but newline, carriage return and tab.")
        .min_length(Some(1))
        .max_length(Some(OperatorText::MAX_CHARS))
        .pattern(Some("^[^\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F-\\x9F]+$"))
);
schema_of!(
    ChatTitle,
    string("A chat's title, on one line: no control characters.")
        .min_length(Some(1))
        .max_length(Some(ChatTitle::MAX_CHARS))
        .pattern(Some("^[^\\x00-\\x1F\\x7F-\\x9F]+$"))
);
