//! Domain types shared by every sofiia-console crate.
//!
//! - validated ids: [`ChatId`], [`MessageId`], [`OperatorId`], [`NodeId`];
//! - the chat model: [`Chat`], [`NewChat`], [`Message`], [`Exchange`], [`Role`],
//!   with validated [`OperatorText`] and [`ChatTitle`];
//! - time: [`Timestamp`] (milliseconds, RFC 3339 UTC) and the injected
//!   [`Clock`] with [`SystemClock`] and [`ManualClock`];
//! - keyset pagination: [`PageLimit`], [`PageRequest`], [`Page`] and the
//!   opaque, versioned, strictly decoded [`Cursor`] over `(ts, id)`;
//! - [`ValidationError`], the error of every constructor above.
//!
//! Values that come from outside the process are validated once, at the edge,
//! by constructing these types; everything past the edge takes the types and
//! need not check again.
//!
//! ```
//! use sofiia_core_domain::{ChatId, Clock, Cursor, ManualClock, PageLimit};
//!
//! let chat = ChatId::new("incident-42")?;
//! let clock = ManualClock::default();
//! let limit = PageLimit::parse("20")?;
//! let cursor = Cursor::new(clock.now(), chat.as_str()).encode("chats");
//! assert_eq!(Cursor::decode(&cursor, "chats")?.id(), "incident-42");
//! assert_eq!(limit.get(), 20);
//! # Ok::<(), sofiia_core_domain::ValidationError>(())
//! ```

mod error;
mod ids;
mod model;
mod page;
mod time;

pub use crate::error::{Field, ValidationError, error_chain};
pub use crate::ids::{ChatId, MessageId, NodeId, OperatorId};
pub use crate::model::{Chat, ChatTitle, Exchange, Message, NewChat, OperatorText, Role};
pub use crate::page::{Cursor, Page, PageLimit, PageRequest};
pub use crate::time::{Clock, DynClock, ManualClock, SystemClock, Timestamp};
