//! The SQLite backend.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_sqlite::PoolError;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Cursor, Exchange, Message, NewChat, Page, PageRequest,
};
use sofiia_sqlite_support::{Database, DatabaseOptions, Durability, Schema, ping};

use crate::exchange::{self, ExchangeError};
use crate::import::{self, ImportError};
use crate::stored::{ChatRow, MessageRow, StoredError};
use crate::{ChatIndexError, ChatIndexStore, Imported, Result};

/// The schema, one entry per version, recorded in the file's
/// `sofiia_schema` table. Entries are never edited once released, only
/// appended.
static SCHEMA: Schema = Schema {
    store: "chat_index",
    marker: "messages",
    migrations: &["CREATE TABLE chats (
        id            TEXT    NOT NULL PRIMARY KEY,
        title         TEXT,
        node          TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0 CHECK (message_count >= 0),
        CHECK (updated_at >= created_at)
    ) STRICT;
    CREATE INDEX chats_by_activity ON chats (updated_at DESC, id DESC);

    -- AUTOINCREMENT: `seq` records insertion order and is never reused.
    CREATE TABLE messages (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT    NOT NULL UNIQUE,
        chat_id     TEXT    NOT NULL REFERENCES chats (id),
        role        TEXT    NOT NULL CHECK (role IN ('operator', 'agent')),
        text        TEXT    NOT NULL,
        ts          INTEGER NOT NULL,
        operator_id TEXT    NOT NULL,
        node        TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX messages_by_chat_time ON messages (chat_id, ts DESC, id DESC);"],
};

// The list queries fetch `limit + 1` rows (see `Page::from_overfetch`). Text
// compares with SQLite's default BINARY collation, byte by byte, as Rust's
// `str` does, so every backend agrees on the order of ids.
const LIST_CHATS_FIRST: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chats
    ORDER BY updated_at DESC, id DESC
    LIMIT ?1";
const LIST_CHATS_AFTER: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chats
    WHERE (updated_at, id) < (?1, ?2)
    ORDER BY updated_at DESC, id DESC
    LIMIT ?3";
const LIST_MESSAGES_FIRST: &str = "SELECT id, role, text, ts, operator_id, node
    FROM messages
    WHERE chat_id = ?1
    ORDER BY ts DESC, id DESC
    LIMIT ?2";
const LIST_MESSAGES_AFTER: &str = "SELECT id, role, text, ts, operator_id, node
    FROM messages
    WHERE chat_id = ?1 AND (ts, id) < (?2, ?3)
    ORDER BY ts DESC, id DESC
    LIMIT ?4";
const SELECT_CHAT: &str = "SELECT id, title, node, created_at, updated_at, message_count
    FROM chats
    WHERE id = ?1";
const CHAT_EXISTS: &str = "SELECT 1 FROM chats WHERE id = ?1";
const MESSAGE_CHAT: &str = "SELECT chat_id FROM messages WHERE id = ?1";
const INSERT_CHAT: &str =
    "INSERT INTO chats (id, title, node, created_at, updated_at, message_count)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (id) DO NOTHING";
const INSERT_MESSAGE: &str = "INSERT INTO messages (id, chat_id, role, text, ts, operator_id, node)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_MESSAGE_IF_NEW: &str =
    "INSERT INTO messages (id, chat_id, role, text, ts, operator_id, node)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (id) DO NOTHING";
const IMPORT_TOUCH_CHAT: &str = "UPDATE chats
    SET updated_at = max(updated_at, ?2), message_count = message_count + ?3
    WHERE id = ?1
    RETURNING id, title, node, created_at, updated_at, message_count";
const TOUCH_CHAT: &str = "UPDATE chats
    SET updated_at = max(updated_at, ?2), message_count = message_count + 2
    WHERE id = ?1
    RETURNING id, title, node, created_at, updated_at, message_count";

/// How [`SqliteChatIndex::open_with`] sets up its connections.
///
/// Start from [`SqliteOptions::default`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use sofiia_chat_index::SqliteOptions;
///
/// let options = SqliteOptions::default().with_busy_timeout(Duration::from_secs(2));
/// assert_eq!(options.read_connections.get(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How many connections serve reads, which WAL lets run beside the one
    /// writer. Default 4.
    pub read_connections: NonZeroUsize,
    /// How long a statement waits for a lock held by another connection or
    /// process before the call fails with [`ChatIndexError::Unavailable`].
    /// Default 5 s.
    pub busy_timeout: Duration,
    /// How long a call waits for a free connection of this store before it
    /// fails with [`ChatIndexError::Unavailable`]. Default 5 s.
    pub acquire_timeout: Duration,
}

