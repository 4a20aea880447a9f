//! The SQLite backend: keys in one file, durable across restarts and crashes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use sofiia_core_domain::{DynClock, SystemClock, Timestamp};
use sofiia_sqlite_support::{Database, DatabaseOptions, Durability, Schema, WriterOptions};

use crate::codec::{decode_headers, encode_headers};
use crate::fingerprint::ttl_millis;
use crate::{
    Fingerprint, IdempotencyError, IdempotencyStore, Lease, LeaseToken, Reservation, Result,
    ScopedKey, StoredResponse,
};

/// The schema, one entry per version, recorded in the file's
/// `sofiia_schema` table. Entries are never edited once released, only
/// appended.
static SCHEMA: Schema = Schema {
    store: "idempotency",
    marker: "idempotency_keys",
    migrations: &["CREATE TABLE idempotency_keys (
        id          INTEGER PRIMARY KEY,
        -- SHA-256 of the principal and the client's key; neither in clear.
        slot        BLOB    NOT NULL UNIQUE CHECK (length(slot) = 32),
        fingerprint BLOB    NOT NULL CHECK (length(fingerprint) = 32),
        -- 0 in flight, 1 pending, 2 completed.
        state       INTEGER NOT NULL CHECK (state IN (0, 1, 2)),
        token       BLOB    CHECK (token IS NULL OR length(token) = 16),
        lease_until INTEGER,
        -- Unix ms: the lease's end (in flight), the keep time's (pending),
        -- the result TTL's (completed). Past it the entry counts as absent.
        expires_at  INTEGER NOT NULL,
        pending     BLOB,
        status      INTEGER,
        headers     BLOB,
        body        BLOB,
        CHECK (state <> 0 OR (token IS NOT NULL)),
        CHECK (state <> 1 OR (token IS NOT NULL AND lease_until IS NOT NULL AND pending IS NOT NULL)),
        CHECK (state <> 2 OR (status IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL))
    ) STRICT;
    CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);"],
};

const IN_FLIGHT: i64 = 0;
const PENDING: i64 = 1;
const COMPLETED: i64 = 2;

const SELECT: &str =
    "SELECT fingerprint, state, token, lease_until, expires_at, pending, status, headers, body
    FROM idempotency_keys WHERE slot = ?1";
const DELETE: &str = "DELETE FROM idempotency_keys WHERE slot = ?1";
const INSERT_IN_FLIGHT: &str =
    "INSERT INTO idempotency_keys (slot, fingerprint, state, token, expires_at)
    VALUES (?1, ?2, 0, ?3, ?4)";
const RESUME: &str = "UPDATE idempotency_keys SET token = ?2, lease_until = ?3 WHERE slot = ?1";
const HOLD: &str = "UPDATE idempotency_keys
    SET state = 1, pending = ?2, lease_until = ?3, expires_at = ?4
    WHERE slot = ?1";
const COMPLETE: &str = "UPDATE idempotency_keys
    SET state = 2, token = NULL, lease_until = NULL, pending = NULL,
        status = ?2, headers = ?3, body = ?4, expires_at = ?5
    WHERE slot = ?1";
const PURGE: &str = "DELETE FROM idempotency_keys WHERE id IN (
    SELECT id FROM idempotency_keys WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

/// How [`SqliteIdempotencyStore::open_with`] sets up its file.
///
/// ```
/// use std::time::Duration;
/// use sofiia_idempotency::SqliteOptions;
///
/// let options = SqliteOptions::default().with_busy_timeout(Duration::from_secs(2));
/// assert_eq!(options.busy_timeout, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a write waits for a lock held by another process before it
    /// fails with [`IdempotencyError::Unavailable`]. Default 5 s.
    pub busy_timeout: Duration,
    /// How the writer batches (group commit).
    pub writer: WriterOptions,
    /// Where "now" comes from. Default [`SystemClock`].
    pub clock: Arc<DynClock>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            writer: WriterOptions::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl SqliteOptions {
    /// These options with another [`busy_timeout`](Self::busy_timeout).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// These options with another [`clock`](Self::clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<DynClock>) -> Self {
        self.clock = clock;
        self
    }

    /// These options with other [`writer`](Self::writer) settings.
    #[must_use]
    pub fn with_writer(mut self, writer: WriterOptions) -> Self {
        self.writer = writer;
        self
    }
}

