//! PostgreSQL plumbing shared by the sofiia-console backends: a connection
//! pool opened from a URL ([`PostgresPool`]), per-store schema migrations
//! ([`Schema`], [`PostgresPool::migrate`]), and the one failure
//! classification every backend uses ([`Error::is_transient`]).
//!
//! Every backend turns a PostgreSQL failure into one of two public errors:
//! `Unavailable` (the server or the way to it is down, restarting, out of
//! connections or disk, or a transaction lost a serialisation race: a
//! retry later may succeed, and the console answers 503) or `Backend` (a
//! constraint the caller broke, a schema someone edited: a person has to
//! look).
//!
//! Several stores may share one database: each keeps its own schema
//! version in the `sofiia_schema` table, so that one store's upgrade never
//! waits for another's.
//!
//! ```no_run
//! use sofiia_postgres_support::{PoolOptions, PostgresPool, Schema};
//!
//! static NOTES: Schema = Schema {
//!     store: "notes",
//!     migrations: &["CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)"],
//! };
//!
//! # async fn demo() -> Result<(), sofiia_postgres_support::Error> {
//! let pool = PostgresPool::open("postgres://127.0.0.1:5432/sofiia", PoolOptions::default())?;
//! pool.migrate(&NOTES).await?;
//! let client = pool.get().await?;
//! client.execute("INSERT INTO notes VALUES (1, 'hello')", &[]).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Connections are plain TCP or Unix sockets (no TLS): run PostgreSQL on a
//! private network or the same host, or put a TLS-terminating proxy such
//! as PgBouncer beside the console.

mod schema;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

pub use crate::schema::Schema;
pub use deadpool_postgres::{Object as PooledClient, Transaction};
pub use tokio_postgres;