const DEFAULT_READ_CONNECTIONS: NonZeroUsize = match NonZeroUsize::new(4) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            read_connections: DEFAULT_READ_CONNECTIONS,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteOptions {
    /// These options with `n` read connections.
    #[must_use]
    pub fn with_read_connections(mut self, n: NonZeroUsize) -> Self {
        self.read_connections = n;
        self
    }

    /// These options with another [`busy_timeout`](Self::busy_timeout).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// These options with another [`acquire_timeout`](Self::acquire_timeout).
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

/// A chat index in one SQLite file, the console's default backend.
///
/// The file is in WAL mode: one writer thread (see
/// [`Writer`](sofiia_sqlite_support::Writer)) beside a pool of readers.
/// Writes waiting at the same time share one `BEGIN IMMEDIATE` transaction
/// (group commit), each in a savepoint of its own, so a failed write leaves
/// nothing behind and does not fail the others. Reads run on the blocking
/// thread pool, never on an async worker.
///
/// **Durability.** `synchronous = FULL`: a write returns only once it is on
/// disk (`fsync`), so an exchange the console answered is kept through a
/// crash or a power loss. Group commit keeps that to one `fsync` per batch.
///
/// Several stores, even in several processes, may open one file; they share
/// its data. The file may hold other stores' tables too
/// ([`in_database`](Self::in_database)): the console keeps its keys, chats
/// and audit trail in one file, whose writes share transactions.
///
/// ```
/// use sofiia_chat_index::{ChatIndexStore, SqliteChatIndex};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteChatIndex::open(dir.path().join("data/chat-index.sqlite3")).await?;
/// store.check().await?;
/// # Ok(())
/// # }
/// ```
pub struct SqliteChatIndex {
    db: Database,
    durability: Durability,
}

impl fmt::Debug for SqliteChatIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteChatIndex")
            .field("db", &self.db)
            .field("durability", &self.durability)
            .finish()
    }
}

impl SqliteChatIndex {
    /// Opens the index at `path` with [`SqliteOptions::default`], creating
    /// the file and its parent directories if missing and bringing the schema
    /// up to date.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Unavailable`] if the file stays locked by someone
    /// else for longer than the busy timeout; [`ChatIndexError::Backend`] if
    /// the directory or file cannot be created or opened, the file is not a
    /// database of this schema (or of a newer one), or WAL mode cannot be set
    /// (as for `:memory:`).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Like [`open`](Self::open), with explicit options.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(Self::try_open(path.as_ref().to_owned(), &options).await?)
    }

    async fn try_open(path: PathBuf, options: &SqliteOptions) -> Result<Self, SqliteError> {
        let file = DatabaseOptions::default()
            .with_busy_timeout(options.busy_timeout)
            .with_read_connections(options.read_connections)
            .with_acquire_timeout(options.acquire_timeout);
        let db = Database::open(path, file).await?;
        Self::try_in_database(&db).await
    }

    /// Keeps the index in `db`, a file other stores may share: their writes
    /// and this store's are committed together, and its readers serve them
    /// all (see [`Database`]). Creates or brings up to date this store's
    /// tables only.
    ///
    /// # Errors
    ///
    /// [`ChatIndexError::Unavailable`] if the file stays locked by someone
    /// else for longer than the busy timeout or is closed;
    /// [`ChatIndexError::Backend`] if it holds tables of this store that no
    /// known schema version describes, or a newer version.
    pub async fn in_database(db: &Database) -> Result<Self> {
        Ok(Self::try_in_database(db).await?)
    }

    async fn try_in_database(db: &Database) -> Result<Self, SqliteError> {
        db.migrate(&SCHEMA).await?;
        let store = Self {
            db: db.clone(),
            durability: Durability::Synced,
        };
        store.with_read(ping).await?;
        Ok(store)
    }

    /// This store, answering its writes once they are taken as far as
    /// `durability` says. The default, [`Durability::Synced`], answers a
    /// write once it is on disk. [`Durability::Committed`] answers once it
    /// is committed: it survives the process being killed, and a power loss
    /// undoes it only with every write after it in the file. That is for an
    /// owner that follows every write of this store with a synced write to
    /// the same file before it relies on it: the console, whose chats are
    /// followed by their audit event and whose exchanges by their completed
    /// idempotency key, all in one file.
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Closes the file: calls in flight finish, later calls fail with
    /// [`ChatIndexError::Unavailable`]. This closes it for every store
    /// sharing it; dropping every holder of it does the same. It is for a
    /// shutdown that must refuse new work while other holders of the store
    /// still exist.
    pub fn close(&self) {
        self.db.close();
    }

    async fn with_read<T, F>(&self, f: F) -> Result<T, SqliteError>
    where
        F: FnOnce(&mut Connection) -> Result<T, SqliteError> + Send + 'static,
        T: Send + 'static,
    {
        self.db.read(f).await
    }

    /// Runs `f` in the writer's next transaction (see
    /// [`Writer::write`](sofiia_sqlite_support::Writer::write)).
    async fn with_write<T, F>(&self, f: F) -> Result<T, SqliteError>
    where
        F: FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
        T: Send + 'static,
    {
        self.db.writer().write_with(self.durability, f).await
    }
}

