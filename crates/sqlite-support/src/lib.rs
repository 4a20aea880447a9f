//! SQLite plumbing shared by the sofiia-console backends.
//!
//! The idempotency store, the chat index and the audit trail can each keep
//! their tables in SQLite, and on one machine they keep them in one file: a
//! [`Database`] is that file in WAL mode, written by one [`Writer`] thread
//! that commits every store's waiting writes together (one `fsync` for
//! many), beside a pool of read-only connections. The stores set up their
//! connections, migrate their schemas ([`Schema`], one version per store
//! in the file) and tell a busy file from a broken one in the same way;
//! this crate is that common part, so that they cannot drift apart.
//!
//! What stays in each backend: its schema, its statements, its private
//! error enum (which wraps this crate's [`Error`]) and its public error
//! type, which [`Error::is_transient`] and [`pool_error_is_transient`] help
//! it choose.
//!
//! ```
//! use sofiia_sqlite_support::{Database, DatabaseOptions, Error, Schema};
//!
//! static NOTES: Schema = Schema {
//!     store: "notes",
//!     marker: "notes",
//!     migrations: &["CREATE TABLE notes (body TEXT NOT NULL) STRICT;"],
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path().join("data/console.db"), DatabaseOptions::default()).await?;
//! db.migrate(&NOTES).await?;
//! db.writer()
//!     .write(|conn| Ok::<_, Error>(conn.execute("INSERT INTO notes (body) VALUES ('hello')", [])?))
//!     .await?;
//! let notes: i64 = db
//!     .read(|conn| Ok::<_, Error>(conn.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?))
//!     .await?;
//! assert_eq!(notes, 1);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use deadpool_sqlite::{
    BuildError, Config, Hook, HookError, InteractError, Pool, PoolConfig, PoolError, Runtime,
    Timeouts,
};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

mod database;
mod schema;
mod writer;

pub use crate::database::{Database, DatabaseOptions};
pub use crate::schema::{Schema, migrate, schema_version};
pub use crate::writer::{Durability, Writer, WriterOptions, WriterStats};

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRole {
    /// The one connection (or pool of one) that writes.
    Write,
    /// A read-only connection beside the writer.
    Read,
}

/// Settings a backend adds to every new connection, beside the ones
/// [`Setup::configure`] always makes; see [`Setup::with_tune`].
pub type Tune = fn(&Connection, ConnectionRole) -> rusqlite::Result<()>;

/// How a backend sets up each new connection.
///
/// Most pragmas are per connection, so they are set on every connection
/// as it is opened rather than once per file.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    busy_timeout: Duration,
    initial: Tune,
    tune: Tune,
}

impl Setup {
    /// A setup with this busy timeout and no tuning of its own.
    pub fn new(busy_timeout: Duration) -> Self {
        Self {
            busy_timeout,
            initial: |_, _| Ok(()),
            tune: |_, _| Ok(()),
        }
    }

    /// This setup, with `initial` run on each connection before it is put
    /// in WAL mode: for settings that take effect only on a file with no
    /// table yet and not in WAL mode, such as `auto_vacuum`.
    #[must_use]
    pub fn with_initial(mut self, initial: Tune) -> Self {
        self.initial = initial;
        self
    }

    /// This setup, with `tune` run on each connection once it is in WAL
    /// mode and before its role's settings.
    #[must_use]
    pub fn with_tune(mut self, tune: Tune) -> Self {
        self.tune = tune;
        self
    }

