//! The SQLite backend.
//!
//! Writes (appends, prunes, checkpoints, vacuum steps) go to one writer
//! thread that owns the write connection
//! ([`Writer`](sofiia_sqlite_support::Writer)); reads go to a pool of read
//! connections. See [`SqliteAuditStore`] for the group commit this enables.

use std::error::Error as StdError;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_sqlite::PoolError;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sofiia_core_domain::{DynClock, Page, SystemClock, Timestamp};
use sofiia_sqlite_support::{Database, DatabaseOptions, Durability, Schema, WriterOptions, ping};

use crate::canonical::{ChainCheck, GENESIS_HASH, compute_hash, outcome_str};
use crate::stored::{CorruptColumn, StoredEvent};
use crate::{
    Anchor, AuditError, AuditEvent, AuditQuery, AuditStore, BreakReason, NewEvent, PruneBatch,
    Result, Verification,
};

/// The schema, one entry per version, recorded in the file's
/// `sofiia_schema` table. Entries are never edited once released, only
/// appended.
static SCHEMA: Schema = Schema {
    store: "audit",
    marker: "events",
    migrations: &[
        "-- AUTOINCREMENT: an id is never given twice, also after the newest
    -- events were pruned (plain rowids would reuse the highest deleted one).
    CREATE TABLE events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        ts         INTEGER NOT NULL, -- Unix milliseconds
        actor      TEXT    NOT NULL,
        action     TEXT    NOT NULL,
        target     TEXT    NOT NULL,
        outcome    TEXT    NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
        status     INTEGER CHECK (status BETWEEN 0 AND 65535),
        request_id TEXT,
        node       TEXT,
        source_ip  TEXT,
        user_agent TEXT,
        details    TEXT    NOT NULL, -- a JSON object, as serde_json writes it
        prev_hash  TEXT    NOT NULL,
        hash       TEXT    NOT NULL
    ) STRICT;
    -- Newest first is the rowid itself; each filter has an index ending in
    -- the id, so that a filtered page is read in id order without a sort.
    CREATE INDEX events_by_actor  ON events (actor, id);
    CREATE INDEX events_by_action ON events (action, id);
    CREATE INDEX events_by_ts     ON events (ts, id);

    -- One row per prune batch: the latest (highest last_deleted_id) is where
    -- the kept chain starts.
    CREATE TABLE anchor (
        last_deleted_id INTEGER PRIMARY KEY,
        hash            TEXT    NOT NULL, -- that event's hash
        pruned_at       INTEGER NOT NULL, -- Unix milliseconds
        cutoff          INTEGER NOT NULL, -- Unix milliseconds
        deleted         INTEGER NOT NULL
    ) STRICT;",
    ],
};

/// The events' table, as errors name it.
const EVENTS: &str = "events";
const COLUMNS: &str = "id, ts, actor, action, target, outcome, status, request_id, node, \
    source_ip, user_agent, details, prev_hash, hash";
const INSERT_EVENT: &str = "INSERT INTO events
    (ts, actor, action, target, outcome, status, request_id, node, source_ip, user_agent,
     details, prev_hash, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const TAIL_HASH: &str = "SELECT hash FROM events ORDER BY id DESC LIMIT 1";
const LATEST_ANCHOR: &str = "SELECT last_deleted_id, hash, pruned_at, cutoff, deleted
    FROM anchor
    ORDER BY last_deleted_id DESC
    LIMIT 1";
// Pruning and counting walk the chain from its oldest event (the rowid
// order) and stop at the first event that is not older than the cutoff;
// `NOT INDEXED` keeps the planner from trading that early stop for a scan of
// `events_by_ts`, which could not stop early.
const PRUNE_SCAN: &str = "SELECT id, ts FROM events NOT INDEXED ORDER BY id LIMIT ?1";
const EVENT_HASH: &str = "SELECT hash FROM events WHERE id = ?1";
const DELETE_UP_TO: &str = "DELETE FROM events WHERE id <= ?1";
const INSERT_ANCHOR: &str = "INSERT INTO anchor (last_deleted_id, hash, pruned_at, cutoff, deleted)
    VALUES (?1, ?2, ?3, ?4, ?5)";
// The count reads the rowid range of the prefix, whose size is the answer:
// forced, since with statistics the planner may prefer a skip-scan of a
// small index, whose cost grows with the whole table instead.
const COUNT_BEFORE: &str = "SELECT count(*) FROM events NOT INDEXED
    WHERE id < ifnull(
        (SELECT id FROM events NOT INDEXED WHERE ts >= ?1 ORDER BY id LIMIT 1),
        9223372036854775807)";
const VERIFY_SCAN: &str = "SELECT id, ts, actor, action, target, outcome, status, request_id, \
    node, source_ip, user_agent, details, prev_hash, hash FROM events ORDER BY id";

/// How [`SqliteAuditStore::open_with`] sets up the store.
///
/// Start from [`SqliteOptions::default`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use sofiia_audit_store::SqliteOptions;
///
/// let options = SqliteOptions::default().with_busy_timeout(Duration::from_secs(2));
/// assert_eq!(options.max_batch.get(), 1024);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How many connections serve reads, which WAL lets run beside the
    /// writer. Default 4.
    pub read_connections: NonZeroUsize,
    /// How long a statement waits for a lock held by another connection or
    /// process before the call fails with [`AuditError::Unavailable`].
    /// Default 5 s.
    pub busy_timeout: Duration,
    /// How long a read waits for a free read connection before it fails
    /// with [`AuditError::Unavailable`]. Default 5 s.
    pub acquire_timeout: Duration,
    /// The most appends one transaction commits; more waiting appends go to
    /// the next. Default 1024.
    pub max_batch: NonZeroUsize,
    /// How many writes may wait for the writer; an append beyond that waits
    /// (asynchronously) for room, which pushes back on callers when the disk
    /// is slower than they are. Default 4096.
    pub queue_capacity: NonZeroUsize,
    /// Where [`Anchor::pruned_at`] comes from. Default [`SystemClock`].
    pub clock: Arc<DynClock>,
    /// Whether opening a file made before incremental vacuum existed
    /// converts it (one full `VACUUM`, which holds the write lock while it
    /// rewrites the file). Default `false`: only the process that owns the
    /// file, at start and before it serves, should do that.
    pub convert_for_incremental_vacuum: bool,
}

