//! Domain types shared by every sofiia-console crate.
//!
//! - validated ids: [`ChatId`], [`MessageId`], [`OperatorId`], [`NodeId`];
//! - the chat model: [`Chat`], [`NewChat`], [`Message`], [`Exchange`], [`Role`],
//!   with validated [`OperatorText`] and [`ChatTitle`];
//! - time: [`Timestamp`] (milliseconds, RFC 3339 UTC) and the injected
//!   [`Clock`] with [`SystemClock`] and [`ManualClock`];
//! - keyset pagination: [`PageLimit`], [`PageRequest`], [`Page`] and the
//!   [`Cursor`] over `(ts, id)`, opaque, versioned, HMAC-signed with
//!   [`CursorKeys`] and strictly decoded;
//! - [`ValidationError`], the error of every constructor above.
//!
//! Values that come from outside the process are validated once, at the edge,
//! by constructing these types; everything past the edge takes the types and
//! need not check again.
//!
//! ```
//! use sofiia_core_domain::{ChatId, Clock, Cursor, CursorKeys, ManualClock, PageLimit};
//!
//! let chat = ChatId::new("incident-42")?;
//! let clock = ManualClock::default();
//! let limit = PageLimit::parse("20")?;
//! let keys = CursorKeys::new(["a secret of at least thirty-two bytes"]).expect("a long key");
//! let cursor = keys.encode(&Cursor::new(clock.now(), chat.as_str()), "chats");
//! assert_eq!(keys.decode(&cursor, "chats")?.id(), "incident-42");
//! assert_eq!(limit.get(), 20);
//! # Ok::<(), sofiia_core_domain::ValidationError>(())
//! ```

mod error;
mod ids;
mod model;
#[cfg(feature = "openapi")]
mod openapi;
mod page;
mod time;

pub use crate::error::{Field, ValidationError, error_chain};
pub use crate::ids::{ChatId, MessageId, NodeId, OperatorId};
pub use crate::model::{Chat, ChatTitle, Exchange, Message, NewChat, OperatorText, Role};
pub use crate::page::{Cursor, CursorKeyError, CursorKeys, Page, PageLimit, PageRequest};
pub use crate::time::{Clock, DynClock, ManualClock, SystemClock, Timestamp};