#[async_trait]
impl ChatIndexStore for SqliteChatIndex {
    async fn create_chat(&self, chat: NewChat) -> Result<Chat> {
        let chat = chat.into_chat();
        let row = chat.clone();
        let created = self.with_write(move |conn| insert_chat(conn, &row)).await?;
        if created {
            Ok(chat)
        } else {
            Err(ChatIndexError::Conflict { id: chat.id })
        }
    }

    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>> {
        let id = id.clone();
        Ok(self.with_read(move |conn| select_chat(conn, &id)).await?)
    }

    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> Result<Chat> {
        exchange::check(&new_chat, exchange)?;
        let exchange = exchange.clone();
        Ok(self
            .with_write(move |conn| append(conn, new_chat, &exchange))
            .await?)
    }

    async fn list_chats(&self, page: &PageRequest) -> Result<Page<Chat>> {
        let after = page.after.clone();
        let fetch = overfetch(page);
        let items = self
            .with_read(move |conn| {
                let rows = match &after {
                    None => {
                        let mut stmt = conn.prepare_cached(LIST_CHATS_FIRST)?;
                        let rows = stmt.query_map(params![fetch], read_chat)?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()?
                    }
                    Some(c) => {
                        let mut stmt = conn.prepare_cached(LIST_CHATS_AFTER)?;
                        let rows = stmt.query_map(params![ts(c), c.id(), fetch], read_chat)?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()?
                    }
                };
                rows.into_iter().map(into_chat).collect()
            })
            .await?;
        Ok(Page::from_overfetch(items, page.limit, Chat::cursor))
    }

    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> Result<Page<Message>> {
        let chat_id = chat.clone();
        let after = page.after.clone();
        let fetch = overfetch(page);
        let items = self
            .with_read(move |conn| {
                // One snapshot for the page and the existence check.
                let tx = conn.transaction()?;
                let rows = match &after {
                    None => {
                        let mut stmt = tx.prepare_cached(LIST_MESSAGES_FIRST)?;
                        let rows =
                            stmt.query_map(params![chat_id.as_str(), fetch], read_message)?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()?
                    }
                    Some(c) => {
                        let mut stmt = tx.prepare_cached(LIST_MESSAGES_AFTER)?;
                        let rows = stmt.query_map(
                            params![chat_id.as_str(), ts(c), c.id(), fetch],
                            read_message,
                        )?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()?
                    }
                };
                // A message proves its chat exists (foreign key), so only an
                // empty page needs the extra lookup.
                if rows.is_empty() && !chat_exists(&tx, &chat_id)? {
                    return Ok(None);
                }
                // The queries select the rows of `chat_id` only.
                rows.into_iter()
                    .map(|row| Ok(row.into_message(MESSAGES, chat_id.clone())?))
                    .collect::<Result<Vec<_>, SqliteError>>()
                    .map(Some)
            })
            .await?
            .ok_or_else(|| ChatIndexError::NotFound { id: chat.clone() })?;
        Ok(Page::from_overfetch(items, page.limit, Message::cursor))
    }

    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> Result<Imported> {
        import::check(chat, messages)?;
        let chat = chat.clone();
        let messages = messages.to_vec();
        Ok(self
            .with_write(move |conn| import_batch(conn, &chat, &messages))
            .await?)
    }

