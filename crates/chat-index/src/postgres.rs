//! The PostgreSQL backend.

use std::borrow::Cow;
use std::collections::HashSet;
use std::string::FromUtf8Error;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};
use futures_util::future;
use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Cursor, Exchange, Message, NewChat, Page, PageRequest, Timestamp,
};
use sofiia_postgres_support::{PoolOptions, PooledClient, PostgresPool, Schema};
use tokio_postgres::{IsolationLevel, Row};

use crate::exchange::{self, ExchangeError};
use crate::import::{self, ImportError};
use crate::stored::{ChatRow, MessageRow, StoredError};
use crate::{ChatIndexError, ChatIndexStore, Imported, Result};

/// The schema, one entry per version, recorded in the database's
/// `sofiia_schema` table under `chat_index`. Entries are never edited once
/// released, only appended.
static SCHEMA: Schema = Schema {
    store: "chat_index",
    migrations: &[r#"CREATE TABLE chat_index_chats (
        id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        title         TEXT,
        node          TEXT   NOT NULL,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        message_count BIGINT NOT NULL DEFAULT 0 CHECK (message_count >= 0),
        CHECK (updated_at >= created_at)
    );
    CREATE INDEX chat_index_chats_by_activity
        ON chat_index_chats (updated_at DESC, id DESC);

    -- `text` is the UTF-8 of the message: a PostgreSQL TEXT cannot hold
    -- the NUL character, which a reply may.
    CREATE TABLE chat_index_messages (
        id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        chat_id     TEXT COLLATE "C" NOT NULL REFERENCES chat_index_chats (id),
        role        TEXT   NOT NULL CHECK (role IN ('operator', 'agent')),
        text        BYTEA  NOT NULL,
        ts          BIGINT NOT NULL,
        operator_id TEXT   NOT NULL,
        node        TEXT   NOT NULL
    );
    CREATE INDEX chat_index_messages_by_chat_time
        ON chat_index_messages (chat_id, ts DESC, id DESC);"#],
};

// The list queries fetch `limit + 1` rows (see `Page::from_overfetch`). Ids
// are `COLLATE "C"` columns: they compare byte by byte, as Rust's `str`
// does, whatever the database's default collation, so every backend agrees
// on the order of ids; a parameter compared with them takes their
// collation. Each list query is one range of its index, read in index
// order, with no sort (see the plan test below).
const LIST_CHATS_FIRST: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chat_index_chats
    ORDER BY updated_at DESC, id DESC
    LIMIT $1";
const LIST_CHATS_AFTER: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chat_index_chats
    WHERE (updated_at, id) < ($1, $2)
    ORDER BY updated_at DESC, id DESC
    LIMIT $3";
const LIST_MESSAGES_FIRST: &str = "SELECT id, role, text, ts, operator_id, node
    FROM chat_index_messages
    WHERE chat_id = $1
    ORDER BY ts DESC, id DESC
    LIMIT $2";
const LIST_MESSAGES_AFTER: &str = "SELECT id, role, text, ts, operator_id, node
    FROM chat_index_messages
    WHERE chat_id = $1 AND (ts, id) < ($2, $3)
    ORDER BY ts DESC, id DESC
    LIMIT $4";
const SELECT_CHAT: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chat_index_chats
    WHERE id = $1";
const CHAT_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM chat_index_chats WHERE id = $1)";
const MESSAGE_CHAT: &str = "SELECT chat_id FROM chat_index_messages WHERE id = $1";
const ANY_IN_OTHER_CHAT: &str = "SELECT EXISTS (
    SELECT 1 FROM chat_index_messages WHERE id = ANY ($1) AND chat_id <> $2
)";
/// A chat is always created empty; the messages stored with it add to its
/// count in [`TOUCH_CHAT`].
const INSERT_CHAT: &str =
    "INSERT INTO chat_index_chats (id, title, node, created_at, updated_at, message_count)
    VALUES ($1, $2, $3, $4, $5, 0)
    ON CONFLICT (id) DO NOTHING";
/// Stores the messages whose id is free, in the order given, and returns
/// their ids. A conflicting id held by a transaction still in progress
/// waits for it: if it commits, its message is what is stored.
const INSERT_MESSAGES: &str =
    "INSERT INTO chat_index_messages (id, chat_id, role, text, ts, operator_id, node)
    SELECT m.id, $1, m.role, m.text, m.ts, m.operator_id, m.node
    FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::text[], $7::text[])
        AS m (id, role, text, ts, operator_id, node)
    ON CONFLICT (id) DO NOTHING
    RETURNING id";
/// Row-locks the chat, so concurrent writers of one chat each add to the
/// count the one before them left.
const TOUCH_CHAT: &str = "UPDATE chat_index_chats
    SET updated_at = GREATEST(updated_at, $2), message_count = message_count + $3
    WHERE id = $1
    RETURNING id, title, node, created_at, updated_at, message_count";

