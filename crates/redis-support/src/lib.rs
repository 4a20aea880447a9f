//! Redis plumbing shared by the sofiia-console backends: calls bound by a
//! deadline ([`invoke`], [`query`]), key prefixes carrying a Cluster hash tag
//! ([`tagged_key_prefix`]), and failure classification.
//!
//! The idempotency store and the rate limiter both turn a Redis failure
//! into one of two public errors: `Unavailable` (Redis or the way to it is
//! down, busy or failing over; a retry later may succeed, and the console
//! answers 503) or `Backend` (a script error, a key of the wrong type, a
//! refused login: a person has to look). [`is_transient`] is the one list
//! both start from (the rate limiter counts a few more failures as
//! transient on top of it), and [`pool_error_is_transient`] applies a
//! backend's classification to a failure of its connection pool.
//!
//! ```
//! use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};
//!
//! let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
//! assert!(sofiia_redis_support::is_transient(&loading));
//! let script = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "bad"));
//! assert!(!sofiia_redis_support::is_transient(&script));
//! ```

use std::time::Duration;

use deadpool_redis::redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, Value};
use deadpool_redis::{Connection, Pool, PoolError};
use tokio::time::{Instant, timeout_at};

/// Why one deadline-bound call failed; each backend maps it into its own
/// error and classifies it there.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be had from the pool.
    #[error("no Redis connection could be had from the pool")]
    Pool(#[from] PoolError),
    /// The command failed.
    #[error("the Redis command failed")]
    Redis(#[from] RedisError),
    /// No answer within the deadline (waiting for a connection included).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Runs a script on a connection from `pool`, all within `timeout`.
///
/// A connection that timed out or failed at the connection level is taken
/// out of the pool and dropped: a late reply could still be in its pipe, and
/// a dead one would fail every borrower until the pool's next health check.
///
/// # Errors
///
/// [`CallError`].
pub async fn invoke(
    pool: &Pool,
    timeout: Duration,
    invocation: &ScriptInvocation<'_>,
) -> Result<Value, CallError> {
    let deadline = Instant::now() + timeout;
    let mut conn = connection(pool, timeout, deadline).await?;
    let result = timeout_at(deadline, invocation.invoke_async(&mut conn)).await;
    settle(conn, timeout, result)
}

/// Runs `cmd` on a connection from `pool`, all within `timeout`, as
/// [`invoke`] does.
///
/// # Errors
///
/// [`CallError`].
pub async fn query<T: FromRedisValue>(
    pool: &Pool,
    timeout: Duration,
    cmd: &Cmd,
) -> Result<T, CallError> {
    let deadline = Instant::now() + timeout;
    let mut conn = connection(pool, timeout, deadline).await?;
    let result = timeout_at(deadline, cmd.query_async(&mut conn)).await;
    settle(conn, timeout, result)
}

async fn connection(
    pool: &Pool,
    timeout: Duration,
    deadline: Instant,
) -> Result<Connection, CallError> {
    match timeout_at(deadline, pool.get()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

fn settle<T>(
    conn: Connection,
    timeout: Duration,
    result: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
) -> Result<T, CallError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            if e.is_io_error() || e.is_unrecoverable_error() {
                drop(Connection::take(conn));
            }
            Err(e.into())
        }
        Err(_) => {
            drop(Connection::take(conn));
            Err(CallError::Timeout(timeout))
        }
    }
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
const RETRY_LATER: [&str; 6] = [
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
];

/// Whether a later retry may succeed: the connection failed (I/O error,
/// timeout, refused or dropped), or the server answered that it cannot
/// serve now (`BUSY`, `LOADING`, `MASTERDOWN`, `READONLY`, `TRYAGAIN`,
/// `CLUSTERDOWN`). Anything else the server says is not transient.
///
/// A backend may count more failures as transient on top of these.
pub fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        // By code rather than by `ErrorKind`: `BUSY` has no kind of its own,
        // and a reply whose code has a kind reports that same code.
        || err.code().is_some_and(|code| RETRY_LATER.contains(&code))
}

/// Whether a later retry may succeed after the pool failed: no connection
/// was free in time, the pool is closed, or opening a connection failed in
/// a way `is_transient` (a backend's classification, such as
/// [`is_transient`]) calls transient.
pub fn pool_error_is_transient(
    err: &PoolError,
    is_transient: impl FnOnce(&RedisError) -> bool,
) -> bool {
    match err {
        PoolError::Backend(e) => is_transient(e),
        PoolError::Timeout(_) | PoolError::Closed => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use deadpool_redis::redis::{
        ErrorKind, ServerErrorKind, make_extension_error, parse_redis_value,
    };
    use deadpool_redis::{HookError, TimeoutType};

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
            // The idempotency store's classification; the rate limiter adds
            // these on top.
            "OOM command not allowed when used memory > 'maxmemory'.",
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
    fn pool_failures_follow_the_given_classification() {
        let refused = || {
            PoolError::Backend(RedisError::from(io::Error::from(
                io::ErrorKind::ConnectionRefused,
            )))
        };
        assert!(pool_error_is_transient(&refused(), is_transient));
        assert!(!pool_error_is_transient(&refused(), |_| false));
        let oom = PoolError::Backend(reply("OOM no memory"));
        assert!(!pool_error_is_transient(&oom, is_transient));
        assert!(pool_error_is_transient(&oom, |e| e.code() == Some("OOM")));

        for err in [
            PoolError::Timeout(TimeoutType::Wait),
            PoolError::Timeout(TimeoutType::Create),
            PoolError::Timeout(TimeoutType::Recycle),
            PoolError::Closed,
        ] {
            assert!(pool_error_is_transient(&err, |_| false), "{err:?}");
        }
        assert!(!pool_error_is_transient(
            &PoolError::NoRuntimeSpecified,
            |_| true
        ));
        assert!(!pool_error_is_transient(
            &PoolError::PostCreateHook(HookError::message("no")),
            |_| true
        ));
    }
}