/// How [`PostgresPool::open`] sizes and times its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolOptions {
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long a caller waits for a free connection, opening one included.
    pub acquire_timeout: Duration,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl PoolOptions {
    /// At most `n` connections (at least one).
    #[must_use]
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Callers wait at most `timeout` for a connection.
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Opening a connection takes at most `timeout`.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// A pool of connections to one PostgreSQL database, shared by every store
/// that holds a clone.
///
/// Every session runs with `synchronous_commit = on` (unless the URL's
/// `options` set it), so a committed transaction is durable on the server.
///
/// Opening is lazy: [`PostgresPool::open`] checks the URL only, and the
/// first call connects; a connection that broke (the server restarted, a
/// proxy cut it) is dropped when it is next taken from the pool, so a
/// server that comes back is used again without a restart.
#[derive(Clone)]
pub struct PostgresPool {
    pool: Pool,
    server: String,
}

impl fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address without credentials.
        f.debug_struct("PostgresPool")
            .field("server", &self.server)
            .field("max_connections", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresPool {
    /// A pool on the database at `url` (`postgres://user:password@host:port/db?...`,
    /// or the `key=value` form libpq takes), read as [`parse_url`] reads it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `url` does not parse or names no host.
    pub fn open(url: &str, options: PoolOptions) -> Result<Self, Error> {
        let mut config = parse_url(url)?;
        config.connect_timeout(options.connect_timeout);
        // A commit returns once it is on the server's disk, whatever the
        // server's default, unless the URL's own options say otherwise.
        let session = config.get_options().unwrap_or_default().to_owned();
        if !session.contains("synchronous_commit") {
            config.options(format!("{session} -c synchronous_commit=on").trim_start());
        }
        if config.get_application_name().is_none() {
            config.application_name("sofiia-console");
        }
        let server = describe(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection whose socket closed is replaced when taken;
                // one that breaks mid-call fails that call (a 503), not
                // every call after it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Config { source: e.into() })?;
        Ok(Self { pool, server })
    }

    /// The server and database, without credentials: `host:port/db`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A connection from the pool.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`]: none could be had in time (always transient).
    pub async fn get(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(|e| Error::Pool(Box::new(e)))
    }

    /// Brings `schema` to its newest version (see [`Schema`]).
    ///
    /// # Errors
    ///
    /// [`Error::Migration`] or [`Error::NewerSchema`], or the connection's
    /// error.
    pub async fn migrate(&self, schema: &Schema) -> Result<u32, Error> {
        let mut client = self.get().await?;
        schema::migrate(&mut client, schema).await
    }

    /// The version of `store`'s schema in the database, if it has one.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn schema_version(&self, store: &str) -> Result<Option<u32>, Error> {
        let client = self.get().await?;
        schema::version(&client, store).await
    }

    /// One round trip (`SELECT 1`), for readiness probes.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn check(&self) -> Result<(), Error> {
        let client = self.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Closes the pool: calls after this fail as unavailable.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// The connection settings of `url`, as [`PostgresPool::open`] uses them:
/// as libpq does, a URL without a user or password takes them from
/// `PGUSER` (else `USER`) and `PGPASSWORD`.
///
/// # Errors
///
/// [`Error::Config`] when `url` does not parse or names no host.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, Error> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::Config { source: e.into() })?;
    if config.get_hosts().is_empty() {
        return Err(Error::Config {
            source: "the URL names no host".into(),
        });
    }
    if config.get_user().is_none() {
        let user = ["PGUSER", "USER"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "postgres".to_owned());
        config.user(user);
    }
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    Ok(config)
}

/// The server and database `url` names, without credentials
/// (`host:port/db`), for logs and reports; `url` itself when it does not
/// parse.
pub fn server_of(url: &str) -> String {
    parse_url(url).map_or_else(|_| "(an invalid URL)".to_owned(), |c| describe(&c))
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// What went wrong with PostgreSQL; backends keep it as the source of their
/// own errors and ask [`Error::is_transient`] which public error it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL or the pool's settings are invalid.
    #[error("invalid PostgreSQL settings")]
    Config {
        /// What is wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No connection could be had in time.
    #[error("no PostgreSQL connection could be had")]
    Pool(#[source] Box<PoolError>),
    /// A statement or the connection failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration of a store's schema failed; the database is as it was.
    #[error("migrating the {store} schema to version {version} failed")]
    Migration {
        /// The store.
        store: &'static str,
        /// The version it failed at.
        version: u32,
        /// Why.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database holds a newer schema than this build knows: a newer
    /// release wrote it. Refused rather than guessed at.
    #[error(
        "the {store} schema in the database is version {found}; this build knows up to {known}"
    )]
    NewerSchema {
        /// The store.
        store: &'static str,
        /// The version found.
        found: i64,
        /// The newest this build knows.
        known: u32,
    },
}

impl Error {
    /// Whether a retry later may succeed: the server or the way to it is
    /// down, restarting, read-only (a failover in progress), out of
    /// connections, memory or disk, a statement was cancelled, or a
    /// transaction lost a serialisation race or a deadlock.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Postgres(e) | Error::Migration { source: e, .. } => is_transient(e),
            Error::Config { .. } | Error::NewerSchema { .. } => false,
        }
    }
}

/// [`Error::is_transient`] for a driver error: every failure without a
/// server error code is the connection's (closed, refused, timed out), and
/// these server codes mean "not now".
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // A value that does not convert is a bug, not an outage.
        return !is_conversion(e);
    };
    let code = db.code();
    let class = &code.code()[..2];
    matches!(
        class,
        // connection exception; insufficient resources (disk full, out of
        // memory, too many connections); operator intervention (shutdown,
        // restart, statement cancelled)
        "08" | "53" | "57"
    ) || [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    ]
    .contains(code)
}

fn is_conversion(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if inner.is::<tokio_postgres::types::WrongType>()
            || inner.is::<tokio_postgres::types::WasNull>()
        {
            return true;
        }
        source = inner.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_describe_without_credentials() {
        let pool = runtime().block_on(async {
            PostgresPool::open(
                "postgres://alice:secret@db.example:6543/sofiia",
                PoolOptions::default(),
            )
            .unwrap()
        });
        assert_eq!(pool.server(), "db.example:6543/sofiia");
        assert!(!format!("{pool:?}").contains("secret"));
    }

    #[test]
    fn a_url_without_a_user_takes_one_from_the_environment_as_libpq_does() {
        let config = parse_url("postgres://127.0.0.1:5432/sofiia").unwrap();
        let expected = ["PGUSER", "USER"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "postgres".to_owned());
        assert_eq!(config.get_user(), Some(expected.as_str()));
        let config = parse_url("postgres://alice@127.0.0.1/sofiia").unwrap();
        assert_eq!(config.get_user(), Some("alice"));
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["postgres://host:notaport/db", "nonsense=1"] {
            let err = PostgresPool::open(url, PoolOptions::default()).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{url}: {err:?}");
            assert!(!err.is_transient());
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_transient() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pool = PostgresPool::open(
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            PoolOptions::default().with_connect_timeout(Duration::from_millis(500)),
        )
        .unwrap();
        let err = pool.check().await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}