    async fn check(&self) -> Result<()> {
        Ok(self.with_read(ping).await?)
    }
}

fn overfetch(page: &PageRequest) -> i64 {
    i64::try_from(page.limit.get().saturating_add(1)).unwrap_or(i64::MAX)
}

fn ts(cursor: &Cursor) -> i64 {
    cursor.ts().as_unix_millis()
}

fn chat_exists(conn: &Connection, id: &ChatId) -> rusqlite::Result<bool> {
    conn.prepare_cached(CHAT_EXISTS)?.exists([id.as_str()])
}

fn select_chat(conn: &Connection, id: &ChatId) -> Result<Option<Chat>, SqliteError> {
    conn.prepare_cached(SELECT_CHAT)?
        .query_row([id.as_str()], read_chat)
        .optional()?
        .map(into_chat)
        .transpose()
}

/// Inserts `chat` unless its id exists; whether it did.
fn insert_chat(conn: &Connection, chat: &Chat) -> Result<bool, SqliteError> {
    let count = i64::try_from(chat.message_count).map_err(|_| StoredError::CountOverflow)?;
    let inserted = conn.prepare_cached(INSERT_CHAT)?.execute(params![
        chat.id.as_str(),
        chat.title.as_ref().map(ChatTitle::as_str),
        chat.node.as_str(),
        chat.created_at.as_unix_millis(),
        chat.updated_at.as_unix_millis(),
        count,
    ])?;
    Ok(inserted == 1)
}

/// Stores `exchange`; runs inside the writer's transaction, in a savepoint
/// that an error rolls back.
fn append(conn: &Connection, new_chat: NewChat, exchange: &Exchange) -> Result<Chat, SqliteError> {
    let chat_id = &exchange.operator.chat_id;

    let owner: Option<String> = conn
        .prepare_cached(MESSAGE_CHAT)?
        .query_row([exchange.operator.id.to_string()], |r| r.get(0))
        .optional()?;
    if let Some(owner) = owner {
        if owner != chat_id.as_str() {
            return Err(ExchangeError::OperatorIdInOtherChat.into());
        }
        // A replay: nothing to write.
        return select_chat(conn, chat_id)?.ok_or(SqliteError::MissingChat);
    }
    if conn
        .prepare_cached(MESSAGE_CHAT)?
        .exists([exchange.agent.id.to_string()])?
    {
        return Err(ExchangeError::AgentIdTaken.into());
    }

    insert_chat(conn, &new_chat.into_chat())?;
    {
        let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
        for m in [&exchange.operator, &exchange.agent] {
            insert.execute(params![
                m.id.to_string(),
                m.chat_id.as_str(),
                m.role.as_str(),
                m.text,
                m.ts.as_unix_millis(),
                m.operator_id.as_str(),
                m.node.as_str(),
            ])?;
        }
    }
    let row = conn.prepare_cached(TOUCH_CHAT)?.query_row(
        params![chat_id.as_str(), exchange.agent.ts.as_unix_millis()],
        read_chat,
    )?;
    // Validated before the savepoint is released, so that a row this crate
    // could not read back is never half-written.
    into_chat(row)
}

