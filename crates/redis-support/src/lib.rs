//! Redis plumbing shared by the sofiia-console backends: one multiplexed
//! connection ([`RedisConnection`]), to a server or a Redis Cluster, that
//! every backend's calls are pipelined on, calls bound by a deadline
//! ([`invoke`], [`query`]), key prefixes carrying a Cluster hash tag
//! ([`tagged_key_prefix`]) and the slot a key lives in ([`slot_of`]), and
//! the one failure classification they all use.
//!
//! Every backend turns a Redis failure into one of two public errors:
//! `Unavailable` (Redis or the way to it is down, slow, busy, full or
//! failing over; a retry later may succeed, and the console answers 503)
//! or `Backend` (a script error, a key of the wrong type, a refused login: a
//! person has to look). [`CallError::is_unavailable`], built on
//! [`is_transient`], is that decision for all of them.
//!
//! ```
//! use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};
//!
//! let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
//! assert!(sofiia_redis_support::is_transient(&loading));
//! let script = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "bad"));
//! assert!(!sofiia_redis_support::is_transient(&script));
//! ```

use std::fmt;
use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use deadpool_redis::redis::cluster::{ClusterClientBuilder, ClusterConfig};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, ScriptInvocation, Value,
};
use tokio::time::timeout;

pub use deadpool_redis::redis::cluster_routing::Slot;

/// One multiplexed connection to Redis, a single server or a Redis Cluster,
/// shared by every caller of every backend that holds a clone: concurrent
/// calls are pipelined on it (no connection is checked out per call), and
/// it is opened again in the background after it fails, so a Redis that
/// comes back is used again without a restart.
///
/// On a cluster ([`RedisConnection::open_cluster`], redis-rs's
/// asynchronous cluster client) each command goes to the primary that owns
/// its key's slot (a script's, to the slot of its first key); the slot map
/// is learnt from the nodes and learnt again after a `MOVED`, a failover or
/// a resharding. `PING` goes to every primary, so a readiness check answers
/// for the whole cluster.
///
/// Opening is lazy: opening checks the addresses only, and the first call
/// connects. Every call here carries its own deadline.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    server: String,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A handle on a [`RedisConnection`] that runs redis-rs commands, scripts
/// and pipelines (`query_async`, `invoke_async`) on it; clones share the
/// one connection.
#[derive(Clone)]
pub struct RedisHandle(Link);

impl ConnectionLike for RedisHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The addresses without credentials.
        f.debug_struct("RedisConnection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// How long opening a connection may take before the attempt fails
    /// (calls waiting for it fail at their own deadlines first).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A connection to the server at `url` (`redis://` or `rediss://`,
    /// with credentials and database if any), made on first use.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis address.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the connection is kept by a task of its own).
    pub fn open(url: &str) -> Result<Self, RedisError> {
        let info = url.into_connection_info()?;
        let server = info.addr().to_string();
        let client = Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Self::CONNECT_TIMEOUT))
            // Reconnection is retried by calls, each within its deadline;
            // the manager's own retries would outlast them.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            link: Link::Single(manager),
            server,
        })
    }

    /// A connection to the Redis Cluster that `nodes` belong to, made on
    /// first use. `nodes` is a comma-separated list of some of its nodes
    /// (any one that answers is enough to learn the rest): each
    /// `host:port`, or a `redis://` / `rediss://` URL when it needs
    /// credentials or TLS. Every node must use the same credentials; a
    /// database number other than 0 is refused (a cluster has only 0).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let conn = sofiia_redis_support::RedisConnection::open_cluster(
    ///     "10.0.0.1:7000, 10.0.0.2:7000,redis://:secret@10.0.0.3:7000",
    /// )
    /// .unwrap();
    /// assert!(conn.is_cluster());
    /// assert_eq!(conn.server(), "cluster 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000");
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When the list is empty or a node is not a Redis address.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the connection is kept by a task of its own).
    pub fn open_cluster(nodes: &str) -> Result<Self, RedisError> {
        let infos = parse_cluster_nodes(nodes)?;
        let server = format!(
            "cluster {}",
            infos
                .iter()
                .map(|i| i.addr().to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let client = ClusterClientBuilder::new(infos)
            .connection_timeout(Self::CONNECT_TIMEOUT)
            .build()?;
        let config = ClusterConfig::new().set_connection_timeout(Self::CONNECT_TIMEOUT);
        let cluster = client.get_pending_async_connection_with_config(config);
        Ok(Self {
            link: Link::Cluster(cluster),
            server,
        })
    }

    /// The server's address (`cluster ` and the nodes' addresses, for a
    /// cluster), without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether this is a Redis Cluster connection: a script may only touch
    /// keys of one slot there.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// A handle for commands this crate has no helper for (tests, tools).
    /// Clones share the one connection.
    pub fn handle(&self) -> RedisHandle {
        RedisHandle(self.link.clone())
    }
}

/// The nodes of a list as [`RedisConnection::open_cluster`] takes it, each
/// checked.
///
/// # Errors
///
/// When the list is empty or a node is not a Redis address.
pub fn parse_cluster_nodes(nodes: &str) -> Result<Vec<ConnectionInfo>, RedisError> {
    let invalid = |why: String| {
        RedisError::from((
            deadpool_redis::redis::ErrorKind::InvalidClientConfig,
            "invalid Redis Cluster node list",
            why,
        ))
    };
    let mut infos = Vec::new();
    for node in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let info = if node.contains("://") {
            node.into_connection_info()?
        } else {
            format!("redis://{node}").as_str().into_connection_info()?
        };
        if info.redis_settings().db() != 0 {
            return Err(invalid(format!(
                "{}: a Redis Cluster has database 0 only",
                info.addr()
            )));
        }
        infos.push(info);
    }
    if infos.is_empty() {
        return Err(invalid("no node given".into()));
    }
    Ok(infos)
}

