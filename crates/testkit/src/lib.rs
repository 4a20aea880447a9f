//! Test support for the sofiia-console crates.
//!
//! The behavioural suites of the domain crates keep each subject under
//! test in a [`Guarded`], beside whatever must outlive it, and check with
//! [`assert_every_case_listed`] that their test macro runs every case.
//!
//! Redis-backed tests take their server from `SOFIIA_TEST_REDIS_URL` at run
//! time:
//! - unset or unreachable: the test says so loudly on stderr and returns
//!   early, so a developer without Redis can still run the rest;
//! - with `SOFIIA_REQUIRE_REDIS=1` (CI), unset or unreachable is a failure,
//!   so no Redis test can skip silently there.
//!
//! PostgreSQL-backed tests do the same with `SOFIIA_TEST_POSTGRES_URL` and
//! `SOFIIA_REQUIRE_POSTGRES=1`; each [`PostgresTestDatabase`] is a database
//! of its own, dropped with it.
//!
//! Each [`RedisTestContext`] owns a random key prefix and deletes its keys
//! when dropped, so tests never see each other's state. [`RedisServer`]
//! starts a private `redis-server` that a test may stop and restart, for
//! outage tests that must not disturb the shared server.
//! [`RedisTestContext::cluster`] is the same on a throwaway three-primary
//! Redis Cluster ([`RedisCluster`]) that the test process starts itself
//! (`redis-server` and `redis-cli` on the `PATH`); it needs no variable
//! beyond `SOFIIA_REQUIRE_REDIS`.
//!
//! ```no_run
//! # async fn demo() {
//! let Some(redis) = sofiia_testkit::RedisTestContext::new("my-test").await else {
//!     return; // skipped loudly
//! };
//! let _conn = redis.conn.handle();
//! # }
//! ```
use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use sofiia_redis_support::RedisConnection;

mod cluster;
mod guarded;
mod postgres;
mod suite;

pub use crate::cluster::RedisCluster;
pub use crate::guarded::Guarded;
pub use crate::postgres::{POSTGRES_URL_VAR, PostgresTestDatabase, REQUIRE_POSTGRES_VAR};
pub use crate::suite::assert_every_case_listed;

/// The variable naming the test Redis.
pub const REDIS_URL_VAR: &str = "SOFIIA_TEST_REDIS_URL";
/// The variable that turns a missing Redis into a failure.
pub const REQUIRE_VAR: &str = "SOFIIA_REQUIRE_REDIS";

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

pub(crate) fn skip_or_fail<T>(test: &str, why: &str) -> Option<T> {
    skip_or_fail_with(
        test,
        why,
        REQUIRE_VAR,
        &format!("Set {REDIS_URL_VAR}=redis://127.0.0.1:6379 to run it."),
    )
}

/// Fails when `require_var` is `1`, else says loudly that `test` is
/// skipped and why, and returns `None`.
fn skip_or_fail_with<T>(test: &str, why: &str, require_var: &str, hint: &str) -> Option<T> {
    if required(require_var) {
        panic!("{test}: {why}, and {require_var}=1 requires every such test to run");
    }
    // Written to the stderr handle directly: the test harness captures the
    // print macros of passing tests, and a skip must never be silent.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: {why}. {hint} !!!\n"
    );
    None
}

/// The shared connection the backends use, on `url`.
///
/// # Panics
///
/// If `url` is not a valid Redis URL, or outside a tokio runtime.
pub fn connection(url: &str) -> RedisConnection {
    RedisConnection::open(url).unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e}"))
}

/// The test Redis's URL, or `None` (after a loud message) when tests may skip.
///
/// # Panics
///
/// When Redis is required (`SOFIIA_REQUIRE_REDIS=1`) and not configured.
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => skip_or_fail(test, &format!("{REDIS_URL_VAR} is unset")),
    }
}

/// A Redis connection and a key prefix of one's own, cleaned up on drop.
pub struct RedisTestContext {
    /// The server's URL; for a cluster, its nodes as
    /// `SOFIIA_REDIS_CLUSTER_NODES` takes them.
    pub url: String,
    /// Whether this is the process's Redis Cluster.
    pub cluster: bool,
    /// A connection to it, as the backends take it.
    pub conn: RedisConnection,
    /// A prefix no other test uses, ending in `:`.
    pub prefix: String,
}