    /// How long a statement waits for a lock held elsewhere.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// Sets up `conn`: the busy timeout, the initial settings, WAL mode, the
    /// tuning, then the role's settings (immediate transactions for the writer, `query_only`
    /// for a reader).
    ///
    /// # Errors
    ///
    /// [`Error::NotWal`] if the file cannot be put in WAL mode (as for
    /// `:memory:`); [`Error::Sqlite`] if a setting fails, such as the WAL
    /// switch finding the file locked for longer than the busy timeout.
    pub fn configure(&self, conn: &mut Connection, role: ConnectionRole) -> Result<(), Error> {
        // First, so that the pragmas below wait for a lock instead of failing.
        conn.busy_timeout(self.busy_timeout)?;
        (self.initial)(conn, role)?;
        let mode = enable_wal(conn, self.busy_timeout)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::NotWal);
        }
        (self.tune)(conn, role)?;
        match role {
            // Migrations open their transactions with `transaction()`:
            // immediate makes two processes migrating one file queue instead
            // of deadlock.
            ConnectionRole::Write => conn.set_transaction_behavior(TransactionBehavior::Immediate),
            // A read connection that tried to write would take the write lock
            // beside the writer and could fail with SQLITE_BUSY.
            ConnectionRole::Read => conn.execute_batch("PRAGMA query_only = ON;")?,
        }
        Ok(())
    }
}

/// Switches the file to WAL mode (a no-op once it is), returning the mode in
/// force.
///
/// On a file not yet in WAL mode, two connections switching at once both
/// hold a shared lock and want an exclusive one; SQLite then fails one with
/// `SQLITE_BUSY` at once, without calling the busy handler, to avoid a
/// deadlock. So the busy timeout does not cover this step, and it is retried
/// here within the same budget. Connections are set up on a blocking thread
/// (a pool's) or a backend's own thread, where sleeping is fine.
fn enable_wal(conn: &Connection, budget: Duration) -> rusqlite::Result<String> {
    let start = Instant::now();
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(e) if is_busy(&e) && start.elapsed() < budget => {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// Creates the directories above `path`, if any are missing, on the
/// blocking thread pool.
///
/// # Errors
///
/// [`Error::CreateDir`] if one cannot be created; [`Error::Interact`] if
/// the blocking task panicked or was cancelled.
pub async fn create_parent_dir(path: &Path) -> Result<(), Error> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let parent = parent.to_owned();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(parent))
        .await
        .map_err(|e| Error::Interact {
            panicked: e.is_panic(),
        })?
        .map_err(Error::CreateDir)
}

/// A pool of up to `size` connections to `path`, each set up by `setup` for
/// `role` as it is opened.
///
/// Waiting for, creating and recycling a connection are each bounded by
/// `acquire_timeout`, so a call fails (with an error
/// [`pool_error_is_transient`] calls transient) instead of waiting forever
/// for a connection that a stuck call holds.
///
/// # Errors
///
/// [`Error::Build`] if the pool cannot be built. Opening and setting up a
/// connection happen later, on first use; their failures come as
/// [`PoolError`]s from the pool.
pub fn build_pool(
    path: &Path,
    size: NonZeroUsize,
    acquire_timeout: Duration,
    setup: Setup,
    role: ConnectionRole,
) -> Result<Pool, Error> {
    let mut pool = PoolConfig::new(size.get());
    pool.timeouts = Timeouts {
        wait: Some(acquire_timeout),
        create: Some(acquire_timeout),
        recycle: Some(acquire_timeout),
    };
    let mut config = Config::new(path);
    config.pool = Some(pool);
    let Ok(builder) = config.builder(Runtime::Tokio1);
    Ok(builder
        .post_create(Hook::async_fn(move |conn, _| {
            Box::pin(async move {
                conn.interact(move |c| setup.configure(c, role))
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    // A driver error stays one, so that its classification
                    // (busy or not) survives the pool.
                    .map_err(|e| match e {
                        Error::Sqlite(e) => HookError::Backend(e),
                        other => HookError::message(other.to_string()),
                    })
            })
        }))
        .build()?)
}