/// Imports one batch; runs inside the writer's transaction, as `append`.
fn import_batch(
    conn: &Connection,
    chat: &Chat,
    messages: &[Message],
) -> Result<Imported, SqliteError> {
    {
        let mut owner_of = conn.prepare_cached(MESSAGE_CHAT)?;
        for m in messages {
            let owner: Option<String> = owner_of
                .query_row([m.id.to_string()], |r| r.get(0))
                .optional()?;
            if owner.is_some_and(|owner| owner != chat.id.as_str()) {
                return Err(ImportError::IdInOtherChat.into());
            }
        }
    }
    let created = insert_chat(
        conn,
        &Chat {
            message_count: 0,
            ..chat.clone()
        },
    )?;
    let mut inserted = 0_u64;
    {
        // Only ids of this chat can conflict (checked above): those are the
        // messages already present, left as they are.
        let mut insert = conn.prepare_cached(INSERT_MESSAGE_IF_NEW)?;
        for m in messages {
            let n = insert.execute(params![
                m.id.to_string(),
                m.chat_id.as_str(),
                m.role.as_str(),
                m.text,
                m.ts.as_unix_millis(),
                m.operator_id.as_str(),
                m.node.as_str(),
            ])?;
            inserted += n as u64;
        }
    }
    let added = i64::try_from(inserted).map_err(|_| StoredError::CountOverflow)?;
    let row = conn.prepare_cached(IMPORT_TOUCH_CHAT)?.query_row(
        params![chat.id.as_str(), chat.updated_at.as_unix_millis(), added],
        read_chat,
    )?;
    // Validated before the savepoint is released, as in `append`.
    let stored = into_chat(row)?;
    Ok(Imported {
        chat: stored,
        created,
        inserted,
        present: messages.len() as u64 - inserted,
    })
}

/// The tables, as errors about their stored values name them.
const CHATS: &str = "chats";
const MESSAGES: &str = "messages";

/// A `chats` row as [`SELECT_CHAT`] and the others reading chats return it.
fn read_chat(row: &Row<'_>) -> rusqlite::Result<ChatRow> {
    Ok(ChatRow {
        id: row.get(0)?,
        title: row.get(1)?,
        node: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
        message_count: row.get(5)?,
    })
}

fn into_chat(row: ChatRow) -> Result<Chat, SqliteError> {
    Ok(row.into_chat(CHATS)?)
}

/// A `messages` row as [`LIST_MESSAGES_FIRST`] and [`LIST_MESSAGES_AFTER`]
/// return it.
fn read_message(row: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: row.get(0)?,
        role: row.get(1)?,
        text: row.get(2)?,
        ts: row.get(3)?,
        operator_id: row.get(4)?,
        node: row.get(5)?,
    })
}

