//! The chat index: chats and their messages.
//!
//! [`ChatIndexStore`] is the storage trait the console talks to. It keeps
//! chats (ordered by last activity) and their messages (newest first), both
//! read page by page with keyset cursors over `(ts, id)`, so walking every
//! page of a list that is not changing returns each item exactly once, however
//! many items share one timestamp.
//!
//! Backends:
//! - [`MemoryChatIndex`]: in-process, for tests and single-instance demos;
//! - [`SqliteChatIndex`] (feature `sqlite`, on by default): a SQLite file in
//!   WAL mode, the console's default.
//!
//! Every backend passes the same behavioural suite, [`testing`] (feature
//! `testing`), which an embedder can run against a backend of their own with
//! [`chat_index_store_tests!`].
//!
//! ```
//! use std::sync::Arc;
//! use sofiia_chat_index::{ChatIndexStore, DynChatIndexStore, MemoryChatIndex};
//! use sofiia_core_domain::{ChatId, Clock, ManualClock, NewChat, NodeId, PageRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<DynChatIndexStore> = Arc::new(MemoryChatIndex::new());
//! let clock = ManualClock::default();
//! store
//!     .create_chat(NewChat {
//!         id: ChatId::new("incident-42")?,
//!         title: None,
//!         node: NodeId::new("NODA2")?,
//!         created_at: clock.now(),
//!     })
//!     .await?;
//! let page = store.list_chats(&PageRequest::default()).await?;
//! assert_eq!(page.items.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): [`SqliteChatIndex`] and [`SqliteOptions`];
//! - `testing`: the [`testing`] module and [`chat_index_store_tests!`]; it
//!   brings in tokio's multi-threaded runtime.
//!
// Where a feature is off, its items do not exist; point their links at the
// section that says how to enable them instead of leaving them broken.
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteChatIndex`]: #features\n[`SqliteOptions`]: #features"
)]
#![cfg_attr(
    not(any(test, feature = "testing")),
    doc = "[`testing`]: #features\n[`chat_index_store_tests!`]: #features"
)]

use std::error::Error as StdError;
use std::fmt::Debug;

use async_trait::async_trait;
use sofiia_core_domain::{Chat, ChatId, Exchange, Message, NewChat, Page, PageRequest};

mod exchange;
mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::memory::MemoryChatIndex;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteChatIndex, SqliteOptions};

/// What can go wrong in a chat index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatIndexError {
    /// A chat with this id already exists.
    #[error("chat {id} already exists")]
    Conflict {
        /// The id that is taken.
        id: ChatId,
    },
    /// No chat with this id exists.
    #[error("chat {id} does not exist")]
    NotFound {
        /// The id that was looked up.
        id: ChatId,
    },
    /// The backend cannot be reached or is overloaded; retrying later may work.
    #[error("the chat index is unavailable")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The backend failed in a way a retry will not fix.
    #[error("the chat index failed")]
    Backend {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// Result of a chat index operation.
pub type Result<T, E = ChatIndexError> = std::result::Result<T, E>;

/// Storage for chats and messages.
///
/// Orders:
/// - chats: most recently active first, by `(updated_at, id)` descending;
/// - messages of a chat: newest first, by `(ts, id)` descending;
///
/// where ids compare as strings, byte by byte (no collation, no case
/// folding), so that every backend breaks timestamp ties the same way.
///
/// A [`PageRequest::after`] cursor names the last item of the previous page
/// (see [`Chat::cursor`] and [`Message::cursor`]); the next page holds the
/// items strictly after it in the list's order. A cursor is a position, not
/// a reference: an item removed or moved since does not invalidate it, and
/// one that names no item at all starts right after where such an item would
/// sort.
#[async_trait]
pub trait ChatIndexStore: Debug + Send + Sync + 'static {
    /// Creates a chat with no messages.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Conflict`] if the id exists, or a backend error.
    async fn create_chat(&self, chat: NewChat) -> Result<Chat>;

    /// The chat with this id, if any.
    ///
    /// # Errors
    ///
    /// A backend error.
    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>>;

    /// Stores a completed send: both messages of `exchange`, the chat's
    /// message count and its `updated_at` (the later of its current value and
    /// the agent message's time), all or nothing.
    ///
    /// The chat is `exchange.operator.chat_id`. If it does not exist it is
    /// created from `new_chat` first, in the same atomic step; if it does,
    /// `new_chat` is ignored. Appending an exchange whose operator message id
    /// is already stored changes nothing and returns the chat as it is, so a
    /// retried write never duplicates a send.
    ///
    /// Message ids are unique across the whole store, not per chat.
    ///
    /// # Errors
    ///
    /// On any error nothing was stored.
    ///
    /// - [`ChatIndexError::Backend`] for an exchange that can only come from
    ///   a bug in the caller: its two messages name different chats,
    ///   `new_chat` names another chat, the roles are not operator then
    ///   agent, both messages carry one id, the operator message id is stored
    ///   in another chat, or the agent message id is stored while the
    ///   operator's is not;
    /// - [`ChatIndexError::Unavailable`] or [`ChatIndexError::Backend`] when
    ///   the backend fails.
    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> Result<Chat>;

    /// A page of chats, most recently active first.
    ///
    /// # Errors
    ///
    /// A backend error.
    async fn list_chats(&self, page: &PageRequest) -> Result<Page<Chat>>;

    /// A page of a chat's messages, newest first.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::NotFound`] if the chat does not exist, or a backend error.
    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> Result<Page<Message>>;

    /// Checks that the backend answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Unavailable`] or [`ChatIndexError::Backend`].
    async fn check(&self) -> Result<()>;
}

/// A chat index as a trait object; the console holds an `Arc<DynChatIndexStore>`.
pub type DynChatIndexStore = dyn ChatIndexStore;