/// Why one deadline-bound call failed; each backend keeps it as the source
/// of its own error and asks [`CallError::is_unavailable`] which public
/// error that is.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The command failed, or the connection did.
    #[error("the Redis command failed")]
    Redis(#[from] RedisError),
    /// No answer within the deadline (connecting included).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl CallError {
    /// Whether a retry later may succeed: Redis or the way to it is down,
    /// slow, busy, out of memory, loading or failing over ([`is_transient`]).
    /// The one classification of every Redis backend: each answers
    /// `Unavailable` (503 at the console) for these and `Backend` for the
    /// rest.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CallError::Timeout(_) => true,
            CallError::Redis(e) => is_transient(e),
        }
    }
}

/// Runs a script (by `EVALSHA`, loading it on a `NOSCRIPT`) on `conn`
/// within `deadline`.
///
/// # Errors
///
/// [`CallError`].
pub async fn invoke(
    conn: &RedisConnection,
    deadline: Duration,
    invocation: &ScriptInvocation<'_>,
) -> Result<Value, CallError> {
    let mut handle = conn.handle();
    match timeout(deadline, invocation.invoke_async(&mut handle)).await {
        Ok(result) => Ok(result?),
        // A late reply is matched to its own request by the multiplexed
        // connection and dropped: the connection stays usable.
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

/// Runs `cmd` on `conn` within `deadline`, as [`invoke`] does.
///
/// # Errors
///
/// [`CallError`].
pub async fn query<T: FromRedisValue>(
    conn: &RedisConnection,
    deadline: Duration,
    cmd: &Cmd,
) -> Result<T, CallError> {
    let mut handle = conn.handle();
    match timeout(deadline, cmd.query_async(&mut handle)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

/// One bare round trip on `conn`: an `EVALSHA` of a script that does
/// nothing, within `deadline`. What a backend's call costs beyond this is
/// its own work; the crates' benches measure it beside their calls, in the
/// same run, so their ratios hold on a noisy machine.
///
/// # Errors
///
/// [`CallError`].
pub async fn bare_round_trip(conn: &RedisConnection, deadline: Duration) -> Result<(), CallError> {
    static NOTHING: std::sync::LazyLock<deadpool_redis::redis::Script> =
        std::sync::LazyLock::new(|| deadpool_redis::redis::Script::new("return 1"));
    invoke(conn, deadline, &NOTHING.prepare_invoke())
        .await
        .map(drop)
}

/// The Redis Cluster hash slot of `key`: keys that one script touches must
/// share it on a cluster (a single server takes any keys).
///
/// ```
/// use sofiia_redis_support::slot_of;
///
/// assert_eq!(slot_of("a:{chat-1}:x"), slot_of("b:{chat-1}:y"));
/// ```
pub fn slot_of(key: &str) -> Slot {
    Slot::for_key(key)
}

/// `prefix` with `{` and `}` escaped (as `%7B` and `%7D`), so that no hash
/// tag in it decides which Redis Cluster slot a key lives in: the backends'
/// own tags after it do, and an empty `{}` cannot make each whole key hash
/// to a slot of its own.
///
/// ```
/// assert_eq!(sofiia_redis_support::escape_braces("a{}b:"), "a%7B%7Db:");
/// ```
pub fn escape_braces(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// [`escape_braces`] of `prefix`, then `hash_tag` and `:`: all of a
/// backend's keys then share the one slot of `hash_tag`.
///
/// ```
/// assert_eq!(sofiia_redis_support::tagged_key_prefix("a{}b:", "{rl}"), "a%7B%7Db:{rl}:");
/// ```
pub fn tagged_key_prefix(prefix: &str, hash_tag: &str) -> String {
    let mut key_prefix = escape_braces(prefix);
    key_prefix.push_str(hash_tag);
    key_prefix.push(':');
    key_prefix
}

/// The error codes of replies that mean "not now": a script running past
/// `busy-reply-threshold`, a server loading its data set, a replica whose
/// primary is down, a write to a replica during a failover, a cluster
/// resharding or down.
const RETRY_LATER: [&str; 7] = [
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "OOM",
];

/// Whether a later retry may succeed: the connection failed (I/O error,
/// timeout, refused or dropped), or the server answered that it cannot
/// serve now (`BUSY`, `LOADING`, `MASTERDOWN`, `READONLY`, `TRYAGAIN`,
/// `CLUSTERDOWN`, or `OOM`: full until keys expire or are evicted), or a
/// cluster client found no node to send to.
/// Anything else the server says is not transient: a script error, a key of
/// the wrong type, a refused login, or a redirection (`MOVED`, `ASK`), which
/// a client of one server gets only when pointed at a cluster node.
pub fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        // A cluster client that reaches no node (yet) for the slot.
        || err.kind() == deadpool_redis::redis::ErrorKind::ClusterConnectionNotFound
        // By code rather than by `ErrorKind`: `BUSY` has no kind of its own,
        // and a reply whose code has a kind reports that same code.
        || err.code().is_some_and(|code| RETRY_LATER.contains(&code))
}

#[cfg(test)]
mod tests {
    use std::io;

    use deadpool_redis::redis::{
        ErrorKind, ServerErrorKind, make_extension_error, parse_redis_value,
    };

    use super::*;

    /// The error a server reply `-<line>` becomes.
    fn reply(line: &str) -> RedisError {
        parse_redis_value(format!("-{line}\r\n").as_bytes())
            .and_then(|v| v.extract_error())
            .expect_err("an error reply")
    }

    #[test]
    fn connection_failures_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            let err = RedisError::from(io::Error::new(kind, "down"));
            assert!(is_transient(&err), "{kind:?}");
        }
    }

    #[test]
    fn not_now_replies_are_transient() {
        for line in [
            "BUSY Redis is busy running a script",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            assert!(is_transient(&reply(line)), "{line}");
        }
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "x"));
        assert!(is_transient(&loading));
        assert!(is_transient(&make_extension_error("BUSY".into(), None)));
        assert!(is_transient(&RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "no node"
        ))));
    }

    #[test]
    fn other_failures_are_not_transient() {
        for line in [
            "ERR Error running script (call to f_0123): wrong number of arguments",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOSCRIPT No matching script. Please use EVAL.",
            "NOPERM this user has no permissions to run the 'evalsha' command",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
        ] {
            assert!(!is_transient(&reply(line)), "{line}");
        }
        assert!(!is_transient(&RedisError::from((
            ErrorKind::Parse,
            "not a reply"
        ))));
        assert!(!is_transient(&RedisError::from((
            ErrorKind::AuthenticationFailed,
            "bad password"
        ))));
    }

    #[test]
    fn a_call_is_unavailable_when_it_timed_out_or_failed_transiently() {
        assert!(CallError::Timeout(Duration::from_millis(5)).is_unavailable());
        assert!(CallError::Redis(reply("OOM no memory")).is_unavailable());
        assert!(!CallError::Redis(reply("WRONGTYPE no")).is_unavailable());
    }

    #[tokio::test]
    async fn opening_checks_the_address_and_hides_credentials() {
        let conn = RedisConnection::open("redis://user:secret@127.0.0.1:6390/2").unwrap();
        assert_eq!(conn.server(), "127.0.0.1:6390");
        assert!(!format!("{conn:?}").contains("secret"));
        assert!(RedisConnection::open("http://127.0.0.1").is_err());
    }

    #[tokio::test]
    async fn cluster_nodes_are_host_port_or_urls() {
        let conn =
            RedisConnection::open_cluster(" 127.0.0.1:7000,redis://u:secret@127.0.0.2:7001 ,")
                .unwrap();
        assert!(conn.is_cluster());
        assert_eq!(conn.server(), "cluster 127.0.0.1:7000,127.0.0.2:7001");
        assert!(!format!("{conn:?}").contains("secret"));
        assert!(
            !RedisConnection::open("redis://127.0.0.1")
                .unwrap()
                .is_cluster()
        );
        for bad in [
            "",
            " , ",
            "redis://127.0.0.1:7000/3",
            "http://127.0.0.1:7000",
        ] {
            assert!(RedisConnection::open_cluster(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_with_one_hash_tag_share_a_slot() {
        assert_eq!(slot_of("x{a}1"), slot_of("y{a}2"));
        assert_ne!(slot_of("{a}"), slot_of("{b}"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot_of("x{}1"), slot_of("y{}1"));
    }

    #[tokio::test]
    async fn a_server_or_cluster_that_is_not_there_is_unavailable_within_the_deadline() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for conn in [
            RedisConnection::open(&format!("redis://127.0.0.1:{port}")).unwrap(),
            RedisConnection::open_cluster(&format!("127.0.0.1:{port}")).unwrap(),
        ] {
            let err = query::<String>(
                &conn,
                Duration::from_millis(500),
                &deadpool_redis::redis::cmd("PING"),
            )
            .await
            .unwrap_err();
            assert!(err.is_unavailable(), "{conn:?}: {err:?}");
        }
    }
}
