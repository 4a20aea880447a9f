//! [`Database`]: one SQLite file, its writer thread and its readers, shared
//! by every store kept in it.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_sqlite::{Pool, PoolError};
use rusqlite::Connection;

use crate::{ConnectionRole, Error, Schema, Setup, Writer, WriterOptions};

/// How a [`Database`] is opened.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DatabaseOptions {
    /// How long a statement waits for a lock another process holds before
    /// failing as busy. Default 5 s.
    pub busy_timeout: Duration,
    /// Read-only connections beside the writer. Default 4.
    pub read_connections: NonZeroUsize,
    /// How long a read waits for a free connection. Default 5 s.
    pub acquire_timeout: Duration,
    /// How the writer batches.
    pub writer: WriterOptions,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            read_connections: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            acquire_timeout: Duration::from_secs(5),
            writer: WriterOptions::default(),
        }
    }
}

impl DatabaseOptions {
    /// These options with another [`busy_timeout`](Self::busy_timeout).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// These options with another [`read_connections`](Self::read_connections).
    #[must_use]
    pub fn with_read_connections(mut self, n: NonZeroUsize) -> Self {
        self.read_connections = n;
        self
    }

    /// These options with another [`acquire_timeout`](Self::acquire_timeout).
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// These options with other [`writer`](Self::writer) settings.
    #[must_use]
    pub fn with_writer(mut self, writer: WriterOptions) -> Self {
        self.writer = writer;
        self
    }
}

/// One SQLite file in WAL mode that any number of stores keep their tables
/// in: one [`Writer`] thread committing every store's writes together
/// (group commit), beside a pool of read-only connections.
///
/// Stores sharing a file share its commits: the writes of the idempotency
/// store, the chat index and the audit trail that are waiting at the same
/// moment go into one transaction with one `fsync`, and in WAL mode a write
/// is never undone without every write committed after it, whichever store
/// made it. Each store migrates its own tables ([`Database::migrate`]).
///
/// Every connection is set up alike: `synchronous = FULL` (a commit is on
/// disk before it is answered, see [`Durability`](crate::Durability) for
/// writes that need not wait), `foreign_keys` on, a 64 MiB
/// `journal_size_limit`, and, on a new file, `auto_vacuum = INCREMENTAL`
/// (so that deleted rows' pages can be given back in small steps).
///
/// Cloning is cheap: clones share the file's writer and readers.
/// [`close`](Self::close) closes them for every clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    read: Pool,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .field("writer", &self.inner.writer.stats())
            .field("read", &self.inner.read.status())
            .finish()
    }
}

impl Database {
    /// Opens the file at `path`, creating it and its parent directories if
    /// missing, starts its writer thread and checks that a reader answers.
    ///
    /// # Errors
    ///
    /// [`Error::CreateDir`] if a directory cannot be created; [`Error::NotWal`]
    /// if the file cannot be put in WAL mode (as for `:memory:`);
    /// [`Error::Sqlite`] if it cannot be opened or is not a database (a
    /// busy file is [transient](Error::is_transient)); [`Error::Pool`] if no
    /// reader answers.
    pub async fn open(path: impl AsRef<Path>, options: DatabaseOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let setup = Self::setup(options.busy_timeout);
        // The writer goes first: it switches the file to WAL before any
        // reader looks at it.
        let writer = Writer::open(&path, setup, options.writer, |_| Ok(())).await?;
        let read = crate::build_pool(
            &path,
            options.read_connections,
            options.acquire_timeout,
            setup,
            ConnectionRole::Read,
        )?;
        let database = Self {
            inner: Arc::new(Inner { path, writer, read }),
        };
        database.read(crate::ping::<Error>).await?;
        Ok(database)
    }