/// A chat index in a PostgreSQL database, shared by any number of console
/// instances: a chat written through one is listed, paged and read through
/// every other at once, with the same order and cursors as the other
/// backends.
///
/// # Schema
///
/// Two tables, prefixed so that they can share a database (and a
/// [`PostgresPool`]) with other stores' tables; the schema version is the
/// `chat_index` row of `sofiia_schema`, brought up to date by
/// [`open`](Self::open).
///
/// | table | key | holds |
/// | --- | --- | --- |
/// | `chat_index_chats` | `id` | `title`, `node`, `created_at`, `updated_at`, `message_count` |
/// | `chat_index_messages` | `id` | `chat_id`, `role`, `text` (`BYTEA`, UTF-8), `ts`, `operator_id`, `node` |
///
/// Times are `BIGINT` Unix milliseconds, so they round-trip exactly. Ids
/// are `TEXT COLLATE "C"`: they compare byte by byte whatever the
/// database's collation, as the [`ChatIndexStore`] order wants. Message ids
/// are the primary key of their table, so they are unique across the whole
/// store. A message's text is stored as its UTF-8 bytes, since a
/// PostgreSQL `TEXT` cannot hold the NUL character.
///
/// Every page is one range of an index that matches its order exactly,
/// `chat_index_chats_by_activity (updated_at DESC, id DESC)` and
/// `chat_index_messages_by_chat_time (chat_id, ts DESC, id DESC)`, entered
/// with a row-value comparison such as `(ts, id) < ($2, $3)`: O(log n +
/// page) at any depth, with no sort.
///
/// # Atomicity and concurrency
///
/// An append or an import is one `READ COMMITTED` transaction (whatever the
/// server's default isolation): it creates the chat if missing
/// (`INSERT ... ON CONFLICT DO NOTHING`), inserts the messages whose ids
/// are free, and adds to the chat's count with one `UPDATE`, which locks the
/// chat's row until the commit. So concurrent writes to one chat, from any
/// number of instances, queue on that row and each adds to the count the
/// one before it left; none is lost, and none is counted twice. A write
/// racing a copy of itself (the same message ids) waits for it and then
/// finds its messages stored: the retry answers as a replay. A refused
/// write is rolled back whole. Writers take their locks in one order (the
/// chat, then messages by id, then the chat's row), so overlapping writes
/// wait for each other rather than deadlock.
///
/// A page of messages and the check that the chat exists are sent together
/// (one round trip), the check first; chats are never deleted, so a page is
/// what the chat held at one moment after it was seen to exist.
///
/// # Durability and failures
///
/// A write returns once PostgreSQL has committed it. A [`PostgresPool`]'s
/// sessions run with `synchronous_commit = on` (unless its URL says
/// otherwise), so that commit is on the server's disk: an exchange the
/// console answered survives a crash of the server.
///
/// A server that is down, restarting, unreachable, out of connections,
/// memory or disk, read-only (a failover in progress), or a statement that
/// was cancelled or lost a deadlock gives [`ChatIndexError::Unavailable`]
/// (the classification every PostgreSQL backend shares,
/// [`Error::is_transient`](sofiia_postgres_support::Error::is_transient));
/// the pool opens connections again by itself when the server comes back. A
/// broken constraint, a schema edited by hand or a stored value that does
/// not parse is [`ChatIndexError::Backend`]. A write whose answer was lost
/// may have been committed; retrying it with the same message ids is safe,
/// as appends and imports are idempotent.
///
/// Statements have no time limit of their own: to bound how long a call may
/// wait for a slow server or a lock, set `statement_timeout` or
/// `lock_timeout` for the console's role, or in the URL
/// (`?options=-c%20statement_timeout%3D5s`); a statement they cancel is
/// [`ChatIndexError::Unavailable`].
///
/// The database should use the UTF-8 encoding (the default of `initdb` in
/// a UTF-8 locale), or titles it cannot represent are refused.
///
/// ```no_run
/// use sofiia_chat_index::{ChatIndexStore, PoolOptions, PostgresChatIndex, PostgresPool};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PostgresPool::open("postgres://sofiia@127.0.0.1:5432/sofiia", PoolOptions::default())?;
/// let store = PostgresChatIndex::open(pool).await?;
/// store.check().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresChatIndex {
    pool: PostgresPool,
}