const fn non_zero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            read_connections: non_zero(4),
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            max_batch: non_zero(1024),
            queue_capacity: non_zero(4096),
            clock: Arc::new(SystemClock),
            convert_for_incremental_vacuum: false,
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

    /// These options with another [`max_batch`](Self::max_batch).
    #[must_use]
    pub fn with_max_batch(mut self, n: NonZeroUsize) -> Self {
        self.max_batch = n;
        self
    }

    /// These options with another [`queue_capacity`](Self::queue_capacity).
    #[must_use]
    pub fn with_queue_capacity(mut self, n: NonZeroUsize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// These options with another [`clock`](Self::clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<DynClock>) -> Self {
        self.clock = clock;
        self
    }

    /// These options with
    /// [`convert_for_incremental_vacuum`](Self::convert_for_incremental_vacuum)
    /// set.
    #[must_use]
    pub fn with_vacuum_conversion(mut self, convert: bool) -> Self {
        self.convert_for_incremental_vacuum = convert;
        self
    }
}

/// What the file's writer has done since it was opened, from
/// [`SqliteAuditStore::group_commit_stats`]. In a file other stores share,
/// the transactions and the queue are theirs too; the events are this
/// store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Events this store appended; in a file of its own, `events /
    /// transactions` is the mean batch size.
    pub events: u64,
    /// Transactions that failed (every write in them failed).
    pub failed_transactions: u64,
    /// Writes handed to the writer and not answered yet.
    pub queued: u64,
}

/// The result of [`SqliteAuditStore::checkpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Whether every frame of the WAL was copied into the database. `false`
    /// when a reader of an older snapshot or a writer elsewhere kept some
    /// from being copied; run it again later.
    pub complete: bool,
    /// Frames in the WAL file.
    pub wal_frames: u64,
    /// Of those, frames copied into the database.
    pub checkpointed_frames: u64,
}

/// The result of [`SqliteAuditStore::vacuum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Vacuumed {
    /// Whether the file is set up for incremental vacuum. A file made
    /// before it was is converted when the console starts (see
    /// [`SqliteOptions::convert_for_incremental_vacuum`]); until then
    /// nothing is freed.
    pub incremental: bool,
    /// Pages given back to the file system.
    pub pages_freed: u64,
    /// Steps (short write transactions) it took.
    pub steps: u64,
    /// Free pages left in the file (0 unless a step was refused).
    pub free_pages_left: u64,
}

/// Pages one [`SqliteAuditStore::vacuum`] step gives back: 1 MiB at
/// SQLite's default 4 KiB page, a few milliseconds of work, so that a step
/// holds the write lock far shorter than any writer's busy timeout.
pub const VACUUM_STEP_PAGES: u32 = 256;

/// An audit trail in one SQLite file, the console's default backend.
///
/// **Durability.** The file is in WAL mode with `synchronous = FULL`: every
/// commit is flushed to disk (`fsync`) before [`append`](AuditStore::append)
/// returns, so an event whose action was answered survives a power loss, not
/// only a crash of the process. (`NORMAL` would lose the last commits on
/// power loss; the audit trail must not.)
///
/// **Group commit.** What makes `FULL` affordable: appends do not each get a
/// transaction. One writer thread owns the write connection
/// ([`Writer`](sofiia_sqlite_support::Writer)); it takes the first waiting
/// append and every other append already waiting (up to
/// [`SqliteOptions::max_batch`]), chains and inserts them all in one
/// `BEGIN IMMEDIATE` transaction, each in a savepoint of its own, commits
/// (one `fsync` for the whole batch) and only then answers each caller. The
/// chain's tail is read inside that transaction, so another process
/// appending to the same file (the prune command recording its own event)
/// extends the same chain. If the transaction fails, every caller in it gets
/// the error and nothing of the batch is stored. Prunes, checkpoints and
/// vacuum steps go through the same thread, so this process never competes
/// with itself for the write lock.
///
/// **Reads** ([`read`](AuditStore::read), [`count_before`](AuditStore::count_before),
/// [`verify`](AuditStore::verify)) use a pool of read-only connections,
/// which WAL lets run beside the writer. No SQLite call runs on an async
/// worker thread.
///
/// **Query plans.** Newest first is the rowid order. A filter on `actor`
/// uses `events_by_actor (actor, id)`, else one on `action` uses
/// `events_by_action (action, id)`: either yields the page in id order and
/// stops after it. A time filter with a `since` uses `events_by_ts (ts, id)`
/// and sorts the events of the window by id (so it costs the size of the
/// window); an `until` alone scans the rowid newest first from the window's
/// upper edge.
///
/// Several stores, even in several processes, may open one file; they share
/// one chain. The file may hold other stores' tables too
/// ([`in_database`](Self::in_database)): the console keeps its keys, chats
/// and audit trail in one file, whose writes share transactions.
///
/// Drop the store where a tokio runtime is current: its read connections
/// are closed on the runtime's blocking pool.
///
/// ```
/// use sofiia_audit_store::{AuditStore, SqliteAuditStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteAuditStore::open(dir.path().join("data/audit.sqlite3")).await?;
/// store.check().await?;
/// # Ok(())
/// # }
/// ```
pub struct SqliteAuditStore {
    db: Database,
    /// Appends committed.
    events: AtomicU64,
    /// Where [`Anchor::pruned_at`] comes from.
    clock: Arc<DynClock>,
}

impl fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteAuditStore")
            .field("db", &self.db)
            .field("events", &self.events)
            .finish()
    }
}

