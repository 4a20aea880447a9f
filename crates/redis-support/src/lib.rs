//! Redis plumbing shared by the sofiia-console backends: one multiplexed
//! connection ([`RedisConnection`]) that every backend's calls are
//! pipelined on, calls bound by a deadline ([`invoke`], [`query`]), key
//! prefixes carrying a Cluster hash tag ([`tagged_key_prefix`]), and the one
//! failure classification they all use.
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

use deadpool_redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use deadpool_redis::redis::{
    Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, ScriptInvocation, Value,
};
use tokio::time::timeout;

/// One multiplexed connection to a Redis server, shared by every caller of
/// every backend that holds a clone: concurrent calls are pipelined on it
/// (no connection is checked out per call), and it is opened again in the
/// background after it fails, so a Redis that comes back is used again
/// without a restart.
///
/// Opening is lazy: [`RedisConnection::open`] checks the address only, and
/// the first call connects. Every call here carries its own deadline.
#[derive(Clone)]
pub struct RedisConnection {
    manager: ConnectionManager,
    server: String,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address without credentials.
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
        Ok(Self { manager, server })
    }

    /// The server's address, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The underlying connection, for commands this crate has no helper
    /// for (tests, tools). Clones share the one connection.
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }
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
    let mut manager = conn.manager.clone();
    match timeout(deadline, invocation.invoke_async(&mut manager)).await {
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
    let mut manager = conn.manager.clone();
    match timeout(deadline, cmd.query_async(&mut manager)).await {
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

/// `prefix` with `{` and `}` escaped (as `%7B` and `%7D`), then `hash_tag`
/// and `:`. The escape makes `hash_tag` the first `{...}` of every key, so
/// all of a backend's keys share one Redis Cluster slot; an empty `{}` in
/// the prefix would otherwise hash each whole key to a slot of its own.
///
/// ```
/// assert_eq!(sofiia_redis_support::tagged_key_prefix("a{}b:", "{rl}"), "a%7B%7Db:{rl}:");
/// ```
pub fn tagged_key_prefix(prefix: &str, hash_tag: &str) -> String {
    let mut key_prefix = String::with_capacity(prefix.len() + hash_tag.len() + 1);
    for c in prefix.chars() {
        match c {
            '{' => key_prefix.push_str("%7B"),
            '}' => key_prefix.push_str("%7D"),
            c => key_prefix.push(c),
        }
    }
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
/// `CLUSTERDOWN`, or `OOM`: full until keys expire or are evicted).
/// Anything else the server says is not transient: a script error, a key of
/// the wrong type, a refused login, or a redirection (`MOVED`, `ASK`), which
/// a client of one server gets only when pointed at a cluster node.
pub fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
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
    async fn a_server_that_is_not_there_is_unavailable_within_the_deadline() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conn = RedisConnection::open(&format!("redis://127.0.0.1:{port}")).unwrap();
        let err = query::<String>(
            &conn,
            Duration::from_millis(500),
            &deadpool_redis::redis::cmd("PING"),
        )
        .await
        .unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
    }
}