    /// How every connection of a shared file is set up (see the type's
    /// documentation).
    pub fn setup(busy_timeout: Duration) -> Setup {
        Setup::new(busy_timeout)
            .with_initial(initial)
            .with_tune(tune)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The file's writer, shared by every store in it.
    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    /// The file's pool of read-only connections.
    pub fn read_pool(&self) -> &Pool {
        &self.inner.read
    }

    /// Brings `schema`'s tables up to date (see [`migrate`](crate::migrate)),
    /// on the writer thread between batches.
    ///
    /// # Errors
    ///
    /// As for [`migrate`](crate::migrate).
    pub async fn migrate(&self, schema: &'static Schema) -> Result<(), Error> {
        self.inner
            .writer
            .exclusive(move |conn| crate::migrate(conn, schema))
            .await
    }

    /// Runs `f` on a read-only connection, on the blocking thread pool.
    ///
    /// # Errors
    ///
    /// What `f` returns; a [`PoolError`] if no connection could be had; an
    /// [`Error::Interact`] if `f` panicked.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<PoolError> + From<Error> + Send + 'static,
    {
        crate::with_connection(&self.inner.read, f).await
    }

    /// Stops the writer (writes already queued still run) and the readers:
    /// later calls of every store in the file fail as closed, which is
    /// [transient](Error::is_transient). For a shutdown that must refuse
    /// new work while holders of the file still exist; dropping the last
    /// clone does the same.
    pub fn close(&self) {
        self.inner.writer.close();
        self.inner.read.close();
    }
}

impl From<PoolError> for Error {
    fn from(err: PoolError) -> Self {
        Error::Pool(Box::new(err))
    }
}

/// On a new file, before any table exists: incremental vacuum can only be
/// chosen then (or by rewriting the file with `VACUUM`).
fn initial(conn: &Connection, role: ConnectionRole) -> rusqlite::Result<()> {
    if role == ConnectionRole::Write {
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if objects == 0 {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        }
    }
    Ok(())
}

fn tune(conn: &Connection, role: ConnectionRole) -> rusqlite::Result<()> {
    // Room for every store's statements (the audit trail alone has 32
    // filter combinations), beyond rusqlite's default of 16.
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    if role == ConnectionRole::Write {
        // FULL: in WAL mode each commit is fsynced before it returns, so an
        // answered write survives a power loss; group commit pays one fsync
        // per batch. journal_size_limit: the WAL is cut back to 64 MiB when
        // reused, so a large delete does not leave a large WAL behind.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864;")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES: Schema = Schema {
        store: "notes",
        marker: "notes",
        migrations: &["CREATE TABLE notes (body TEXT NOT NULL) STRICT;"],
    };
    const TAGS: Schema = Schema {
        store: "tags",
        marker: "tags",
        migrations: &["CREATE TABLE tags (name TEXT NOT NULL) STRICT;"],
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_share_the_file_its_writer_and_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/shared.sqlite3");
        let db = Database::open(&path, DatabaseOptions::default())
            .await
            .unwrap();
        assert_eq!(db.path(), path);
        db.migrate(&NOTES).await.unwrap();
        db.migrate(&TAGS).await.unwrap();
        let (a, b) = tokio::join!(
            db.writer().write(|conn| {
                conn.execute("INSERT INTO notes (body) VALUES ('hello')", [])
                    .map_err(Error::from)
            }),
            db.writer().write(|conn| {
                conn.execute("INSERT INTO tags (name) VALUES ('greeting')", [])
                    .map_err(Error::from)
            }),
        );
        assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
        let (notes, tags, vacuum, sync): (i64, i64, i64, i64) = db
            .read(|conn| {
                Ok::<_, Error>((
                    conn.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?,
                    conn.query_row("SELECT count(*) FROM tags", [], |r| r.get(0))?,
                    conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?,
                    conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((notes, tags), (1, 1));
        assert_eq!(
            vacuum, 2,
            "a new shared file is set up for incremental vacuum"
        );
        assert_eq!(sync, 1, "foreign keys are on");
        let level: i64 = db
            .writer()
            .exclusive(|conn| {
                Ok::<_, Error>(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(level, 2, "the writer commits with synchronous = FULL");

        let clone = db.clone();
        db.close();
        let err = clone
            .writer()
            .write(|_| Ok::<_, Error>(()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WriterStopped), "{err:?}");
        assert!(err.is_transient());
        let err = clone.read(|_| Ok::<_, Error>(())).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_memory_file_is_refused() {
        let err = Database::open(":memory:", DatabaseOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotWal), "{err:?}");
    }
}