/// What went wrong inside this backend; converted to [`ChatIndexError`] at
/// the trait boundary, and kept as its source.
#[derive(Debug, thiserror::Error)]
enum SqliteError {
    // The driver and the shared plumbing; transparent, so that the chain
    // reads as if their variants were this enum's.
    #[error(transparent)]
    Sqlite(#[from] sofiia_sqlite_support::Error),
    #[error("no SQLite connection could be had")]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Stored(#[from] StoredError),
    #[error("a stored message belongs to a chat that does not exist")]
    MissingChat,
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl From<rusqlite::Error> for SqliteError {
    fn from(err: rusqlite::Error) -> Self {
        SqliteError::Sqlite(err.into())
    }
}

impl SqliteError {
    /// Whether a later retry may succeed: the file or the pool was busy, or
    /// the store is shut down.
    fn is_transient(&self) -> bool {
        match self {
            SqliteError::Sqlite(e) => e.is_transient(),
            SqliteError::Pool(e) => sofiia_sqlite_support::pool_error_is_transient(e),
            _ => false,
        }
    }
}

impl From<SqliteError> for ChatIndexError {
    fn from(err: SqliteError) -> Self {
        match err {
            SqliteError::Exchange(e) => e.into(),
            SqliteError::Import(e) => e.into(),
            err if err.is_transient() => ChatIndexError::Unavailable {
                source: Box::new(err),
            },
            err => ChatIndexError::Backend {
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::chat_index_store_tests!(
        async fn store() -> crate::testing::TestStore {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteChatIndex::open(dir.path().join("chat-index.sqlite3"))
                .await
                .expect("open a fresh SQLite chat index");
            crate::testing::TestStore::with_guard(store, dir)
        }
    );

    use std::error::Error as _;

    use rusqlite::ErrorCode;
    use sofiia_core_domain::{MessageId, ValidationError};

    use crate::testing::exchange_fixture;

    /// A plain connection to the file, beside the store's pools.
    fn raw(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec![1_i64; stmt.parameter_count()];
        let details: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        details.join(" | ")
    }

    fn assert_plans(conn: &Connection) {
        let cases = [
            (LIST_CHATS_FIRST, "SCAN chats USING INDEX chats_by_activity"),
            (
                LIST_CHATS_AFTER,
                "SEARCH chats USING INDEX chats_by_activity ((updated_at,id)<(?,?))",
            ),
            (
                LIST_MESSAGES_FIRST,
                "SEARCH messages USING INDEX messages_by_chat_time (chat_id=?)",
            ),
            (
                LIST_MESSAGES_AFTER,
                "SEARCH messages USING INDEX messages_by_chat_time (chat_id=? AND (ts,id)<(?,?))",
            ),
            (
                SELECT_CHAT,
                "SEARCH chats USING INDEX sqlite_autoindex_chats_1 (id=?)",
            ),
            (
                CHAT_EXISTS,
                "SEARCH chats USING COVERING INDEX sqlite_autoindex_chats_1 (id=?)",
            ),
            (
                MESSAGE_CHAT,
                "SEARCH messages USING INDEX sqlite_autoindex_messages_1 (id=?)",
            ),
        ];
        for (sql, expected) in cases {
            let plan = plan(conn, sql);
            // Exact match: no second step, so in particular no
            // `USE TEMP B-TREE FOR ORDER BY`.
            assert_eq!(plan, expected, "plan of {sql}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    #[tokio::test]
    async fn every_query_uses_its_index_and_never_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans.sqlite3");
        let store = SqliteChatIndex::open(&path).await.unwrap();
        assert_plans(&raw(&path));

        // The planner may change its mind once it has statistics; it must not.
        for c in 0..30 {
            let (new_chat, exchange) = exchange_fixture(&format!("chat-{c}"), "ping", "pong");
            for _ in 0..10 {
                let mut exchange = exchange.clone();
                exchange.operator.id = MessageId::generate();
                exchange.agent.id = MessageId::generate();
                store
                    .append_exchange(new_chat.clone(), &exchange)
                    .await
                    .unwrap();
            }
        }
        let conn = raw(&path);
        conn.execute_batch("ANALYZE;").unwrap();
        assert_plans(&conn);
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen_and_parent_dirs_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not/yet/there/chat-index.sqlite3");
        let (new_chat, exchange) = exchange_fixture("kept", "ping", "pong");
        let (chat, messages) = {
            let store = SqliteChatIndex::open(&path).await.unwrap();
            assert_eq!(store.path(), path);
            let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
            let messages = store
                .list_messages(&chat.id, &PageRequest::default())
                .await
                .unwrap();
            store.close();
            (chat, messages)
        };
        assert_eq!(messages.items, vec![exchange.agent, exchange.operator]);

        let store = SqliteChatIndex::open(&path).await.unwrap();
        assert_eq!(store.get_chat(&chat.id).await.unwrap(), Some(chat.clone()));
        let reread = store
            .list_messages(&chat.id, &PageRequest::default())
            .await
            .unwrap();
        assert_eq!(reread, messages);
        let page = store.list_chats(&PageRequest::default()).await.unwrap();
        assert_eq!(page.items, vec![chat]);
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_stores_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let (first, second) =
            tokio::join!(SqliteChatIndex::open(&path), SqliteChatIndex::open(&path));
        let (first, second) = (first.unwrap(), second.unwrap());
        let third = SqliteChatIndex::open(&path).await.unwrap();

        let (new_chat, exchange) = exchange_fixture("shared", "ping", "pong");
        let chat = first.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(second.get_chat(&chat.id).await.unwrap(), Some(chat.clone()));
        assert_eq!(third.get_chat(&chat.id).await.unwrap(), Some(chat));

        let conn = raw(&path);
        let version = sofiia_sqlite_support::schema_version(&conn, "chat_index").unwrap();
        assert_eq!(version, Some(SCHEMA.latest()));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('chats', 'messages')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.sqlite3");
        drop(SqliteChatIndex::open(&path).await.unwrap());
        raw(&path)
            .execute_batch("UPDATE sofiia_schema SET version = 99 WHERE store = 'chat_index';")
            .unwrap();
        let err = SqliteChatIndex::open(&path).await.unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_file_of_an_earlier_release_is_kept_and_adopted() {
        // Before stores shared a file, the chat index had one of its own
        // with its version in `user_version`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat-index.db");
        let (new_chat, exchange) = exchange_fixture("earlier", "ping", "pong");
        {
            let conn = raw(&path);
            conn.execute_batch(SCHEMA.migrations[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1;").unwrap();
        }
        let store = SqliteChatIndex::open(&path).await.unwrap();
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(chat.message_count, 2);
        let version = sofiia_sqlite_support::schema_version(&raw(&path), "chat_index").unwrap();
        assert_eq!(version, Some(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_shares_a_file_and_its_commits_with_other_stores() {
        static OTHER: Schema = Schema {
            store: "other",
            marker: "other",
            migrations: &["CREATE TABLE other (x INTEGER NOT NULL) STRICT;"],
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("console.db"), DatabaseOptions::default())
            .await
            .unwrap();
        db.migrate(&OTHER).await.unwrap();
        let store = SqliteChatIndex::in_database(&db).await.unwrap();
        let (new_chat, exchange) = exchange_fixture("together", "ping", "pong");
        let before = db.writer().stats();
        let (chat, other) = tokio::join!(
            store.append_exchange(new_chat, &exchange),
            db.writer().write(|conn| {
                conn.execute("INSERT INTO other (x) VALUES (1)", [])
                    .map_err(sofiia_sqlite_support::Error::from)
            }),
        );
        assert_eq!(chat.unwrap().message_count, 2);
        assert_eq!(other.unwrap(), 1);
        assert_eq!(db.writer().stats().writes - before.writes, 2);
        // Closing the store closes the file for everyone in it.
        store.close();
        let err = db
            .writer()
            .write(|_| Ok::<_, sofiia_sqlite_support::Error>(()))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused() {
        // Each pooled connection would get a database of its own.
        let err = SqliteChatIndex::open(":memory:").await.unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_store_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChatIndex::open(dir.path().join("closed.sqlite3"))
            .await
            .unwrap();
        store.close();
        let err = store.check().await.unwrap_err();
        assert!(matches!(err, ChatIndexError::Unavailable { .. }), "{err:?}");
        let (new_chat, exchange) = exchange_fixture("late", "ping", "pong");
        let err = store
            .append_exchange(new_chat, &exchange)
            .await
            .unwrap_err();
        assert!(matches!(err, ChatIndexError::Unavailable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_write_lock_held_elsewhere_is_unavailable_for_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.sqlite3");
        let options = SqliteOptions::default().with_busy_timeout(Duration::from_millis(50));
        let store = SqliteChatIndex::open_with(&path, options).await.unwrap();
        let (new_chat, exchange) = exchange_fixture("locked", "ping", "pong");
        let chat = store.create_chat(new_chat.clone()).await.unwrap();

        let other = raw(&path);
        other.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let err = store
            .append_exchange(new_chat, &exchange)
            .await
            .unwrap_err();
        assert!(matches!(err, ChatIndexError::Unavailable { .. }), "{err:?}");
        assert_eq!(
            sofiia_sqlite_support::sqlite_error_code(&err),
            Some(ErrorCode::DatabaseBusy),
            "the chain keeps the driver error"
        );
        // WAL: readers are not blocked by a writer.
        assert_eq!(store.get_chat(&chat.id).await.unwrap(), Some(chat.clone()));
        other.execute_batch("ROLLBACK;").unwrap();

        let (new_chat, exchange) = exchange_fixture("locked", "ping", "pong");
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(
            chat.message_count, 2,
            "the refused write left nothing behind"
        );
    }

    #[tokio::test]
    async fn a_corrupt_row_is_a_backend_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.sqlite3");
        let store = SqliteChatIndex::open(&path).await.unwrap();
        raw(&path)
            .execute(
                "INSERT INTO chats (id, title, node, created_at, updated_at, message_count)
                 VALUES ('fine', NULL, 'not a node', 0, 0, 0)",
                [],
            )
            .unwrap();
        let id = ChatId::new("fine").unwrap();
        let err = store.get_chat(&id).await.unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
        let cause = err.source().and_then(|e| e.source());
        assert!(
            cause.is_some_and(|e| e.downcast_ref::<ValidationError>().is_some()),
            "the chain names the validation failure: {err:?}"
        );
        let err = store.list_chats(&PageRequest::default()).await.unwrap_err();
        assert!(matches!(err, ChatIndexError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn debug_shows_the_path_and_pools() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChatIndex::open(dir.path().join("debug.sqlite3"))
            .await
            .unwrap();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("debug.sqlite3") && debug.contains("max_size"),
            "{debug}"
        );
    }
}
