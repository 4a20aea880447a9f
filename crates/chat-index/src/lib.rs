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
//!   WAL mode, the console's default;
//! - [`RedisChatIndex`] (feature `redis`, on by default): one index in
//!   Redis shared by any number of console instances, so that they behave
//!   as one console (data layout, complexity, Cluster notes and failure
//!   modes on its page);
//! - [`PostgresChatIndex`] (feature `postgres`): one index in a PostgreSQL
//!   database shared by any number of console instances, in tables of its
//!   own beside other stores' (schema, concurrency and failure modes on its
//!   page).
//!
//! [`ChatIndexStore::import_chat`] copies a chat and its messages from one
//! store to another, batch by batch, idempotently: a migration (such as
//! `sofiia-console migrate-chat-index --from sqlite --to redis`) can be run
//! again, or resumed after a crash, and ends with the same result.
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
//! - `redis` (default): [`RedisChatIndex`], on a `deadpool-redis` pool;
//! - `postgres`: [`PostgresChatIndex`], on a [`PostgresPool`]
//!   (`deadpool-postgres`, `tokio-postgres`) that other stores may share;
//! - `testing`: the [`testing`] module and [`chat_index_store_tests!`]; it
//!   brings in tokio's multi-threaded runtime.
//!
// Where a feature is off, its items do not exist; point their links at the
// section that says how to enable them instead of leaving them broken.
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteChatIndex`]: #features\n[`SqliteOptions`]: #features"
)]
#![cfg_attr(not(feature = "redis"), doc = "[`RedisChatIndex`]: #features")]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "[`PostgresChatIndex`]: #features\n[`PostgresPool`]: #features"
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
mod import;
mod memory;
pub mod migrate;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::memory::MemoryChatIndex;
#[cfg(feature = "postgres")]
pub use crate::postgres::PostgresChatIndex;
#[cfg(feature = "redis")]
pub use crate::redis::RedisChatIndex;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteChatIndex, SqliteOptions};
#[cfg(feature = "postgres")]
/// The shared PostgreSQL pool the PostgreSQL backend is built on, and how
/// it is sized.
pub use sofiia_postgres_support::{PoolOptions, PostgresPool};
#[cfg(feature = "redis")]
/// The shared Redis connection the Redis backend is built on.
pub use sofiia_redis_support::RedisConnection;
#[cfg(feature = "sqlite")]
pub use sofiia_sqlite_support::{Database, DatabaseOptions, Durability};

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

    /// Stores a chat and a batch of its messages as another store holds
    /// them: the step a migration between backends repeats, batch by batch,
    /// for every chat. All or nothing, and safe to repeat.
    ///
    /// - The chat is `chat.id`. If it does not exist it is created with the
    ///   `title`, `node`, `created_at` and `updated_at` of `chat`; if it
    ///   does, its title, node and creation time are kept and its
    ///   `updated_at` becomes the later of its own and `chat.updated_at`.
    /// - Every message whose id is not stored yet is stored exactly as given
    ///   (id, time, role, text, operator, node); one whose id is already
    ///   stored in this chat is left as it is (and not compared).
    /// - `chat.message_count` is not copied: the chat's count grows by
    ///   exactly the number of messages this call stored. So importing a
    ///   batch twice, or resuming a migration that stopped half-way through
    ///   a chat, can never count a message twice; once every message of a
    ///   chat has been imported, its count is the source's (for a source
    ///   whose count matches its messages, which every backend here keeps).
    ///
    /// Importing any set of batches of one chat, in any order, any number of
    /// times, therefore leaves the same result as importing each message
    /// once. Nothing else is checked: an import may hold any mix of roles
    /// and times.
    ///
    /// # Errors
    ///
    /// On any error nothing was stored.
    ///
    /// - [`ChatIndexError::Backend`] for a batch that can only come from a
    ///   bug in the caller, or a target holding other data under the same
    ///   ids: a message naming another chat, one id twice in the batch,
    ///   `chat.updated_at` before `chat.created_at`, or a message id stored
    ///   in another chat;
    /// - [`ChatIndexError::Unavailable`] or [`ChatIndexError::Backend`] when
    ///   the backend fails.
    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> Result<Imported>;

    /// Checks that the backend answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Unavailable`] or [`ChatIndexError::Backend`].
    async fn check(&self) -> Result<()>;
}

/// A chat index as a trait object; the console holds an `Arc<DynChatIndexStore>`.
pub type DynChatIndexStore = dyn ChatIndexStore;

/// What one [`ChatIndexStore::import_chat`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Imported {
    /// The chat as it is stored after the import.
    pub chat: Chat,
    /// Whether this import created the chat.
    pub created: bool,
    /// How many messages of the batch this import stored.
    pub inserted: u64,
    /// How many messages of the batch were already stored in the chat and
    /// were left as they were.
    pub present: u64,
}

impl Imported {
    /// What a backend reports after an import (the struct is
    /// `#[non_exhaustive]`, so backends outside this crate build it here).
    pub fn new(chat: Chat, created: bool, inserted: u64, present: u64) -> Self {
        Self {
            chat,
            created,
            inserted,
            present,
        }
    }
}