impl SqliteAuditStore {
    /// Opens the audit store at `path` with [`SqliteOptions::default`],
    /// creating the file and its parent directories if missing and bringing
    /// the schema up to date.
    ///
    /// # Errors
    ///
    /// [`AuditError::Unavailable`] if the file stays locked by someone else
    /// for longer than the busy timeout; [`AuditError::Backend`] if the
    /// directory or file cannot be created or opened, the file is not a
    /// database of this schema (or of a newer one), WAL mode cannot be set
    /// (as for `:memory:`), or the writer thread cannot be started.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Like [`open`](Self::open), with explicit options.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(Self::try_open(path.as_ref().to_owned(), options).await?)
    }

    async fn try_open(path: PathBuf, options: SqliteOptions) -> Result<Self, SqliteError> {
        let file = DatabaseOptions::default()
            .with_busy_timeout(options.busy_timeout)
            .with_read_connections(options.read_connections)
            .with_acquire_timeout(options.acquire_timeout)
            .with_writer(
                WriterOptions::default()
                    .with_max_batch(options.max_batch.get())
                    .with_queue_capacity(options.queue_capacity.get()),
            );
        let db = Database::open(path, file).await?;
        Self::try_in_database(&db, options).await
    }

    /// Keeps the trail in `db`, a file other stores may share: their writes
    /// and this store's are committed together, and its readers serve them
    /// all (see [`Database`]). Creates or brings up to date this store's
    /// tables only. Of `options`, only [`clock`](SqliteOptions::clock) and
    /// [`convert_for_incremental_vacuum`](SqliteOptions::convert_for_incremental_vacuum)
    /// apply: the rest are the file's, set when it was opened.
    ///
    /// # Errors
    ///
    /// [`AuditError::Unavailable`] if the file stays locked by someone else
    /// for longer than the busy timeout or is closed; [`AuditError::Backend`]
    /// if it holds tables of this store that no known schema version
    /// describes, or a newer version.
    pub async fn in_database(db: &Database, options: SqliteOptions) -> Result<Self> {
        Ok(Self::try_in_database(db, options).await?)
    }

    async fn try_in_database(db: &Database, options: SqliteOptions) -> Result<Self, SqliteError> {
        if options.convert_for_incremental_vacuum {
            db.writer()
                .exclusive(|conn| {
                    let auto_vacuum: i64 =
                        conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
                    if auto_vacuum.cast_unsigned() != INCREMENTAL {
                        // A file made before incremental vacuum: one full
                        // VACUUM switches it. (A new file is set up so.)
                        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
                    }
                    Ok::<_, SqliteError>(())
                })
                .await?;
        }
        db.migrate(&SCHEMA).await?;
        let store = Self {
            db: db.clone(),
            events: AtomicU64::new(0),
            clock: options.clock,
        };
        store.with_read(ping).await?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// What group commit has done so far: transactions, events, failures
    /// and the current queue.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        let writer = self.db.writer().stats();
        GroupCommitStats {
            transactions: writer.transactions,
            events: self.events.load(Ordering::SeqCst),
            failed_transactions: writer.failed_transactions,
            queued: writer.queued,
        }
    }

    /// The latest prune's anchor, or `None` if nothing was ever pruned.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub async fn anchor(&self) -> Result<Option<Anchor>> {
        Ok(self.with_read(|conn| latest_anchor(conn)).await?)
    }

    /// Copies what it can of the WAL into the database file
    /// (`PRAGMA wal_checkpoint(PASSIVE)`), for example after a large prune,
    /// so that the WAL can be reused from its start. It never waits for
    /// readers or writers and never blocks them; frames a reader still needs
    /// are left for a later checkpoint. The WAL file is cut back to 64 MiB
    /// (`journal_size_limit`) the next time it is reused.
    ///
    /// # Errors
    ///
    /// A backend error. A checkpoint that could not copy every frame is not
    /// an error but [`Checkpoint::complete`] `false`.
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.db.writer().exclusive(|conn| checkpoint(conn)).await?)
    }

    /// Gives the pages that pruning freed back to the file system, in steps
    /// of [`VACUUM_STEP_PAGES`] pages (`PRAGMA incremental_vacuum`), each
    /// its own short write transaction, with `pause` between steps. Writers
    /// of this process and of others (the console, while `prune-audit`
    /// runs) wait for one step at most, never for the whole run: unlike a
    /// full `VACUUM`, which holds the write lock while it rewrites the file.
    /// Ids keep increasing afterwards.
    ///
    /// # Errors
    ///
    /// A backend error (such as a write lock held elsewhere for longer than
    /// the busy timeout); what earlier steps freed stays freed.
    pub async fn vacuum(&self, pause: Duration) -> Result<Vacuumed> {
        let mut done = Vacuumed {
            incremental: true,
            pages_freed: 0,
            steps: 0,
            free_pages_left: 0,
        };
        loop {
            let step: VacuumStep = self
                .db
                .writer()
                .exclusive(|conn| vacuum_step(conn, VACUUM_STEP_PAGES))
                .await?;
            done.incremental = step.incremental;
            done.free_pages_left = step.free_after;
            if !step.incremental {
                return Ok(done);
            }
            done.pages_freed += step.freed;
            done.steps += 1;
            if step.free_after == 0 || step.freed == 0 {
                return Ok(done);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Stops the store: calls in flight finish, later calls fail with
    /// [`AuditError::Unavailable`]. This closes the file for every store
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

    async fn append_with(&self, durability: Durability, event: NewEvent) -> Result<AuditEvent> {
        let stored = self
            .db
            .writer()
            .write_with(durability, move |conn| append(conn, event))
            .await?;
        self.events.fetch_add(1, Ordering::SeqCst);
        Ok(stored)
    }
}

#[async_trait]
impl AuditStore for SqliteAuditStore {
    async fn append(&self, event: NewEvent) -> Result<AuditEvent> {
        self.append_with(Durability::Synced, event).await
    }

    async fn append_committed(&self, event: NewEvent) -> Result<AuditEvent> {
        self.append_with(Durability::Committed, event).await
    }

    async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let (sql, values) = read_statement(query);
        let items = self
            .with_read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(values), read_event)?;
                let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
                rows.into_iter()
                    .map(|row| Ok(row.into_event(EVENTS)?))
                    .collect()
            })
            .await?;
        Ok(Page::from_overfetch(items, query.limit, AuditEvent::cursor))
    }

    async fn count_before(&self, cutoff: Timestamp) -> Result<u64> {
        let count: i64 = self
            .with_read(move |conn| {
                Ok(conn
                    .prepare_cached(COUNT_BEFORE)?
                    .query_row([cutoff.as_unix_millis()], |r| r.get(0))?)
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn prune_batch(&self, cutoff: Timestamp, batch: u32) -> Result<PruneBatch> {
        let now = self.clock.now();
        Ok(self
            .db
            .writer()
            .write(move |conn| prune(conn, cutoff, batch, now))
            .await?)
    }

    async fn verify(&self) -> Result<Verification> {
        Ok(self.with_read(verify_chain).await?)
    }

    async fn check(&self) -> Result<()> {
        self.db.writer().exclusive(ping::<SqliteError>).await?;
        Ok(self.with_read(ping).await?)
    }
}

// ---------------------------------------------------------------------------
// Writes, each run by the writer inside its batch's transaction.

/// Stores `event`, chained after the current tail: read inside the
/// transaction, so it sees the appends of this batch before it and those of
/// other processes.
fn append(conn: &Connection, event: NewEvent) -> Result<AuditEvent, SqliteError> {
    let prev_hash = tail_hash(conn)?;
    let hash = compute_hash(&prev_hash, &event);
    let details = serde_json::to_string(&event.details).map_err(SqliteError::Details)?;
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        event.ts.as_unix_millis(),
        event.actor,
        event.action,
        event.target,
        outcome_str(event.outcome),
        event.status,
        event.request_id,
        event.node,
        event.source_ip,
        event.user_agent,
        details,
        prev_hash,
        hash,
    ])?;
    let id =
        u64::try_from(conn.last_insert_rowid()).map_err(|_| SqliteError::corrupt("events.id"))?;
    Ok(AuditEvent {
        id,
        event,
        prev_hash,
        hash,
    })
}