/// Runs `f` on a connection from `pool`, on the blocking thread pool, never
/// on an async worker.
///
/// # Errors
///
/// What `f` returns; a [`PoolError`] if no connection could be had; an
/// [`Error::Interact`] if `f` panicked or was cancelled.
pub async fn with_connection<T, E, F>(pool: &Pool, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<PoolError> + From<Error> + Send + 'static,
{
    let conn = pool.get().await?;
    conn.interact(f)
        .await
        .map_err(|e| E::from(Error::from(e)))?
}

/// Runs `SELECT 1`: whether the connection answers, for readiness checks.
///
/// # Errors
///
/// The driver's error, converted.
pub fn ping<E: From<rusqlite::Error>>(conn: &mut Connection) -> Result<(), E> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

/// Whether SQLite failed because another connection held a lock: a retry
/// later may succeed.
pub fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether a later retry may succeed: the file was busy, the disk was full,
/// the disk failed an I/O (a stalled or vanished disk), or SQLite undid the
/// transaction because of one of those.
pub fn is_retryable(err: &rusqlite::Error) -> bool {
    is_busy(err)
        || matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::OperationAborted)
        )
}

/// The SQLite result code found in `err`'s chain of sources (`err`
/// itself included), if any: a driver error, directly or as shared by a
/// [`Writer`]'s batch.
pub fn sqlite_error_code(err: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(err);
    while let Some(e) = next {
        let driver = e.downcast_ref::<rusqlite::Error>().or_else(|| {
            e.downcast_ref::<std::sync::Arc<rusqlite::Error>>()
                .map(|a| &**a)
        });
        if let Some(code) = driver.and_then(rusqlite::Error::sqlite_error_code) {
            return Some(code);
        }
        next = e.source();
    }
    None
}

/// Whether a later retry may succeed after the pool failed: the file was
/// busy while a connection was opened or set up, no connection was free in
/// time, or the pool is closed (the store is shut down).
pub fn pool_error_is_transient(err: &PoolError) -> bool {
    match err {
        PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => is_retryable(e),
        PoolError::Timeout(_) | PoolError::Closed => true,
        _ => false,
    }
}