/// Keys in one SQLite file: the default of a console on one machine.
///
/// **Durability.** WAL mode with `synchronous = FULL`: a completed key and a
/// held pending result are answered only once they are on disk (`fsync`),
/// so a key completed before a crash, a kill or a power loss is replayed
/// after the restart, and a pending result held before one is resumed after
/// it. Reserving and releasing a key are committed without waiting for the
/// disk ([`Durability::Committed`](sofiia_sqlite_support::Durability)): they
/// survive the process crashing or being killed. A power loss may undo the
/// latest of them (never one without every write after it, and never a
/// completed or pending key, which was synced): an undone reservation
/// leaves its key free, as a lease that ended does, so a caller can rely on
/// no more from a durable one. Writes of many callers share one
/// transaction and one `fsync` (group commit, see
/// [`Writer`](sofiia_sqlite_support::Writer)).
///
/// **Atomicity.** Every operation is one write on the file's writer thread,
/// inside `BEGIN IMMEDIATE`, so two operations never interleave, in this
/// process or in another one on the same file.
///
/// **Time** comes from the injected clock ([`SqliteOptions::clock`]). An
/// entry past its time counts as absent at once; its row is removed by
/// [`purge_expired`](IdempotencyStore::purge_expired), which the owner
/// calls now and then. Nothing else removes a row: an unexpired result is
/// never dropped to make room. A full disk makes operations fail with
/// [`IdempotencyError::Unavailable`] until there is room again.
pub struct SqliteIdempotencyStore {
    db: Database,
    clock: Arc<DynClock>,
}

impl fmt::Debug for SqliteIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteIdempotencyStore")
            .field("db", &self.db)
            .field("clock", &self.clock)
            .finish()
    }
}

/// Failures of this backend, converted into [`IdempotencyError`] by kind.
#[derive(Debug, thiserror::Error)]
enum SqliteError {
    #[error(transparent)]
    Support(#[from] sofiia_sqlite_support::Error),
    #[error("a stored entry is damaged: {0}")]
    Corrupt(&'static str),
    #[error(transparent)]
    Token(#[from] IdempotencyError),
}

impl From<rusqlite::Error> for SqliteError {
    fn from(err: rusqlite::Error) -> Self {
        SqliteError::Support(err.into())
    }
}

impl From<SqliteError> for IdempotencyError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Token(e) => e,
            SqliteError::Support(ref s) if s.is_transient() => IdempotencyError::Unavailable {
                source: Box::new(e),
            },
            _ => IdempotencyError::Backend {
                source: Box::new(e),
            },
        }
    }
}

/// A row as stored.
struct Row {
    fingerprint: Vec<u8>,
    state: i64,
    token: Option<Vec<u8>>,
    lease_until: Option<i64>,
    expires_at: i64,
    pending: Option<Vec<u8>>,
    status: Option<i64>,
    headers: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
}

impl Row {
    fn read(conn: &Connection, slot: &[u8; 32]) -> Result<Option<Row>, SqliteError> {
        Ok(conn
            .prepare_cached(SELECT)?
            .query_row([&slot[..]], |r| {
                Ok(Row {
                    fingerprint: r.get(0)?,
                    state: r.get(1)?,
                    token: r.get(2)?,
                    lease_until: r.get(3)?,
                    expires_at: r.get(4)?,
                    pending: r.get(5)?,
                    status: r.get(6)?,
                    headers: r.get(7)?,
                    body: r.get(8)?,
                })
            })
            .optional()?)
    }

    /// Whether `lease` holds the row at `now` (see
    /// [`IdempotencyStore::hold_pending`]).
    fn held_by(&self, lease: &LeaseToken, now: i64) -> bool {
        let token = self.token.as_deref() == Some(&lease.0[..]);
        match self.state {
            IN_FLIGHT => token && self.expires_at > now,
            PENDING => token,
            _ => false,
        }
    }