/// The hash the next event chains from: the newest event's, else the
/// latest anchor's, else the genesis hash.
fn tail_hash(conn: &Connection) -> Result<String, SqliteError> {
    if let Some(hash) = conn
        .prepare_cached(TAIL_HASH)?
        .query_row([], |r| r.get(0))
        .optional()?
    {
        return Ok(hash);
    }
    Ok(latest_anchor(conn)?.map_or_else(|| GENESIS_HASH.to_owned(), |a| a.hash))
}

fn latest_anchor(conn: &Connection) -> Result<Option<Anchor>, SqliteError> {
    let row = conn
        .prepare_cached(LATEST_ANCHOR)?
        .query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((last_deleted_id, hash, pruned_at, cutoff, deleted)) = row else {
        return Ok(None);
    };
    let time = |column, ms| {
        Timestamp::from_unix_millis(ms).map_err(|e| SqliteError::CorruptRow {
            column,
            source: Some(Box::new(e)),
        })
    };
    Ok(Some(Anchor {
        last_deleted_id: u64::try_from(last_deleted_id)
            .map_err(|_| SqliteError::corrupt("anchor.last_deleted_id"))?,
        hash,
        pruned_at: time("anchor.pruned_at", pruned_at)?,
        cutoff: time("anchor.cutoff", cutoff)?,
        deleted: u64::try_from(deleted).map_err(|_| SqliteError::corrupt("anchor.deleted"))?,
    }))
}

/// One prune batch: deletes the oldest events, up to `batch`, while they
/// are older than `cutoff`, and records the anchor, in one transaction.
fn prune(
    conn: &Connection,
    cutoff: Timestamp,
    batch: u32,
    now: Timestamp,
) -> Result<PruneBatch, SqliteError> {
    let cutoff_ms = cutoff.as_unix_millis();
    let mut taken = 0_u32;
    let mut last = None;
    let mut more = false;
    {
        let mut scan = conn.prepare_cached(PRUNE_SCAN)?;
        // One row past the batch tells whether another batch is due.
        let mut rows = scan.query([i64::from(batch) + 1])?;
        while let Some(row) = rows.next()? {
            let (id, ts): (i64, i64) = (row.get(0)?, row.get(1)?);
            if ts >= cutoff_ms {
                break;
            }
            if taken == batch {
                more = true;
                break;
            }
            taken += 1;
            last = Some(id);
        }
    }
    let Some(last) = last else {
        return Ok(PruneBatch { deleted: 0, more });
    };
    let hash: String = conn
        .prepare_cached(EVENT_HASH)?
        .query_row([last], |r| r.get(0))?;
    let deleted = conn.prepare_cached(DELETE_UP_TO)?.execute([last])?;
    let deleted = i64::try_from(deleted).unwrap_or(i64::MAX);
    conn.prepare_cached(INSERT_ANCHOR)?.execute(params![
        last,
        hash,
        now.as_unix_millis(),
        cutoff_ms,
        deleted
    ])?;
    Ok(PruneBatch {
        deleted: u64::try_from(deleted).unwrap_or(0),
        more,
    })
}

fn checkpoint(conn: &Connection) -> Result<Checkpoint, SqliteError> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(Checkpoint {
        complete: busy == 0 && log == done,
        // -1 means "not in WAL mode", which `open` rules out.
        wal_frames: u64::try_from(log).unwrap_or(0),
        checkpointed_frames: u64::try_from(done).unwrap_or(0),
    })
}

/// What one incremental vacuum step did.
struct VacuumStep {
    incremental: bool,
    /// Pages the file shrank by.
    freed: u64,
    /// Free pages left.
    free_after: u64,
}