impl PostgresChatIndex {
    /// The store's schema, which [`open`](Self::open) brings to its newest
    /// version: for tools that migrate ahead of a rollout
    /// ([`PostgresPool::migrate`](sofiia_postgres_support::PostgresPool::migrate)).
    pub fn schema() -> &'static Schema {
        &SCHEMA
    }
    /// The index in the database of `pool`, which other stores may share:
    /// creates this store's tables or brings them up to date (once, however
    /// many instances start at the same time).
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Unavailable`] if the database cannot be reached;
    /// [`ChatIndexError::Backend`] if it holds a newer schema of this store
    /// than this build knows, or the migration fails otherwise.
    pub async fn open(pool: PostgresPool) -> Result<Self> {
        pool.migrate(&SCHEMA).await.map_err(PgIndexError::from)?;
        Ok(Self { pool })
    }

    /// Opens a pool of its own on the database at `url` (see
    /// [`PostgresPool::open`]), then as [`open`](Self::open).
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Backend`] if `url` is invalid; otherwise as for
    /// [`open`](Self::open).
    pub async fn connect(url: &str, options: PoolOptions) -> Result<Self> {
        let pool = PostgresPool::open(url, options).map_err(PgIndexError::from)?;
        Self::open(pool).await
    }

    /// The pool this store uses, for other stores to share.
    pub fn pool(&self) -> &PostgresPool {
        &self.pool
    }

    /// Closes the pool: calls in flight finish, later calls fail with
    /// [`ChatIndexError::Unavailable`]. This closes it for every store
    /// sharing it. It is for a shutdown that must refuse new work while
    /// other holders of the store still exist.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<PooledClient, PgIndexError> {
        Ok(self.pool.get().await?)
    }

    async fn try_create(&self, chat: &Chat) -> Result<bool, PgIndexError> {
        let client = self.client().await?;
        insert_chat(&client, chat).await
    }

    async fn try_get(&self, id: &ChatId) -> Result<Option<Chat>, PgIndexError> {
        let client = self.client().await?;
        select_chat(&client, id).await
    }

    async fn try_list_chats(&self, page: &PageRequest) -> Result<Vec<Chat>, PgIndexError> {
        let client = self.client().await?;
        let fetch = overfetch(page);
        let rows = match &page.after {
            None => {
                let stmt = client.prepare_cached(LIST_CHATS_FIRST).await?;
                client.query(&stmt, &[&fetch]).await?
            }
            Some(c) => {
                let stmt = client.prepare_cached(LIST_CHATS_AFTER).await?;
                client
                    .query(&stmt, &[&ts(c), &cursor_id(c).as_ref(), &fetch])
                    .await?
            }
        };
        rows.iter().map(read_chat).collect()
    }

    /// The page, or `None` if the chat does not exist.
    async fn try_list_messages(
        &self,
        chat: &ChatId,
        page: &PageRequest,
    ) -> Result<Option<Vec<Message>>, PgIndexError> {
        let client = self.client().await?;
        let fetch = overfetch(page);
        let (exists, rows) = match &page.after {
            None => {
                let (exists, list) = future::join(
                    client.prepare_cached(CHAT_EXISTS),
                    client.prepare_cached(LIST_MESSAGES_FIRST),
                )
                .await;
                let (exists, list) = (exists?, list?);
                // Sent in this order, on one connection, in one round trip.
                future::join(
                    client.query_one(&exists, &[&chat.as_str()]),
                    client.query(&list, &[&chat.as_str(), &fetch]),
                )
                .await
            }
            Some(c) => {
                let (exists, list) = future::join(
                    client.prepare_cached(CHAT_EXISTS),
                    client.prepare_cached(LIST_MESSAGES_AFTER),
                )
                .await;
                let (exists, list) = (exists?, list?);
                let id = cursor_id(c);
                future::join(
                    client.query_one(&exists, &[&chat.as_str()]),
                    client.query(&list, &[&chat.as_str(), &ts(c), &id.as_ref(), &fetch]),
                )
                .await
            }
        };
        if !exists?.try_get::<_, bool>(0)? {
            return Ok(None);
        }
        rows?
            .iter()
            .map(|row| read_message(row, chat))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn try_append(
        &self,
        new_chat: NewChat,
        exchange: &Exchange,
    ) -> Result<Chat, PgIndexError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let chat_id = &exchange.operator.chat_id;
        insert_chat(&tx, &new_chat.into_chat()).await?;
        let stored = insert_messages(&tx, chat_id, &[&exchange.operator, &exchange.agent]).await?;

        let operator_id = exchange.operator.id.to_string();
        if !stored.contains(&operator_id) {
            // Stored before, or by a call racing this one, which the insert
            // waited for: its row is visible to the next statement.
            let stmt = tx.prepare_cached(MESSAGE_CHAT).await?;
            let owner: Option<String> = match tx.query_opt(&stmt, &[&operator_id]).await? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            return match owner {
                Some(owner) if owner == chat_id.as_str() => {
                    // A replay: the chat as it is, and nothing written.
                    let chat =
                        select_chat(&tx, chat_id)
                            .await?
                            .ok_or(PgIndexError::Inconsistent(
                                "a stored message belongs to a chat that does not exist",
                            ))?;
                    tx.rollback().await?;
                    Ok(chat)
                }
                Some(_) => Err(ExchangeError::OperatorIdInOtherChat.into()),
                None => Err(PgIndexError::Inconsistent(
                    "a message id is taken but no message holds it",
                )),
            };
        }
        if !stored.contains(&exchange.agent.id.to_string()) {
            return Err(ExchangeError::AgentIdTaken.into());
        }

        let chat = touch_chat(&tx, chat_id, exchange.agent.ts, 2).await?;
        tx.commit().await?;
        Ok(chat)
    }

    async fn try_import(
        &self,
        chat: &Chat,
        messages: &[Message],
    ) -> Result<Imported, PgIndexError> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let created = insert_chat(
            &tx,
            &Chat {
                message_count: 0,
                ..chat.clone()
            },
        )
        .await?;
        let batch: Vec<&Message> = messages.iter().collect();
        let stored = insert_messages(&tx, &chat.id, &batch).await?;

        // The ids not stored now were stored before (or by an import racing
        // this one, which the insert waited for): in this chat they are
        // left as they are, in another the batch is refused.
        let present: Vec<String> = messages
            .iter()
            .map(|m| m.id.to_string())
            .filter(|id| !stored.contains(id))
            .collect();
        if !present.is_empty() {
            let stmt = tx.prepare_cached(ANY_IN_OTHER_CHAT).await?;
            let row = tx.query_one(&stmt, &[&present, &chat.id.as_str()]).await?;
            if row.try_get::<_, bool>(0)? {
                return Err(ImportError::IdInOtherChat.into());
            }
        }

        let inserted = stored.len() as u64;
        let stored_chat = touch_chat(&tx, &chat.id, chat.updated_at, inserted).await?;
        tx.commit().await?;
        Ok(Imported::new(
            stored_chat,
            created,
            inserted,
            present.len() as u64,
        ))
    }
}

#[async_trait]
impl ChatIndexStore for PostgresChatIndex {
    async fn create_chat(&self, chat: NewChat) -> Result<Chat> {
        let chat = chat.into_chat();
        if self.try_create(&chat).await? {
            Ok(chat)
        } else {
            Err(ChatIndexError::Conflict { id: chat.id })
        }
    }

    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>> {
        Ok(self.try_get(id).await?)
    }

    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> Result<Chat> {
        exchange::check(&new_chat, exchange)?;
        Ok(self.try_append(new_chat, exchange).await?)
    }

    async fn list_chats(&self, page: &PageRequest) -> Result<Page<Chat>> {
        let items = self.try_list_chats(page).await?;
        Ok(Page::from_overfetch(items, page.limit, Chat::cursor))
    }

    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> Result<Page<Message>> {
        let items = self
            .try_list_messages(chat, page)
            .await?
            .ok_or_else(|| ChatIndexError::NotFound { id: chat.clone() })?;
        Ok(Page::from_overfetch(items, page.limit, Message::cursor))
    }

    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> Result<Imported> {
        import::check(chat, messages)?;
        Ok(self.try_import(chat, messages).await?)
    }