/// What went wrong in the plumbing. A backend wraps it in its own private
/// error enum (transparently, so that the chain reads the same) and uses
/// [`is_transient`](Self::is_transient) to choose its public error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The driver failed.
    #[error("SQLite failed")]
    Sqlite(#[from] rusqlite::Error),
    /// [`build_pool`] could not build the pool.
    #[error("the SQLite connection pool could not be built")]
    Build(#[from] BuildError),
    /// A migration of [`migrate`] failed; nothing of it was kept.
    #[error("migration {version} of the {store} schema failed")]
    Migration {
        /// The store whose schema it is.
        store: &'static str,
        /// The version it would have brought the file to.
        version: usize,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file holds a newer version of a store's schema than this build
    /// knows: it was written by a newer release.
    #[error("the file holds version {found} of the {store} schema; this build knows up to {known}")]
    NewerSchema {
        /// The store whose schema it is.
        store: &'static str,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// No read connection could be had from a [`Database`]'s pool.
    #[error("no SQLite connection could be had")]
    Pool(#[source] Box<PoolError>),
    /// [`create_parent_dir`] could not create a directory.
    #[error("the database directory could not be created")]
    CreateDir(#[source] io::Error),
    /// A call on a blocking thread did not return.
    // `InteractError` holds a panic payload that is not `Sync`, so only its
    // kind is kept.
    #[error("a SQLite call {}", if *.panicked { "panicked" } else { "was cancelled" })]
    Interact {
        /// Whether it panicked; else it was cancelled.
        panicked: bool,
    },
    /// The file could not be put in WAL mode.
    #[error("the database could not be put in WAL mode")]
    NotWal,
    /// A [`Writer`]'s write succeeded, but the transaction it ran in did
    /// not commit (a full disk, an I/O error, a lock held elsewhere), so it
    /// was undone.
    #[error("the SQLite transaction did not commit")]
    Batch(#[source] std::sync::Arc<rusqlite::Error>),
    /// The [`Writer`] is closed or its thread has stopped.
    #[error("the SQLite writer is closed")]
    WriterStopped,
}

impl Error {
    /// Whether a later retry may succeed: the file was busy, the disk full
    /// or failing (see [`is_retryable`]), or the writer is closed (the
    /// store is shutting down).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sqlite(e) | Error::Migration { source: e, .. } => is_retryable(e),
            Error::Batch(e) => is_retryable(e),
            Error::Pool(e) => pool_error_is_transient(e),
            Error::WriterStopped => true,
            _ => false,
        }
    }
}

impl From<InteractError> for Error {
    fn from(err: InteractError) -> Self {
        Error::Interact {
            panicked: matches!(err, InteractError::Panic(_)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    static SCHEMA: Schema = Schema {
        store: "test",
        marker: "a",
        migrations: &["CREATE TABLE a (x INTEGER) STRICT;"],
    };

    /// A plain connection to the file, as another process would hold it.
    fn raw(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    fn pragma<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> T {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    fn busy() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
    }

    fn constraint() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        )
    }

    #[test]
    fn configure_sets_wal_the_tuning_and_the_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roles.sqlite3");
        let setup = Setup::new(Duration::from_millis(1234)).with_tune(|conn, role| {
            let sync = if role == ConnectionRole::Write { 2 } else { 1 };
            conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))
        });
        assert_eq!(setup.busy_timeout(), Duration::from_millis(1234));

        let mut write = Connection::open(&path).unwrap();
        setup.configure(&mut write, ConnectionRole::Write).unwrap();
        assert_eq!(pragma::<String>(&write, "journal_mode"), "wal");
        assert_eq!(pragma::<i64>(&write, "busy_timeout"), 1234);
        assert_eq!(pragma::<i64>(&write, "synchronous"), 2);
        assert_eq!(pragma::<i64>(&write, "query_only"), 0);
        // Immediate: a plain `transaction()` takes the write lock at once.
        let tx = write.transaction().unwrap();
        let other = raw(&path);
        other.busy_timeout(Duration::ZERO).unwrap();
        assert!(other.execute_batch("BEGIN IMMEDIATE;").is_err());
        tx.rollback().unwrap();

        let mut read = Connection::open(&path).unwrap();
        setup.configure(&mut read, ConnectionRole::Read).unwrap();
        assert_eq!(pragma::<i64>(&read, "synchronous"), 1);
        assert_eq!(pragma::<i64>(&read, "query_only"), 1);
        assert!(read.execute_batch("CREATE TABLE t (x);").is_err());
    }

    #[test]
    fn an_in_memory_database_is_not_wal() {
        let mut conn = Connection::open_in_memory().unwrap();
        let err = Setup::new(Duration::from_secs(1))
            .configure(&mut conn, ConnectionRole::Write)
            .unwrap_err();
        assert!(matches!(err, Error::NotWal), "{err:?}");
        assert!(!err.is_transient());
    }

    #[test]
    fn a_failing_tune_fails_the_setup() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("tune.sqlite3")).unwrap();
        let err = Setup::new(Duration::from_secs(1))
            .with_tune(|conn, _| conn.execute_batch("NOT SQL"))
            .configure(&mut conn, ConnectionRole::Read)
            .unwrap_err();
        assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
    }

    #[test]
    fn busy_and_locked_are_transient_and_nothing_else() {
        assert!(is_busy(&busy()));
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
            None,
        );
        assert!(is_busy(&locked));
        assert!(!is_busy(&constraint()));
        assert!(!is_busy(&rusqlite::Error::QueryReturnedNoRows));

        assert!(Error::Sqlite(busy()).is_transient());
        assert!(!Error::Sqlite(constraint()).is_transient());
        let migration = |source| Error::Migration {
            store: "test",
            version: 1,
            source,
        };
        assert!(migration(busy()).is_transient());
        assert!(!migration(constraint()).is_transient());
        assert!(!Error::NotWal.is_transient());
        assert!(!Error::Interact { panicked: true }.is_transient());
        assert!(!Error::CreateDir(io::Error::other("full")).is_transient());

        assert!(pool_error_is_transient(&PoolError::Backend(busy())));
        assert!(pool_error_is_transient(&PoolError::PostCreateHook(
            HookError::Backend(busy())
        )));
        assert!(!pool_error_is_transient(&PoolError::Backend(constraint())));
        assert!(!pool_error_is_transient(&PoolError::PostCreateHook(
            HookError::message("not WAL")
        )));
        assert!(pool_error_is_transient(&PoolError::Closed));
        assert!(pool_error_is_transient(&PoolError::Timeout(
            deadpool_sqlite::TimeoutType::Wait
        )));
        assert!(!pool_error_is_transient(&PoolError::NoRuntimeSpecified));
    }

    #[test]
    fn errors_keep_their_messages_and_sources() {
        let err = Error::Sqlite(busy());
        assert_eq!(err.to_string(), "SQLite failed");
        assert!(
            err.source()
                .and_then(|e| e.downcast_ref::<rusqlite::Error>())
                .is_some()
        );
        assert_eq!(
            Error::Interact { panicked: true }.to_string(),
            "a SQLite call panicked"
        );
        assert_eq!(
            Error::Interact { panicked: false }.to_string(),
            "a SQLite call was cancelled"
        );
        assert_eq!(
            Error::NotWal.to_string(),
            "the database could not be put in WAL mode"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pools_set_up_their_connections_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/pooled.sqlite3");
        create_parent_dir(&path).await.unwrap();
        assert!(path.parent().unwrap().is_dir());
        // A bare file name has no parent to create.
        create_parent_dir(Path::new("bare.sqlite3")).await.unwrap();

        let setup = Setup::new(Duration::from_secs(5));
        let timeout = Duration::from_secs(5);
        let write = build_pool(
            &path,
            NonZeroUsize::MIN,
            timeout,
            setup,
            ConnectionRole::Write,
        )
        .unwrap();
        let read = build_pool(
            &path,
            NonZeroUsize::MIN,
            timeout,
            setup,
            ConnectionRole::Read,
        )
        .unwrap();
        with_connection(&write, |conn| {
            migrate(conn, &SCHEMA)?;
            conn.execute("INSERT INTO a (x) VALUES (7)", [])?;
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        let x: i64 = with_connection(&read, |conn| {
            ping::<TestError>(conn)?;
            Ok::<_, TestError>(conn.query_row("SELECT x FROM a", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
        assert_eq!(x, 7);
        let err = with_connection(&read, |conn| {
            Ok::<_, TestError>(conn.execute("INSERT INTO a (x) VALUES (8)", [])?)
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, TestError::Support(Error::Sqlite(_))),
            "{err:?}"
        );

        // A setup failure reaches the caller through the pool, its kind kept.
        let memory = build_pool(
            Path::new(":memory:"),
            NonZeroUsize::MIN,
            timeout,
            setup,
            ConnectionRole::Read,
        )
        .unwrap();
        let err = with_connection(&memory, ping::<TestError>)
            .await
            .unwrap_err();
        let TestError::Pool(pool_err) = &err else {
            panic!("expected a pool error, got {err:?}");
        };
        assert!(!pool_error_is_transient(pool_err));
        assert!(pool_err.to_string().contains("WAL"), "{pool_err}");

        write.close();
        let err = with_connection(&write, ping::<TestError>)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TestError::Pool(e) if pool_error_is_transient(e)),
            "{err:?}"
        );

        let err = with_connection(&read, |_| -> Result<(), TestError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(
            matches!(err, TestError::Support(Error::Interact { panicked: true })),
            "{err:?}"
        );
    }

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Support(#[from] Error),
        #[error("pool")]
        Pool(#[from] PoolError),
    }

    impl From<rusqlite::Error> for TestError {
        fn from(err: rusqlite::Error) -> Self {
            TestError::Support(err.into())
        }
    }
}
