//! Redis failure classification shared by the sofiia-console backends.
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

use deadpool_redis::PoolError;
use deadpool_redis::redis::RedisError;

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