    fn response(self) -> Result<StoredResponse, SqliteError> {
        let (Some(status), Some(headers), Some(body)) = (self.status, self.headers, self.body)
        else {
            return Err(SqliteError::Corrupt("a completed entry lacks its answer"));
        };
        Ok(StoredResponse {
            status: u16::try_from(status)
                .map_err(|_| SqliteError::Corrupt("a stored status is out of range"))?,
            headers: decode_headers(&headers)
                .ok_or(SqliteError::Corrupt("stored headers do not decode"))?,
            body,
        })
    }
}

fn millis(t: Timestamp) -> i64 {
    t.as_unix_millis()
}

fn after(now: Timestamp, ttl: Duration) -> i64 {
    let ms = i64::try_from(ttl_millis(ttl)).unwrap_or(i64::MAX);
    millis(now).saturating_add(ms)
}

impl SqliteIdempotencyStore {
    /// Opens the store at `path` with [`SqliteOptions::default`], creating
    /// the file and its parent directories if missing and bringing the
    /// schema up to date.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Unavailable`] if the file stays locked by someone
    /// else for longer than the busy timeout; [`IdempotencyError::Backend`]
    /// if the file cannot be created or opened or is not a database of this
    /// schema (or of a newer one).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Like [`open`](Self::open), with explicit options.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let file = DatabaseOptions::default()
            .with_busy_timeout(options.busy_timeout)
            .with_writer(options.writer);
        let db = Database::open(path, file)
            .await
            .map_err(SqliteError::from)?;
        Self::in_database(&db, options.clock).await
    }

    /// Keeps the keys in `db`, a file other stores may share: their writes
    /// and this store's are committed together (see [`Database`]). Creates
    /// or brings up to date this store's tables only.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Unavailable`] if the file stays locked by someone
    /// else for longer than the busy timeout or is closed;
    /// [`IdempotencyError::Backend`] if it holds tables of this store that
    /// no known schema version describes, or a newer version.
    pub async fn in_database(db: &Database, clock: Arc<DynClock>) -> Result<Self> {
        db.migrate(&SCHEMA).await.map_err(SqliteError::from)?;
        Ok(Self {
            db: db.clone(),
            clock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Stops accepting operations; later ones fail with
    /// [`IdempotencyError::Unavailable`]. This closes the file for every
    /// store sharing it; dropping every holder of it does the same.
    pub fn close(&self) {
        self.db.close();
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.db.writer().write(f).await?)
    }

    /// A write that need not be on disk before it is answered (see the
    /// type's documentation on durability).
    async fn write_committed<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self
            .db
            .writer()
            .write_with(Durability::Committed, f)
            .await?)
    }
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn reserve(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
    ) -> Result<Reservation> {
        let slot = key.digest();
        let fingerprint = *fingerprint;
        let now = self.clock.now();
        let token = LeaseToken::random()?;
        self.write_committed(move |conn| {
            let row = Row::read(conn, &slot)?.filter(|r| r.expires_at > millis(now));
            let Some(row) = row else {
                // Absent or expired: take it.
                conn.prepare_cached(DELETE)?.execute([&slot[..]])?;
                conn.prepare_cached(INSERT_IN_FLIGHT)?.execute(params![
                    &slot[..],
                    &fingerprint.0[..],
                    &token.0[..],
                    after(now, lease_ttl),
                ])?;
                return Ok(Reservation::Acquired(Lease {
                    token,
                    ttl: lease_ttl,
                }));
            };
            if row.fingerprint != fingerprint.0 {
                return Ok(Reservation::Mismatch);
            }
            let remaining =
                |until: i64| Duration::from_millis(u64::try_from(until - millis(now)).unwrap_or(0));
            Ok(match row.state {
                IN_FLIGHT => Reservation::InFlight {
                    lease_remaining: remaining(row.expires_at),
                },
                PENDING => {
                    let lease_until = row
                        .lease_until
                        .ok_or(SqliteError::Corrupt("a pending entry lacks its lease"))?;
                    if lease_until > millis(now) {
                        Reservation::Pending {
                            lease_remaining: remaining(lease_until),
                        }
                    } else {
                        // The holder stopped: the caller takes over.
                        conn.prepare_cached(RESUME)?.execute(params![
                            &slot[..],
                            &token.0[..],
                            after(now, lease_ttl),
                        ])?;
                        Reservation::Resume {
                            lease: Lease {
                                token,
                                ttl: lease_ttl,
                            },
                            pending: row
                                .pending
                                .ok_or(SqliteError::Corrupt("a pending entry lacks its result"))?,
                        }
                    }
                }
                COMPLETED => Reservation::Completed(row.response()?),
                _ => return Err(SqliteError::Corrupt("an entry has an unknown state")),
            })
        })
        .await
    }

    async fn hold_pending(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        pending: &[u8],
        lease_ttl: Duration,
        keep_ttl: Duration,
    ) -> Result<()> {
        let slot = key.digest();
        let lease = *lease;
        let pending = pending.to_vec();
        let now = self.clock.now();
        self.write(move |conn| {
            let held = Row::read(conn, &slot)?.is_some_and(|r| r.held_by(&lease, millis(now)));
            if !held {
                return Err(IdempotencyError::LeaseLost.into());
            }
            conn.prepare_cached(HOLD)?.execute(params![
                &slot[..],
                pending,
                after(now, lease_ttl),
                after(now, keep_ttl),
            ])?;
            Ok(())
        })
        .await
    }

    async fn complete(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<()> {
        let slot = key.digest();
        let lease = *lease;
        let status = i64::from(response.status);
        let headers = encode_headers(&response.headers);
        let body = response.body.clone();
        let now = self.clock.now();
        self.write(move |conn| {
            let held = Row::read(conn, &slot)?.is_some_and(|r| r.held_by(&lease, millis(now)));
            if !held {
                return Err(IdempotencyError::LeaseLost.into());
            }
            conn.prepare_cached(COMPLETE)?.execute(params![
                &slot[..],
                status,
                headers,
                body,
                after(now, ttl),
            ])?;
            Ok(())
        })
        .await
    }

    async fn release(&self, key: &ScopedKey, lease: &LeaseToken) -> Result<()> {
        let slot = key.digest();
        let lease = *lease;
        let now = self.clock.now();
        self.write_committed(move |conn| {
            match Row::read(conn, &slot)? {
                Some(row) if row.held_by(&lease, millis(now)) => {
                    if row.state == PENDING {
                        return Err(IdempotencyError::ResultPending.into());
                    }
                }
                _ => return Err(IdempotencyError::LeaseLost.into()),
            }
            conn.prepare_cached(DELETE)?.execute([&slot[..]])?;
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        let now = self.clock.now();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let removed = conn
                .prepare_cached(PURGE)?
                .execute(params![millis(now), limit])?;
            Ok(removed as u64)
        })
        .await
    }

    async fn check(&self) -> Result<()> {
        // Between batches, outside any transaction: the writer thread and
        // its connection answer.
        Ok(self
            .db
            .writer()
            .exclusive(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok::<_, SqliteError>(())
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use sofiia_core_domain::ManualClock;

    use super::*;
    use crate::IdempotencyKey;
    use crate::testing::{LONG_TTL, ManualTime, TestStore};

    async fn fresh_store() -> TestStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::default());
        let store = SqliteIdempotencyStore::open_with(
            dir.path().join("idempotency.db"),
            SqliteOptions::default().with_clock(clock.clone()),
        )
        .await
        .expect("open");
        TestStore::with_guard(store, ManualTime::new(clock), dir)
    }

    crate::idempotency_store_tests!(fresh_store);

    fn key(n: usize) -> ScopedKey {
        ScopedKey::new(
            "alice",
            IdempotencyKey::new(format!("key-{n:08}")).expect("valid key"),
        )
    }

    fn fp() -> Fingerprint {
        Fingerprint::builder().part("req").finish()
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"ok\":true}".to_vec(),
        }
    }

    async fn acquire(store: &SqliteIdempotencyStore, k: &ScopedKey) -> LeaseToken {
        match store.reserve(k, &fp(), LONG_TTL).await.unwrap() {
            Reservation::Acquired(lease) => lease.token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completed_and_pending_keys_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idempotency.db");
        let clock = Arc::new(ManualClock::default());
        let options = SqliteOptions::default().with_clock(clock.clone());
        {
            let store = SqliteIdempotencyStore::open_with(&path, options.clone())
                .await
                .unwrap();
            let token = acquire(&store, &key(0)).await;
            store
                .complete(&key(0), &token, &answer(), LONG_TTL)
                .await
                .unwrap();
            let token = acquire(&store, &key(1)).await;
            store
                .hold_pending(
                    &key(1),
                    &token,
                    b"the reply",
                    Duration::from_secs(5),
                    LONG_TTL,
                )
                .await
                .unwrap();
            acquire(&store, &key(2)).await;
            store.close();
        }
        // A new process on the same file.
        let store = SqliteIdempotencyStore::open_with(&path, options)
            .await
            .unwrap();
        assert_eq!(
            store.reserve(&key(0), &fp(), LONG_TTL).await.unwrap(),
            Reservation::Completed(answer())
        );
        assert!(matches!(
            store.reserve(&key(1), &fp(), LONG_TTL).await.unwrap(),
            Reservation::Pending { .. }
        ));
        assert!(matches!(
            store.reserve(&key(2), &fp(), LONG_TTL).await.unwrap(),
            Reservation::InFlight { .. }
        ));
        // The pending result's lease ends: the next reservation resumes it.
        clock.advance(Duration::from_secs(6));
        match store.reserve(&key(1), &fp(), LONG_TTL).await.unwrap() {
            Reservation::Resume { pending, .. } => assert_eq!(pending, b"the reply"),
            other => panic!("expected Resume, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_removes_only_expired_rows() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::default());
        let store = SqliteIdempotencyStore::open_with(
            dir.path().join("idempotency.db"),
            SqliteOptions::default().with_clock(clock.clone()),
        )
        .await
        .unwrap();
        for n in 0..10 {
            let token = acquire(&store, &key(n)).await;
            let ttl = if n < 6 {
                Duration::from_secs(1)
            } else {
                LONG_TTL
            };
            store
                .complete(&key(n), &token, &answer(), ttl)
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.purge_expired(4).await.unwrap(), 4);
        assert_eq!(store.purge_expired(100).await.unwrap(), 2);
        assert_eq!(store.purge_expired(100).await.unwrap(), 0);
        let rows: i64 = Connection::open(store.path())
            .unwrap()
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4);
        for n in 6..10 {
            assert_eq!(
                store.reserve(&key(n), &fp(), LONG_TTL).await.unwrap(),
                Reservation::Completed(answer())
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_holds_no_key_or_principal_in_clear_and_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteIdempotencyStore::open(dir.path().join("idempotency.db"))
            .await
            .unwrap();
        let secret = ScopedKey::new(
            "principal-in-clear",
            IdempotencyKey::new("client-key-in-clear").unwrap(),
        );
        let token = acquire(&store, &secret).await;
        store
            .complete(&secret, &token, &answer(), LONG_TTL)
            .await
            .unwrap();
        store.close();
        let conn = Connection::open(dir.path().join("idempotency.db")).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let bytes = std::fs::read(dir.path().join("idempotency.db")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("principal-in-clear") && !text.contains("client-key-in-clear"));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_row_is_a_backend_error_and_a_closed_store_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idempotency.db");
        let store = SqliteIdempotencyStore::open(&path).await.unwrap();
        let token = acquire(&store, &key(0)).await;
        store
            .complete(&key(0), &token, &answer(), LONG_TTL)
            .await
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE idempotency_keys SET headers = x'09'", [])
            .unwrap();
        let r = store.reserve(&key(0), &fp(), LONG_TTL).await;
        assert!(matches!(r, Err(IdempotencyError::Backend { .. })), "{r:?}");
        store.close();
        let r = store.reserve(&key(1), &fp(), LONG_TTL).await;
        assert!(
            matches!(r, Err(IdempotencyError::Unavailable { .. })),
            "{r:?}"
        );
        assert!(matches!(
            store.check().await,
            Err(IdempotencyError::Unavailable { .. })
        ));
    }
}