    async fn check(&self) -> Result<()> {
        self.pool.check().await.map_err(PgIndexError::from)?;
        Ok(())
    }
}

fn overfetch(page: &PageRequest) -> i64 {
    i64::try_from(page.limit.get().saturating_add(1)).unwrap_or(i64::MAX)
}

fn ts(cursor: &Cursor) -> i64 {
    cursor.ts().as_unix_millis()
}

/// The cursor's id as a parameter. PostgreSQL text cannot hold NUL, which
/// no stored id holds either, so an id with one is replaced by the string
/// that every stored id compares with the same way: for `p\0...`, that is
/// `p\x01` (both are above `p` and every shorter prefix of it, and below
/// every longer id starting with `p`, whose next byte is at least 1).
fn cursor_id(cursor: &Cursor) -> Cow<'_, str> {
    let id = cursor.id();
    match id.find('\0') {
        None => Cow::Borrowed(id),
        Some(nul) => Cow::Owned(format!("{}\u{1}", &id[..nul])),
    }
}

/// Starts a `READ COMMITTED` transaction, whatever the server's default:
/// the writes rely on each statement seeing what committed before it.
async fn begin(client: &mut PooledClient) -> Result<Transaction<'_>, PgIndexError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?)
}

async fn select_chat(
    client: &impl GenericClient,
    id: &ChatId,
) -> Result<Option<Chat>, PgIndexError> {
    let stmt = client.prepare_cached(SELECT_CHAT).await?;
    client
        .query_opt(&stmt, &[&id.as_str()])
        .await?
        .map(|row| read_chat(&row))
        .transpose()
}