fn pragma_int(conn: &Connection, name: &str) -> Result<u64, SqliteError> {
    let n: i64 = conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Gives back up to `pages` free pages in one short write transaction,
/// which also makes the counts before and after exact while other
/// processes write.
fn vacuum_step(conn: &Connection, pages: u32) -> Result<VacuumStep, SqliteError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let step = (|| {
        let incremental = pragma_int(conn, "auto_vacuum")? == INCREMENTAL;
        let before = pragma_int(conn, "page_count")?;
        if incremental && pragma_int(conn, "freelist_count")? > 0 {
            // The pragma frees one page per row it steps through: step it
            // to the end, or only one page goes.
            let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok(VacuumStep {
            incremental,
            freed: before.saturating_sub(pragma_int(conn, "page_count")?),
            free_after: pragma_int(conn, "freelist_count")?,
        })
    })();
    match step {
        Ok(step) => {
            conn.execute_batch("COMMIT")?;
            Ok(step)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// `PRAGMA auto_vacuum` of a file set up for incremental vacuum.
const INCREMENTAL: u64 = 2;

/// Walks the chain from the latest anchor in one read transaction, so that
/// concurrent appends and prunes are either wholly seen or not at all. Rows
/// are streamed, not loaded at once.
fn verify_chain(conn: &mut Connection) -> Result<Verification, SqliteError> {
    let tx = conn.transaction()?;
    let anchor = latest_anchor(&tx)?;
    let mut chain = ChainCheck::new(anchor.as_ref().map(|a| a.hash.as_str()));
    let mut stmt = tx.prepare(VERIFY_SCAN)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let raw = read_event(row)?;
        let id = u64::try_from(raw.id).map_err(|_| SqliteError::corrupt("events.id"))?;
        let broken = |reason| Verification::Broken { id, reason };
        if let Some(reason) = chain.check_link(&raw.prev_hash) {
            return Ok(broken(reason));
        }
        let Ok(event) = raw.into_event(EVENTS) else {
            return Ok(broken(BreakReason::Unreadable));
        };
        if let Some(reason) = chain.check(&event) {
            return Ok(broken(reason));
        }
    }
    Ok(chain.intact())
}

// ---------------------------------------------------------------------------
// Reads.

/// The statement and parameters of a read: only the filters present appear
/// in the SQL, so that each combination gets its own plan (and cached
/// statement) instead of one plan with `? IS NULL OR ...` that can use no
/// index.
fn read_statement(query: &AuditQuery) -> (String, Vec<SqlValue>) {
    // Which index serves the page; see "Query plans" on SqliteAuditStore.
    // Forced, so that statistics from an `ANALYZE` cannot change the plan.
    let uses_ts_index = query.actor.is_none() && query.action.is_none() && query.since.is_some();
    let index = if query.actor.is_some() {
        "INDEXED BY events_by_actor"
    } else if query.action.is_some() {
        "INDEXED BY events_by_action"
    } else if query.since.is_some() {
        "INDEXED BY events_by_ts"
    } else {
        "NOT INDEXED"
    };
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    if let Some(actor) = &query.actor {
        conditions.push("actor = ?");
        values.push(SqlValue::Text(actor.clone()));
    }
    if let Some(action) = &query.action {
        conditions.push("action = ?");
        values.push(SqlValue::Text(action.clone()));
    }
    if let Some(since) = query.since {
        conditions.push("ts >= ?");
        values.push(SqlValue::Integer(since.as_unix_millis()));
    }
    if let Some(until) = query.until {
        conditions.push("ts < ?");
        values.push(SqlValue::Integer(until.as_unix_millis()));
    }
    if let Some(before) = query.before_id {
        // With `events_by_ts`, a bare `id < ?` invites a skip-scan of the
        // index over every distinct time (the planner's choice once
        // `ANALYZE` has seen few distinct times), which ignores the window;
        // the unary `+` keeps the term a plain filter. The other indexes end
        // in the id and use the term as a range.
        conditions.push(if uses_ts_index { "+id < ?" } else { "id < ?" });
        // No stored id exceeds i64::MAX, so clamping keeps the meaning.
        values.push(SqlValue::Integer(i64::try_from(before).unwrap_or(i64::MAX)));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    // The extra row only proves that another page exists (`Page::from_overfetch`).
    values.push(SqlValue::Integer(
        i64::try_from(query.limit.get() + 1).unwrap_or(i64::MAX),
    ));
    let sql = format!("SELECT {COLUMNS} FROM events {index} {filter} ORDER BY id DESC LIMIT ?");
    (sql, values)
}

/// An `events` row, read column by column.
fn read_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        ts: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        outcome: row.get(5)?,
        status: row.get(6)?,
        request_id: row.get(7)?,
        node: row.get(8)?,
        source_ip: row.get(9)?,
        user_agent: row.get(10)?,
        details: row.get(11)?,
        prev_hash: row.get(12)?,
        hash: row.get(13)?,
    })
}

// ---------------------------------------------------------------------------
// Connections.

// ---------------------------------------------------------------------------
// Errors.

/// What went wrong inside this backend; converted to [`AuditError`] at the
/// trait boundary, and kept as its source.
#[derive(Debug, thiserror::Error)]
enum SqliteError {
    // The driver and the shared plumbing; transparent, so that the chain
    // reads as if their variants were this enum's.
    #[error(transparent)]
    Sqlite(#[from] sofiia_sqlite_support::Error),
    #[error("no SQLite read connection could be had")]
    Pool(#[from] PoolError),
    #[error("event details could not be serialised")]
    Details(#[source] serde_json::Error),
    #[error(transparent)]
    Stored(#[from] CorruptColumn),
    #[error("a stored value of {column} is invalid")]
    CorruptRow {
        column: &'static str,
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
}

impl SqliteError {
    fn corrupt(column: &'static str) -> Self {
        SqliteError::CorruptRow {
            column,
            source: None,
        }
    }

    /// Whether a later retry may succeed: the file or the pool was busy,
    /// the disk full, or the store is shut down.
    fn is_transient(&self) -> bool {
        match self {
            SqliteError::Sqlite(e) => e.is_transient(),
            SqliteError::Pool(e) => sofiia_sqlite_support::pool_error_is_transient(e),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for SqliteError {
    fn from(err: rusqlite::Error) -> Self {
        SqliteError::Sqlite(err.into())
    }
}

impl From<SqliteError> for AuditError {
    fn from(err: SqliteError) -> Self {
        if err.is_transient() {
            AuditError::Unavailable {
                source: Box::new(err),
            }
        } else {
            AuditError::Backend {
                source: Box::new(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::error::Error as _;
    use std::sync::atomic::AtomicBool;

    use rusqlite::ErrorCode;
    use sofiia_core_domain::{ManualClock, PageLimit};

    use super::*;
    use crate::testing::Fixture;

    crate::audit_store_tests!(
        async fn store() -> crate::testing::TestStore {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteAuditStore::open(dir.path().join("audit.sqlite3"))
                .await
                .expect("open a fresh SQLite audit store");
            crate::testing::TestStore::with_guard(store, dir)
        }
    );

    /// A plain connection to the file, beside the store's: another process,
    /// or someone with access to the file.
    fn raw(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn
    }

    async fn fresh(name: &str) -> (tempfile::TempDir, PathBuf, SqliteAuditStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let store = SqliteAuditStore::open(&path).await.unwrap();
        (dir, path, store)
    }

    async fn append_n(store: &SqliteAuditStore, fx: &Fixture, n: u64) -> Vec<AuditEvent> {
        let mut stored = Vec::new();
        for i in 0..n {
            stored.push(store.append(fx.event(i)).await.unwrap());
        }
        stored
    }

    /// An event's id as SQLite stores it.
    fn rid(event: &AuditEvent) -> i64 {
        i64::try_from(event.id).unwrap()
    }

    fn everything() -> AuditQuery {
        AuditQuery {
            limit: PageLimit::new(200).unwrap(),
            ..AuditQuery::default()
        }
    }

    #[tokio::test]
    async fn verify_names_a_row_whose_content_was_edited() {
        let (_dir, path, store) = fresh("edited.sqlite3").await;
        let stored = append_n(&store, &Fixture::new(), 5).await;
        let edited = raw(&path)
            .execute(
                "UPDATE events SET action = 'chat.forged' WHERE id = ?1",
                [rid(&stored[2])],
            )
            .unwrap();
        assert_eq!(edited, 1);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[2].id,
                reason: BreakReason::HashMismatch
            }
        );
    }

    #[tokio::test]
    async fn verify_names_the_row_after_a_deleted_one() {
        let (_dir, path, store) = fresh("deleted.sqlite3").await;
        let stored = append_n(&store, &Fixture::new(), 5).await;
        raw(&path)
            .execute("DELETE FROM events WHERE id = ?1", [rid(&stored[2])])
            .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[3].id,
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[tokio::test]
    async fn verify_detects_tampering_with_the_chain_ends_and_the_anchor() {
        let fx = Fixture::new();
        let (_dir, path, store) = fresh("ends.sqlite3").await;
        let stored = append_n(&store, &fx, 6).await;
        let conn = raw(&path);

        // The newest event edited together with its own hash: it no longer
        // chains... from nothing, since nothing follows it; its content and
        // hash agree, but its link is intact, so only a kept copy of the
        // tail hash would tell. Editing its prev_hash breaks its link.
        conn.execute(
            "UPDATE events SET prev_hash = ?1 WHERE id = ?2",
            params![GENESIS_HASH, rid(&stored[5])],
        )
        .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[5].id,
                reason: BreakReason::PrevHashMismatch
            }
        );
        conn.execute(
            "UPDATE events SET prev_hash = ?1 WHERE id = ?2",
            params![stored[4].hash, rid(&stored[5])],
        )
        .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 6 }
        );

        // Deleting the oldest event without an anchor.
        conn.execute("DELETE FROM events WHERE id = ?1", [rid(&stored[0])])
            .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[1].id,
                reason: BreakReason::PrevHashMismatch
            }
        );

        // A real prune anchors the chain again; deleting that anchor breaks it.
        let (_dir, path, store) = fresh("anchor.sqlite3").await;
        let stored = append_n(&store, &fx, 6).await;
        store.prune_batch(fx.at(2), 100).await.unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 4 }
        );
        raw(&path).execute("DELETE FROM anchor", []).unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[2].id,
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[tokio::test]
    async fn a_row_this_crate_cannot_decode_is_unreadable_not_a_panic() {
        let (_dir, path, store) = fresh("corrupt.sqlite3").await;
        let stored = append_n(&store, &Fixture::new(), 4).await;
        let conn = raw(&path);
        conn.execute(
            "UPDATE events SET details = 'not json' WHERE id = ?1",
            [rid(&stored[1])],
        )
        .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[1].id,
                reason: BreakReason::Unreadable
            }
        );
        let err = store.read(&everything()).await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");
        let cause = err.source().and_then(|e| e.source());
        assert!(
            cause.is_some_and(|e| e.downcast_ref::<serde_json::Error>().is_some()),
            "the chain names the JSON error: {err:?}"
        );

        conn.execute(
            "UPDATE events SET details = '{}', ts = -1 WHERE id = ?1",
            [rid(&stored[1])],
        )
        .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[1].id,
                reason: BreakReason::Unreadable
            }
        );
        let err = store.read(&everything()).await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");

        // The schema refuses what it can: an unknown outcome.
        let refused = conn.execute(
            "UPDATE events SET outcome = 'maybe' WHERE id = ?1",
            [rid(&stored[2])],
        );
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen_and_parent_dirs_are_created() {
        let fx = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not/yet/there/audit.sqlite3");
        let (stored, page, anchor) = {
            let store = SqliteAuditStore::open(&path).await.unwrap();
            assert_eq!(store.path(), path);
            let stored = append_n(&store, &fx, 10).await;
            store.prune_batch(fx.at(3), 100).await.unwrap();
            let page = store.read(&everything()).await.unwrap();
            let anchor = store.anchor().await.unwrap();
            store.close();
            (stored, page, anchor)
        };
        assert_eq!(page.items.len(), 7);
        assert_eq!(
            anchor.as_ref().map(|a| a.last_deleted_id),
            Some(stored[2].id)
        );

        let store = SqliteAuditStore::open(&path).await.unwrap();
        assert_eq!(store.read(&everything()).await.unwrap(), page);
        assert_eq!(store.anchor().await.unwrap(), anchor);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 7 }
        );
        let next = store.append(fx.event(20)).await.unwrap();
        assert!(next.id > stored[9].id);
        assert_eq!(next.prev_hash, stored[9].hash);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 8 }
        );
    }

    /// 200 appends arrive while another connection holds the write lock, so
    /// they all wait for the writer at once; once the lock goes, they are
    /// committed in at most two transactions (the writer's first batch, taken
    /// before the others arrived, and everything that waited behind it),
    /// instead of 200. The condition waited for is a count, not a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_stores_waiting_appends_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.sqlite3");
        let options = SqliteOptions::default().with_busy_timeout(Duration::from_secs(120));
        let store = Arc::new(SqliteAuditStore::open_with(&path, options).await.unwrap());
        let fx = Fixture::new();

        let blocker = raw(&path);
        blocker.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = Arc::clone(&store);
                let event = fx.event_by(i % 7, &format!("op-{}", i % 20), "chat.send");
                tokio::spawn(async move { store.append(event).await })
            })
            .collect();
        while store.group_commit_stats().queued < 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            store.group_commit_stats().transactions,
            0,
            "all still waiting"
        );
        blocker.execute_batch("ROLLBACK;").unwrap();

        let mut ids = HashSet::new();
        for task in tasks {
            let stored = task.await.unwrap().unwrap();
            assert!(ids.insert(stored.id));
        }
        assert_eq!(ids.len(), 200);
        let stats = store.group_commit_stats();
        assert_eq!(stats.events, 200);
        assert_eq!(stats.queued, 0);
        assert_eq!(stats.failed_transactions, 0);
        assert!(
            (1..=2).contains(&stats.transactions),
            "200 waiting appends took {} transactions",
            stats.transactions
        );
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 200 }
        );
    }

    /// While another process holds the write lock past the busy timeout,
    /// every append of every batch fails as `Unavailable` (with the driver
    /// error in its chain) and nothing of those batches is stored; reads go
    /// on meanwhile, and appends work again once the lock goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_fails_every_caller_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.sqlite3");
        let options = SqliteOptions::default().with_busy_timeout(Duration::from_millis(50));
        let store = Arc::new(SqliteAuditStore::open_with(&path, options).await.unwrap());
        let fx = Fixture::new();
        let first = store.append(fx.event(0)).await.unwrap();

        let blocker = raw(&path);
        blocker.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let store = Arc::clone(&store);
                let event = fx.event(i + 1);
                tokio::spawn(async move { store.append(event).await })
            })
            .collect();
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(matches!(err, AuditError::Unavailable { .. }), "{err:?}");
            let code = sofiia_sqlite_support::sqlite_error_code(&err);
            assert_eq!(
                code,
                Some(ErrorCode::DatabaseBusy),
                "the chain keeps the driver error"
            );
        }
        let err = store.prune_batch(fx.at(100), 10).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable { .. }), "{err:?}");
        // WAL: readers are not blocked by a writer.
        assert_eq!(
            store.read(&everything()).await.unwrap().items,
            vec![first.clone()]
        );
        let stats = store.group_commit_stats();
        assert!(stats.failed_transactions >= 1);
        assert_eq!((stats.transactions, stats.events), (1, 1));
        blocker.execute_batch("ROLLBACK;").unwrap();

        let next = store.append(fx.event(50)).await.unwrap();
        assert_eq!(
            next.prev_hash, first.hash,
            "the failed batches left no trace"
        );
        let rows: i64 = raw(&path)
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 2 }
        );
    }

    /// Two stores on one file stand for two processes (the server and the
    /// prune command): whether they take turns or race, there is one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_on_one_file_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let (a, b) = tokio::join!(SqliteAuditStore::open(&path), SqliteAuditStore::open(&path));
        let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
        let fx = Fixture::new();

        let mut previous: Option<AuditEvent> = None;
        for i in 0..20 {
            let store = if i % 2 == 0 { &a } else { &b };
            let stored = store.append(fx.event(i)).await.unwrap();
            if let Some(previous) = &previous {
                assert_eq!(
                    stored.prev_hash, previous.hash,
                    "append {i} chains across stores"
                );
                assert!(stored.id > previous.id);
            }
            previous = Some(stored);
        }

        let racers: Vec<_> = (0..40)
            .map(|i| {
                let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
                let event = fx.event(100 + i);
                tokio::spawn(async move { store.append(event).await })
            })
            .collect();
        // The other process prunes meanwhile.
        let pruned = b.prune_batch(fx.at(10), 1000).await.unwrap();
        assert_eq!(pruned.deleted, 10);
        for racer in racers {
            racer.await.unwrap().unwrap();
        }
        for store in [&a, &b] {
            assert_eq!(
                store.verify().await.unwrap(),
                Verification::Intact { events: 50 }
            );
        }
        let page = a.read(&everything()).await.unwrap();
        let ids: HashSet<u64> = page.items.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 50);
        let anchor = a.anchor().await.unwrap().expect("the prune left an anchor");
        let mut chain = ChainCheck::new(Some(&anchor.hash));
        for event in page.items.iter().rev() {
            assert_eq!(chain.check(event), None, "event {}", event.id);
        }
    }

    #[tokio::test]
    async fn prune_records_an_anchor_per_batch_in_the_same_transaction() {
        let fx = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors.sqlite3");
        let clock = Arc::new(ManualClock::new(fx.at(1000)));
        let options = SqliteOptions::default().with_clock(clock.clone());
        let store = SqliteAuditStore::open_with(&path, options).await.unwrap();
        let stored = append_n(&store, &fx, 10).await;
        assert_eq!(store.anchor().await.unwrap(), None);

        let batch = store.prune_batch(fx.at(7), 4).await.unwrap();
        assert_eq!(
            batch,
            PruneBatch {
                deleted: 4,
                more: true
            }
        );
        clock.advance(Duration::from_secs(5));
        let batch = store.prune_batch(fx.at(7), 4).await.unwrap();
        assert_eq!(
            batch,
            PruneBatch {
                deleted: 3,
                more: false
            }
        );
        assert_eq!(
            store.anchor().await.unwrap(),
            Some(Anchor {
                last_deleted_id: stored[6].id,
                hash: stored[6].hash.clone(),
                pruned_at: fx.at(1005),
                cutoff: fx.at(7),
                deleted: 3,
            })
        );
        let anchors: Vec<(i64, String, i64)> = raw(&path)
            .prepare("SELECT last_deleted_id, hash, deleted FROM anchor ORDER BY last_deleted_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let id = |i: usize| i64::try_from(stored[i].id).unwrap();
        assert_eq!(
            anchors,
            vec![
                (id(3), stored[3].hash.clone(), 4),
                (id(6), stored[6].hash.clone(), 3)
            ]
        );
        // A batch that deletes nothing records nothing.
        store.prune_batch(fx.at(7), 4).await.unwrap();
        let count: i64 = raw(&path)
            .query_row("SELECT count(*) FROM anchor", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }

    #[tokio::test]
    async fn checkpoint_copies_the_wal_and_vacuum_shrinks_the_file_keeping_data_and_ids() {
        let fx = Fixture::new();
        let (_dir, path, store) = fresh("maintenance.sqlite3").await;
        let stored = append_n(&store, &fx, 50).await;
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        let done = store.checkpoint().await.unwrap();
        assert!(done.complete, "{done:?}");
        assert_eq!(done.wal_frames, done.checkpointed_frames);

        // Big events, so that pruning frees many pages.
        let mut big = Vec::new();
        for n in 0..400 {
            let mut event = fx.event(100 + n);
            event.details.insert("pad".into(), "x".repeat(4000).into());
            big.push(store.append(event).await.unwrap());
        }
        store.checkpoint().await.unwrap();
        let pages = |conn: &Connection| {
            (
                conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                    .unwrap(),
                conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
                    .unwrap(),
            )
        };
        let (before, _) = pages(&raw(&path));
        store.prune_batch(fx.at(490), 10_000).await.unwrap();
        let (_, free) = pages(&raw(&path));
        assert!(free > 300, "pruning freed only {free} pages");

        let vacuumed = store.vacuum(Duration::ZERO).await.unwrap();
        assert!(vacuumed.incremental);
        assert!(vacuumed.pages_freed >= free as u64, "{vacuumed:?}");
        assert!(
            vacuumed.steps >= 2,
            "{vacuumed:?}: a step is at most {VACUUM_STEP_PAGES} pages"
        );
        assert_eq!(vacuumed.free_pages_left, 0);
        let (after, free) = pages(&raw(&path));
        assert_eq!(free, 0);
        assert!(after < before - 300, "{before} -> {after} pages");

        let page = store.read(&everything()).await.unwrap();
        assert_eq!(page.items.len(), 10);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 10 }
        );
        let next = store.append(fx.event(600)).await.unwrap();
        assert!(
            next.id > big[399].id && big[399].id > stored[49].id,
            "ids keep increasing"
        );
        assert_eq!(next.prev_hash, big[399].hash);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_made_before_incremental_vacuum_is_converted_only_when_asked() {
        let fx = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A file as an earlier version made it: no auto_vacuum.
        {
            let conn = raw(&path);
            conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
            conn.execute_batch(SCHEMA.migrations[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1;").unwrap();
        }
        let store = SqliteAuditStore::open(&path).await.unwrap();
        store.append(fx.event(1)).await.unwrap();
        let vacuumed = store.vacuum(Duration::ZERO).await.unwrap();
        assert!(!vacuumed.incremental);
        assert_eq!(vacuumed.pages_freed, 0);
        drop(store);

        let store = SqliteAuditStore::open_with(
            &path,
            SqliteOptions::default().with_vacuum_conversion(true),
        )
        .await
        .unwrap();
        assert!(store.vacuum(Duration::ZERO).await.unwrap().incremental);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 1 }
        );
    }

    /// What `prune-audit --vacuum` does to a running console: it prunes in
    /// batches and vacuums in steps from a second store on the file (a
    /// second process, as far as SQLite knows), while the first keeps
    /// appending. Each step holds the write lock briefly, so no append is
    /// turned away, and the vacuum really runs in many steps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_and_vacuum_never_hold_a_writer_past_its_busy_timeout() {
        let fx = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let server = Arc::new(
            SqliteAuditStore::open_with(
                &path,
                SqliteOptions::default().with_busy_timeout(Duration::from_secs(1)),
            )
            .await
            .unwrap(),
        );
        // About 10 MB of old events.
        let pad = "x".repeat(300);
        for chunk in 0..20 {
            let mut appends = tokio::task::JoinSet::new();
            for n in 0..1000 {
                let mut event = fx.event(chunk * 1000 + n);
                event.details.insert("pad".into(), pad.clone().into());
                let server = Arc::clone(&server);
                appends.spawn(async move { server.append(event).await });
            }
            while let Some(stored) = appends.join_next().await {
                stored.unwrap().unwrap();
            }
        }
        let tool = SqliteAuditStore::open(&path).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let server = Arc::clone(&server);
            let stop = Arc::clone(&stop);
            let fx = Fixture::new();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    server
                        .append(fx.event(100_000 + n))
                        .await
                        .unwrap_or_else(|e| panic!("append {n} was refused: {e:?}"));
                    n += 1;
                }
                n
            })
        };
        let cutoff = fx.at(20_000);
        loop {
            let batch = tool.prune_batch(cutoff, 5_000).await.unwrap();
            if !batch.more {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tool.checkpoint().await.unwrap();
        let vacuumed = tool.vacuum(Duration::from_millis(5)).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let appended = writer.await.unwrap();
        assert!(appended > 0);
        assert!(vacuumed.pages_freed > 1_000, "{vacuumed:?}");
        assert!(
            vacuumed.steps * u64::from(VACUUM_STEP_PAGES) >= vacuumed.pages_freed,
            "{vacuumed:?}"
        );
        assert_eq!(
            server.verify().await.unwrap(),
            Verification::Intact { events: appended }
        );
    }

    #[tokio::test]
    async fn a_closed_store_is_unavailable() {
        let (_dir, _path, store) = fresh("closed.sqlite3").await;
        store.close();
        let fx = Fixture::new();
        for err in [
            store.check().await.unwrap_err(),
            store.append(fx.event(0)).await.unwrap_err(),
            store.read(&everything()).await.unwrap_err(),
            store.prune_batch(fx.at(1), 1).await.unwrap_err(),
            store.verify().await.unwrap_err(),
            store.checkpoint().await.unwrap_err(),
        ] {
            assert!(matches!(err, AuditError::Unavailable { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn a_newer_schema_and_an_in_memory_database_are_refused() {
        let (_dir, path, store) = fresh("future.sqlite3").await;
        drop(store);
        raw(&path)
            .execute_batch("UPDATE sofiia_schema SET version = 99 WHERE store = 'audit';")
            .unwrap();
        let err = SqliteAuditStore::open(&path).await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");

        // Each connection would get a database of its own.
        let err = SqliteAuditStore::open(":memory:").await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn the_file_is_in_wal_mode_with_the_schema() {
        let (_dir, path, _store) = fresh("schema.sqlite3").await;
        let conn = raw(&path);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version = sofiia_sqlite_support::schema_version(&conn, "audit").unwrap();
        assert_eq!(version, Some(SCHEMA.latest()));
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            names,
            [
                "anchor",
                "events",
                "events_by_action",
                "events_by_actor",
                "events_by_ts",
                "sofiia_schema"
            ]
        );
    }

    fn plan(conn: &Connection, sql: &str, params: usize) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values = vec![1_i64; params];
        let details: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(values), |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        details.join(" | ")
    }

    fn assert_plans(conn: &Connection) {
        let fx = Fixture::new();
        let mut seen = 0;
        for mask in 0..32_u32 {
            let bit = |b: u32| mask & (1 << b) != 0;
            let query = AuditQuery {
                actor: bit(0).then(|| "alice".to_owned()),
                action: bit(1).then(|| "chat.send".to_owned()),
                since: bit(2).then(|| fx.at(1)),
                until: bit(3).then(|| fx.at(2)),
                before_id: bit(4).then_some(10),
                ..AuditQuery::default()
            };
            let (sql, values) = read_statement(&query);
            let plan = plan(conn, &sql, values.len());
            let rowid = if bit(4) { " AND id<?" } else { "" };
            let expected = if bit(0) {
                format!("SEARCH events USING INDEX events_by_actor (actor=?{rowid})")
            } else if bit(1) {
                format!("SEARCH events USING INDEX events_by_action (action=?{rowid})")
            } else if bit(2) {
                let range = if bit(3) { "ts>? AND ts<?" } else { "ts>?" };
                format!(
                    "SEARCH events USING INDEX events_by_ts ({range}) | USE TEMP B-TREE FOR ORDER BY"
                )
            } else if bit(4) {
                "SEARCH events USING INTEGER PRIMARY KEY (rowid<?)".to_owned()
            } else {
                "SCAN events".to_owned()
            };
            assert_eq!(plan, expected, "{query:?}");
            seen += 1;
        }
        assert_eq!(seen, 32);
        assert_eq!(
            plan(conn, PRUNE_SCAN, 1),
            "SCAN events",
            "pruning walks the rowid from the oldest"
        );
        let count = plan(conn, COUNT_BEFORE, 1);
        assert!(
            count.starts_with("SEARCH events USING INTEGER PRIMARY KEY (rowid<?)"),
            "{count}"
        );
        assert!(!count.contains("events_by_ts"), "{count}");
        assert_eq!(plan(conn, VERIFY_SCAN, 0), "SCAN events");
        assert_eq!(plan(conn, TAIL_HASH, 0), "SCAN events");
        assert_eq!(plan(conn, LATEST_ANCHOR, 0), "SCAN anchor");
    }

    #[tokio::test]
    async fn every_query_uses_its_planned_index() {
        let (_dir, path, store) = fresh("plans.sqlite3").await;
        assert_plans(&raw(&path));
        // Statistics must not change the plans.
        let fx = Fixture::new();
        for i in 0..300 {
            store
                .append(fx.event_by(i % 17, &format!("op-{}", i % 5), "chat.send"))
                .await
                .unwrap();
        }
        let conn = raw(&path);
        conn.execute_batch("ANALYZE;").unwrap();
        assert_plans(&conn);
    }

    #[tokio::test]
    async fn debug_shows_the_path_and_the_writer() {
        let (_dir, _path, store) = fresh("debug.sqlite3").await;
        let debug = format!("{store:?}");
        assert!(
            debug.contains("debug.sqlite3") && debug.contains("WriterStats"),
            "{debug}"
        );
    }
}