impl std::fmt::Debug for RedisTestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTestContext")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisTestContext {
    /// Connects to the test Redis, or returns `None` after saying loudly why.
    ///
    /// # Panics
    ///
    /// When Redis is required (`SOFIIA_REQUIRE_REDIS=1`) and does not answer.
    pub async fn new(test: &str) -> Option<Self> {
        let url = redis_url(test)?;
        let conn = connection(&url);
        Self::answering(test, url, conn, false).await
    }

    /// The same on the process's throwaway Redis Cluster
    /// ([`RedisCluster::shared`]).
    ///
    /// # Panics
    ///
    /// When Redis is required (`SOFIIA_REQUIRE_REDIS=1`) and the cluster
    /// cannot start or does not answer.
    pub async fn cluster(test: &str) -> Option<Self> {
        let cluster = RedisCluster::shared(test)?;
        let url = cluster.nodes();
        let conn = RedisConnection::open_cluster(&url)
            .unwrap_or_else(|e| panic!("invalid cluster nodes {url}: {e}"));
        Self::answering(test, url, conn, true).await
    }

    async fn answering(
        test: &str,
        url: String,
        conn: RedisConnection,
        cluster: bool,
    ) -> Option<Self> {
        let answered = sofiia_redis_support::query::<String>(
            &conn,
            Duration::from_secs(2),
            &redis::cmd("PING"),
        )
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)));
        if let Err(e) = answered {
            return skip_or_fail(test, &format!("Redis at {url} does not answer ({e})"));
        }
        Some(Self {
            url,
            cluster,
            conn,
            prefix: format!("sofiia-test:{}:", uuid::Uuid::new_v4().simple()),
        })
    }

    /// How many keys under this context's prefix exist now.
    ///
    /// # Panics
    ///
    /// If Redis fails.
    pub async fn key_count(&self) -> usize {
        self.keys().await.len()
    }

    /// The keys under this context's prefix, sorted.
    ///
    /// # Panics
    ///
    /// If Redis fails.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn.handle();
        // On a cluster, redis-rs asks every primary and joins the replies.
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl RedisTestContext {
    /// How many keys under this context's prefix each primary of the
    /// cluster holds (one entry on a single server).
    ///
    /// # Panics
    ///
    /// If a node fails.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.node_urls()
            .iter()
            .map(|url| {
                let mut node = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                    .unwrap_or_else(|e| panic!("{url}: {e}"));
                redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query::<Vec<String>>(&mut node)
                    .unwrap_or_else(|e| panic!("{url}: {e}"))
                    .len()
            })
            .collect()
    }

    /// The URL of each node: the cluster's primaries, or the one server.
    fn node_urls(&self) -> Vec<String> {
        if self.cluster {
            self.url
                .split(',')
                .map(|n| format!("redis://{n}"))
                .collect()
        } else {
            vec![self.url.clone()]
        }
    }
}

impl Drop for RedisTestContext {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.prefix);
        // On a cluster each primary deletes its own share, one key at a
        // time (keys of several slots may not meet in one command).
        let chunk = if self.cluster { 1 } else { 500 };
        for url in self.node_urls() {
            delete_matching(&url, &pattern, chunk);
        }
    }
}

/// Deletes the keys matching `pattern` on the server at `url`, `chunk` per
/// command, on a blocking connection (drop may run outside any runtime).
fn delete_matching(url: &str, pattern: &str, chunk: usize) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut conn)
        .unwrap_or_default();
    for chunk in keys.chunks(chunk) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}

/// A private `redis-server` on a free loopback port, for tests that stop and
/// restart Redis. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (after a loud message) when
    /// `redis-server` cannot be run and Redis is not required.
    ///
    /// # Panics
    ///
    /// When Redis is required and the server cannot start.
    pub fn start(test: &str) -> Option<Self> {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => return skip_or_fail(test, &format!("no free port ({e})")),
        };
        let mut server = Self { port, child: None };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(e) => skip_or_fail(test, &format!("cannot run redis-server ({e})")),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("it did not answer within 10 s".into())
    }

    fn answers(&self) -> bool {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    ///
    /// # Panics
    ///
    /// If it cannot start.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart: {e}");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