/// Inserts `chat`, with no messages, unless its id exists; whether it did.
async fn insert_chat(client: &impl GenericClient, chat: &Chat) -> Result<bool, PgIndexError> {
    let stmt = client.prepare_cached(INSERT_CHAT).await?;
    let inserted = client
        .execute(
            &stmt,
            &[
                &chat.id.as_str(),
                &chat.title.as_ref().map(ChatTitle::as_str),
                &chat.node.as_str(),
                &chat.created_at.as_unix_millis(),
                &chat.updated_at.as_unix_millis(),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Stores those of `messages` whose ids are free, in chat `chat`; the ids
/// it stored. The rows go in in id order, so that writers whose batches
/// overlap take their locks in one order.
async fn insert_messages(
    tx: &Transaction<'_>,
    chat: &ChatId,
    messages: &[&Message],
) -> Result<HashSet<String>, PgIndexError> {
    if messages.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sorted = messages.to_vec();
    sorted.sort_unstable_by_key(|m| m.id);
    let ids: Vec<String> = sorted.iter().map(|m| m.id.to_string()).collect();
    let roles: Vec<&str> = sorted.iter().map(|m| m.role.as_str()).collect();
    let texts: Vec<&[u8]> = sorted.iter().map(|m| m.text.as_bytes()).collect();
    let times: Vec<i64> = sorted.iter().map(|m| m.ts.as_unix_millis()).collect();
    let operators: Vec<&str> = sorted.iter().map(|m| m.operator_id.as_str()).collect();
    let nodes: Vec<&str> = sorted.iter().map(|m| m.node.as_str()).collect();
    let stmt = tx.prepare_cached(INSERT_MESSAGES).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &chat.as_str(),
                &ids,
                &roles,
                &texts,
                &times,
                &operators,
                &nodes,
            ],
        )
        .await?;
    let stored = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    Ok(stored)
}

/// Adds `added` messages to the chat's count and takes `ts` as its
/// activity time if later; the chat as it then is.
async fn touch_chat(
    tx: &Transaction<'_>,
    id: &ChatId,
    ts: Timestamp,
    added: u64,
) -> Result<Chat, PgIndexError> {
    let added = i64::try_from(added).map_err(|_| StoredError::CountOverflow)?;
    let stmt = tx.prepare_cached(TOUCH_CHAT).await?;
    let row = tx
        .query_opt(&stmt, &[&id.as_str(), &ts.as_unix_millis(), &added])
        .await?
        .ok_or(PgIndexError::Inconsistent(
            "the chat of a write vanished within its transaction",
        ))?;
    // Validated before the commit, so that a row this crate could not read
    // back is never written.
    read_chat(&row)
}

/// The tables, as errors about their stored values name them.
const CHATS: &str = "chat_index_chats";
const MESSAGES: &str = "chat_index_messages";

/// The chat in a row of [`SELECT_CHAT`], [`LIST_CHATS_FIRST`] and the
/// like.
fn read_chat(row: &Row) -> Result<Chat, PgIndexError> {
    let row = ChatRow {
        id: row.try_get(0)?,
        title: row.try_get(1)?,
        node: row.try_get(2)?,
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
        message_count: row.try_get(5)?,
    };
    Ok(row.into_chat(CHATS)?)
}

/// The message of chat `chat` in a row of [`LIST_MESSAGES_FIRST`] or
/// [`LIST_MESSAGES_AFTER`]. The text is stored as bytes (see the schema),
/// so it is checked to be UTF-8 here.
fn read_message(row: &Row, chat: &ChatId) -> Result<Message, PgIndexError> {
    let text: Vec<u8> = row.try_get(2)?;
    let row = MessageRow {
        id: row.try_get(0)?,
        role: row.try_get(1)?,
        text: String::from_utf8(text).map_err(PgIndexError::CorruptText)?,
        ts: row.try_get(3)?,
        operator_id: row.try_get(4)?,
        node: row.try_get(5)?,
    };
    Ok(row.into_message(MESSAGES, chat.clone())?)
}

/// What went wrong inside this backend; converted to [`ChatIndexError`] at
/// the trait boundary, and kept as its source.
#[derive(Debug, thiserror::Error)]
enum PgIndexError {
    // The driver and the shared plumbing; transparent, so that the chain
    // reads as if their variants were this enum's.
    #[error(transparent)]
    Postgres(#[from] sofiia_postgres_support::Error),
    #[error(transparent)]
    Stored(#[from] StoredError),
    #[error("a stored message text is not UTF-8")]
    CorruptText(#[source] FromUtf8Error),
    #[error("the stored data is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl From<tokio_postgres::Error> for PgIndexError {
    fn from(err: tokio_postgres::Error) -> Self {
        PgIndexError::Postgres(err.into())
    }
}

impl From<PgIndexError> for ChatIndexError {
    fn from(err: PgIndexError) -> Self {
        match err {
            PgIndexError::Exchange(e) => e.into(),
            PgIndexError::Import(e) => e.into(),
            PgIndexError::Postgres(e) if e.is_transient() => ChatIndexError::Unavailable {
                source: Box::new(PgIndexError::Postgres(e)),
            },
            err => ChatIndexError::Backend {
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::fmt;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use sofiia_core_domain::{Clock, ManualClock, MessageId, NodeId, PageLimit, ValidationError};
    use sofiia_testkit::PostgresTestDatabase;

    use super::*;
    use crate::MemoryChatIndex;
    use crate::testing::{TestStore, exchange_fixture};

    async fn fresh_store() -> Option<TestStore> {
        let db = PostgresTestDatabase::new("sofiia-chat-index postgres suite").await?;
        let store = PostgresChatIndex::connect(&db.url, PoolOptions::default())
            .await
            .expect("open a fresh PostgreSQL chat index");
        // The database is dropped when the case ends, after the store.
        Some(TestStore::with_guard(store, db))
    }

    crate::chat_index_store_tests!(fresh_store);

    /// A database of its own and a store in it.
    async fn store(test: &str) -> Option<(PostgresTestDatabase, PostgresChatIndex)> {
        let db = PostgresTestDatabase::new(test).await?;
        let store = PostgresChatIndex::connect(&db.url, PoolOptions::default())
            .await
            .unwrap();
        Some((db, store))
    }

    /// A connection of its own to the test database, beside the store's
    /// pool, so that its session settings and transactions touch no
    /// connection of the store.
    async fn raw(db: &PostgresTestDatabase) -> PooledClient {
        PostgresPool::open(&db.url, PoolOptions::default().with_max_connections(1))
            .unwrap()
            .get()
            .await
            .unwrap()
    }

    fn is_unavailable<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(ChatIndexError::Unavailable { .. }))
    }

    fn is_backend<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(ChatIndexError::Backend { .. }))
    }

    /// The plan of `sql` for `args` under the session's `plan_cache_mode`,
    /// one trimmed line per node or condition, without costs.
    async fn plan(client: &PooledClient, sql: &str, types: &str, args: &str) -> Vec<String> {
        client
            .batch_execute(&format!("PREPARE planned ({types}) AS {sql}"))
            .await
            .unwrap();
        let rows = client
            .query(
                &format!("EXPLAIN (COSTS OFF) EXECUTE planned ({args})"),
                &[],
            )
            .await
            .unwrap();
        client.batch_execute("DEALLOCATE planned").await.unwrap();
        rows.iter()
            .map(|r| {
                r.get::<_, String>(0)
                    .trim()
                    .trim_start_matches("->")
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    const BASE_MS: i64 = 1_767_225_600_000;

    /// A statement and what its plan must be.
    struct PlanCase {
        sql: &'static str,
        types: &'static str,
        /// SQL literals of its arguments.
        args: String,
        /// The one scan, as EXPLAIN names it.
        scan: &'static str,
        /// How the line right below the scan starts, if it has a condition.
        cond: Option<&'static str>,
        filter_allowed: bool,
    }

    impl PlanCase {
        fn new(
            sql: &'static str,
            types: &'static str,
            args: &str,
            scan: &'static str,
            cond: Option<&'static str>,
        ) -> Self {
            Self {
                sql,
                types,
                args: args.to_owned(),
                scan,
                cond,
                filter_allowed: false,
            }
        }
    }

    #[tokio::test]
    async fn every_query_uses_its_index_and_never_sorts() {
        let Some((db, _store)) = store("every_query_uses_its_index").await else {
            return;
        };
        let client = raw(&db).await;
        // Enough rows, and statistics, that a sequential scan and a sort
        // would be chosen if the indexes did not fit the queries.
        client
            .batch_execute(&format!(
                "INSERT INTO chat_index_chats (id, title, node, created_at, updated_at, message_count)
                 SELECT 'chat-' || i, NULL, 'NODA1', {BASE_MS}, {BASE_MS} + i / 3, 0
                 FROM generate_series(1, 5000) AS i;
                 INSERT INTO chat_index_messages (id, chat_id, role, text, ts, operator_id, node)
                 SELECT gen_random_uuid()::text, 'chat-' || (i % 20 + 1),
                        CASE WHEN i % 2 = 0 THEN 'operator' ELSE 'agent' END,
                        convert_to('message ' || i, 'UTF8'), {BASE_MS} + i / 10, 'alice', 'NODA1'
                 FROM generate_series(0, 39999) AS i;
                 UPDATE chat_index_chats SET message_count = 2000, updated_at = {BASE_MS} + 4000
                 WHERE id IN (SELECT 'chat-' || i FROM generate_series(1, 20) AS i);
                 ANALYZE chat_index_chats, chat_index_messages;"
            ))
            .await
            .unwrap();

        let mid = BASE_MS + 3000;
        let chats_by_activity = "Index Scan using chat_index_chats_by_activity on chat_index_chats";
        let messages_by_chat_time =
            "Index Scan using chat_index_messages_by_chat_time on chat_index_messages";
        let chat_by_id = "Index Scan using chat_index_chats_pkey on chat_index_chats";
        let message_by_id = "Index Scan using chat_index_messages_pkey on chat_index_messages";
        let cases = [
            PlanCase::new(LIST_CHATS_FIRST, "bigint", "51", chats_by_activity, None),
            PlanCase::new(
                LIST_CHATS_AFTER,
                "bigint, text, bigint",
                &format!("{}, 'chat-900', 51", BASE_MS + 1000),
                chats_by_activity,
                Some("Index Cond: (ROW(updated_at, id) < ROW("),
            ),
            PlanCase::new(
                LIST_MESSAGES_FIRST,
                "text, bigint",
                "'chat-7', 51",
                messages_by_chat_time,
                Some("Index Cond: (chat_id = "),
            ),
            PlanCase::new(
                LIST_MESSAGES_AFTER,
                "text, bigint, text, bigint",
                &format!("'chat-7', {mid}, '8', 51"),
                messages_by_chat_time,
                Some("Index Cond: ((chat_id = "),
            ),
            PlanCase::new(
                SELECT_CHAT,
                "text",
                "'chat-7'",
                chat_by_id,
                Some("Index Cond: (id = "),
            ),
            PlanCase::new(
                CHAT_EXISTS,
                "text",
                "'chat-7'",
                "Index Only Scan using chat_index_chats_pkey on chat_index_chats",
                Some("Index Cond: (id = "),
            ),
            PlanCase::new(
                MESSAGE_CHAT,
                "text",
                "'0190a5d4-0000-7000-8000-000000000000'",
                message_by_id,
                Some("Index Cond: (id = "),
            ),
            PlanCase {
                // The chat is compared on the few rows the ids found.
                filter_allowed: true,
                ..PlanCase::new(
                    ANY_IN_OTHER_CHAT,
                    "text[], text",
                    "ARRAY['0190a5d4-0000-7000-8000-000000000000'], 'chat-7'",
                    message_by_id,
                    Some("Index Cond: (id = ANY ("),
                )
            },
            PlanCase::new(
                TOUCH_CHAT,
                "text, bigint, bigint",
                &format!("'chat-7', {mid}, 2"),
                chat_by_id,
                Some("Index Cond: (id = "),
            ),
        ];
        // A prepared statement is planned for its arguments at first and may
        // move to one generic plan later; both must use the index.
        for mode in ["force_custom_plan", "force_generic_plan"] {
            client
                .batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await
                .unwrap();
            for case in &cases {
                let PlanCase {
                    sql,
                    types,
                    args,
                    scan,
                    cond,
                    filter_allowed,
                } = case;
                let plan = plan(&client, sql, types, args).await;
                let text = plan.join("\n");
                let at = plan
                    .iter()
                    .position(|line| line == scan)
                    .unwrap_or_else(|| panic!("{mode}: {scan} in the plan of {sql}:\n{text}"));
                if let Some(cond) = cond {
                    assert!(
                        plan.get(at + 1).is_some_and(|line| line.starts_with(cond)),
                        "{mode}: {cond} right below the scan of {sql}:\n{text}"
                    );
                }
                for banned in ["Seq Scan", "Sort", "Bitmap", "Materialize"] {
                    assert!(
                        !text.contains(banned),
                        "{mode}: {banned} in the plan of {sql}:\n{text}"
                    );
                }
                if !filter_allowed {
                    assert!(
                        !text.contains("Filter"),
                        "{mode}: a filter in the plan of {sql}:\n{text}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_stores_share_a_database() {
        static OTHER: Schema = Schema {
            store: "other",
            migrations: &["CREATE TABLE other (x BIGINT NOT NULL)"],
        };
        let Some(db) = PostgresTestDatabase::new("stores_share_a_database").await else {
            return;
        };
        let pool = PostgresPool::open(&db.url, PoolOptions::default()).unwrap();
        let second_pool = PostgresPool::open(&db.url, PoolOptions::default()).unwrap();
        // Two instances starting at once migrate once.
        let (first, second) = tokio::join!(
            PostgresChatIndex::open(pool.clone()),
            PostgresChatIndex::open(second_pool)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        pool.migrate(&OTHER).await.unwrap();
        let third = PostgresChatIndex::open(pool.clone()).await.unwrap();
        assert_eq!(
            pool.schema_version("chat_index").await.unwrap(),
            Some(SCHEMA.latest())
        );

        let (new_chat, exchange) = exchange_fixture("shared", "ping", "pong");
        let chat = first.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(second.get_chat(&chat.id).await.unwrap(), Some(chat.clone()));
        assert_eq!(third.get_chat(&chat.id).await.unwrap(), Some(chat.clone()));

        let client = raw(&db).await;
        let tables: Vec<String> = client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            tables,
            [
                "chat_index_chats",
                "chat_index_messages",
                "other",
                "sofiia_schema"
            ]
        );
        // Ids compare byte by byte whatever the database's collation.
        let collations: Vec<(String, String, Option<String>)> = client
            .query(
                "SELECT table_name::text, column_name::text, collation_name::text
                 FROM information_schema.columns
                 WHERE table_name LIKE 'chat\\_index\\_%' AND column_name IN ('id', 'chat_id')
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let c = Some("C".to_owned());
        assert_eq!(
            collations,
            [
                ("chat_index_chats".to_owned(), "id".to_owned(), c.clone()),
                (
                    "chat_index_messages".to_owned(),
                    "chat_id".to_owned(),
                    c.clone()
                ),
                ("chat_index_messages".to_owned(), "id".to_owned(), c),
            ]
        );

        // The data outlives every store and pool.
        let messages = first
            .list_messages(&chat.id, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(messages.items, vec![exchange.agent, exchange.operator]);
        drop((first, second, third, pool));
        let reopened = PostgresChatIndex::connect(&db.url, PoolOptions::default())
            .await
            .unwrap();
        assert_eq!(
            reopened.get_chat(&chat.id).await.unwrap(),
            Some(chat.clone())
        );
        let reread = reopened
            .list_messages(&chat.id, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(reread, messages);
        let page = reopened.list_chats(&PageRequest::default()).await.unwrap();
        assert_eq!(page.items, vec![chat]);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some((db, store)) = store("a_newer_schema_is_refused").await else {
            return;
        };
        raw(&db)
            .await
            .batch_execute("UPDATE sofiia_schema SET version = 99 WHERE store = 'chat_index'")
            .await
            .unwrap();
        let err = PostgresChatIndex::open(store.pool().clone())
            .await
            .unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_bad_url_is_a_backend_error() {
        let err = PostgresChatIndex::connect("nonsense=1", PoolOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let result = PostgresChatIndex::connect(
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            PoolOptions::default().with_connect_timeout(Duration::from_millis(500)),
        )
        .await;
        assert!(is_unavailable(&result), "{result:?}");
    }

    #[tokio::test]
    async fn a_closed_store_is_unavailable() {
        let Some((_db, store)) = store("a_closed_store_is_unavailable").await else {
            return;
        };
        let (new_chat, exchange) = exchange_fixture("late", "ping", "pong");
        store.create_chat(new_chat.clone()).await.unwrap();
        store.close();
        assert!(is_unavailable(&store.check().await));
        assert!(is_unavailable(
            &store.append_exchange(new_chat, &exchange).await
        ));
        assert!(is_unavailable(
            &store.list_chats(&PageRequest::default()).await
        ));
    }

    /// Holds the row lock of `chat` in a transaction of its own until the
    /// returned sender is dropped or sent to.
    async fn lock_chat(
        db: &PostgresTestDatabase,
        chat: &ChatId,
    ) -> tokio::sync::oneshot::Sender<()> {
        let mut client = raw(db).await;
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let chat = chat.as_str().to_owned();
        tokio::spawn(async move {
            let tx = client.transaction().await.unwrap();
            tx.execute(
                "SELECT 1 FROM chat_index_chats WHERE id = $1 FOR UPDATE",
                &[&chat],
            )
            .await
            .unwrap();
            locked_tx.send(()).unwrap();
            let _ = released.await;
            tx.rollback().await.unwrap();
        });
        locked.await.unwrap();
        release
    }

    /// The pid of the one backend of this database waiting for a lock.
    async fn waiting_backend(client: &PooledClient) -> i32 {
        let started = Instant::now();
        loop {
            let row = client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no backend came to wait for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_killed_mid_write_is_unavailable_and_stores_nothing() {
        let Some((db, store)) = store("a_connection_killed_mid_write").await else {
            return;
        };
        let store = Arc::new(store);
        let (new_chat, exchange) = exchange_fixture("killed", "ping", "pong");
        let chat = store.create_chat(new_chat.clone()).await.unwrap();
        let release = lock_chat(&db, &chat.id).await;

        let writer = {
            let (store, new_chat, exchange) = (store.clone(), new_chat.clone(), exchange.clone());
            tokio::spawn(async move { store.append_exchange(new_chat, &exchange).await })
        };
        let admin = raw(&db).await;
        let pid = waiting_backend(&admin).await;
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let result = writer.await.unwrap();
        assert!(is_unavailable(&result), "{result:?}");
        drop(release);

        // The pool carries on with a new connection. The killed one may be
        // handed out once more before its end is noticed: that call is
        // unavailable too, never a backend error.
        let started = Instant::now();
        let stored = loop {
            match store.get_chat(&chat.id).await {
                Err(ChatIndexError::Unavailable { .. })
                    if started.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.unwrap(),
            }
        };
        // Nothing of the write was kept.
        assert_eq!(stored, Some(chat.clone()));
        let page = store
            .list_messages(&chat.id, &PageRequest::default())
            .await
            .unwrap();
        assert!(page.items.is_empty());
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(chat.message_count, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_wait_past_lock_timeout_is_unavailable() {
        let Some(db) = PostgresTestDatabase::new("a_lock_wait_past_lock_timeout").await else {
            return;
        };
        let url = format!("{}?options=-c%20lock_timeout%3D200", db.url);
        let store = PostgresChatIndex::connect(&url, PoolOptions::default())
            .await
            .unwrap();
        let (new_chat, exchange) = exchange_fixture("locked", "ping", "pong");
        let chat = store.create_chat(new_chat.clone()).await.unwrap();
        let release = lock_chat(&db, &chat.id).await;
        let result = store.append_exchange(new_chat.clone(), &exchange).await;
        assert!(is_unavailable(&result), "{result:?}");
        // Reads are not blocked by a writer.
        assert_eq!(store.get_chat(&chat.id).await.unwrap(), Some(chat));
        drop(release);
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(
            chat.message_count, 2,
            "the refused write left nothing behind"
        );
    }

    #[tokio::test]
    async fn a_corrupt_row_is_a_backend_error_not_a_panic() {
        let Some((db, store)) = store("a_corrupt_row_is_a_backend_error").await else {
            return;
        };
        let client = raw(&db).await;
        client
            .batch_execute(
                "INSERT INTO chat_index_chats (id, title, node, created_at, updated_at, message_count)
                 VALUES ('fine', NULL, 'not a node', 0, 0, 0);",
            )
            .await
            .unwrap();
        let id = ChatId::new("fine").unwrap();
        let result = store.get_chat(&id).await;
        assert!(is_backend(&result), "{result:?}");
        let err = result.unwrap_err();
        let cause = err.source().and_then(|e| e.source());
        assert!(
            cause.is_some_and(|e| e.downcast_ref::<ValidationError>().is_some()),
            "the chain names the validation failure: {err:?}"
        );
        assert!(is_backend(&store.list_chats(&PageRequest::default()).await));

        let (new_chat, exchange) = exchange_fixture("bytes", "ping", "pong");
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        client
            .execute(
                "UPDATE chat_index_messages SET text = '\\xff'::bytea WHERE id = $1",
                &[&exchange.agent.id.to_string()],
            )
            .await
            .unwrap();
        let result = store.list_messages(&chat.id, &PageRequest::default()).await;
        assert!(is_backend(&result), "{result:?}");
    }

    #[tokio::test]
    async fn a_cursor_id_holding_nul_sorts_as_in_the_other_backends() {
        let Some((_db, store)) = store("a_cursor_id_holding_nul").await else {
            return;
        };
        let memory = MemoryChatIndex::new();
        let clock = ManualClock::default();
        let now = clock.now();
        for id in ["a", "a0", "ab", "b", "a-", "a.x"] {
            let new_chat = NewChat {
                id: ChatId::new(id).unwrap(),
                title: None,
                node: NodeId::new("NODA1").unwrap(),
                created_at: now,
            };
            store.create_chat(new_chat.clone()).await.unwrap();
            memory.create_chat(new_chat).await.unwrap();
        }
        let (new_chat, exchange) = exchange_fixture("a", "ping", "pong");
        let mut messages = Vec::new();
        for _ in 0..4 {
            let mut exchange = exchange.clone();
            exchange.operator.id = MessageId::generate();
            exchange.agent.id = MessageId::generate();
            store
                .append_exchange(new_chat.clone(), &exchange)
                .await
                .unwrap();
            memory
                .append_exchange(new_chat.clone(), &exchange)
                .await
                .unwrap();
            messages.push(exchange.agent.id.to_string());
        }
        let limit = PageLimit::new(200).unwrap();
        let mut ids: Vec<String> = ["\0", "a\0", "a\0z", "a\u{1}", "ab\0", "b\0\0", "a-\0"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        ids.extend(messages.iter().map(|m| format!("{m}\0")));
        ids.extend(messages.iter().map(|m| format!("{}\0", &m[..10])));
        for id in ids {
            for ts in [now, clock.now()] {
                let request = PageRequest {
                    limit,
                    after: Some(Cursor::new(ts, id.clone())),
                };
                assert_eq!(
                    store.list_chats(&request).await.unwrap(),
                    memory.list_chats(&request).await.unwrap(),
                    "chats after {id:?}"
                );
                let chat = ChatId::new("a").unwrap();
                assert_eq!(
                    store.list_messages(&chat, &request).await.unwrap(),
                    memory.list_messages(&chat, &request).await.unwrap(),
                    "messages after {id:?}"
                );
            }
        }
    }

    /// Imports of one batch in opposite orders, beside appends to the same
    /// chat, all at once, round after round: rows are locked in one order,
    /// so none deadlocks (which PostgreSQL would break by failing one of
    /// them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_writes_in_any_order_do_not_deadlock() {
        const ROUNDS: u64 = 5;
        const BATCH: u64 = 1000;
        const APPENDS: u64 = 4;
        let Some((_db, store)) = store("overlapping_writes_do_not_deadlock").await else {
            return;
        };
        let store = Arc::new(store);
        let (new_chat, exchange) = exchange_fixture("crowded", "ping", "pong");
        let chat = store.create_chat(new_chat.clone()).await.unwrap();
        for round in 0..ROUNDS {
            let batch: Vec<Message> = (0..BATCH)
                .map(|i| Message {
                    id: MessageId::generate(),
                    text: format!("imported {i}"),
                    ..exchange.operator.clone()
                })
                .collect();
            let mut imports = Vec::new();
            for i in 0..8 {
                let (store, chat) = (store.clone(), chat.clone());
                let mut batch = batch.clone();
                if i % 2 == 1 {
                    batch.reverse();
                }
                imports.push(tokio::spawn(async move {
                    store.import_chat(&chat, &batch).await.map(|i| i.inserted)
                }));
            }
            let mut appends = Vec::new();
            for _ in 0..APPENDS {
                let (store, new_chat) = (store.clone(), new_chat.clone());
                let mut exchange = exchange.clone();
                exchange.operator.id = MessageId::generate();
                exchange.agent.id = MessageId::generate();
                appends.push(tokio::spawn(async move {
                    store.append_exchange(new_chat, &exchange).await
                }));
            }
            let mut inserted = 0;
            for task in imports {
                inserted += task.await.unwrap().unwrap();
            }
            for task in appends {
                task.await.unwrap().unwrap();
            }
            assert_eq!(inserted, BATCH, "round {round}");
        }
        let stored = store.get_chat(&chat.id).await.unwrap().unwrap();
        assert_eq!(stored.message_count, ROUNDS * (BATCH + 2 * APPENDS));
    }

    #[test]
    fn debug_shows_the_server_without_credentials() {
        let pool = PostgresPool::open(
            "postgres://alice:secret@db.example:6543/sofiia",
            PoolOptions::default(),
        )
        .unwrap();
        let store = PostgresChatIndex { pool };
        let debug = format!("{store:?}");
        assert!(
            debug.contains("PostgresChatIndex") && debug.contains("db.example:6543/sofiia"),
            "{debug}"
        );
        assert!(!debug.contains("secret"), "{debug}");
    }
}
