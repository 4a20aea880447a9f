//! The Redis backend: exact across every process that shares one Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Script};
use sofiia_core_domain::DynClock;
use sofiia_redis_support::{CallError, RedisConnection};

use crate::gcra;
use crate::{Charge, Decision, Quota, RateLimitError, RateLimiter, Result};

/// The decision script; see the file for its contract.
const SCRIPT: &str = include_str!("redis.lua");

/// The hash tag every key of one limiter carries (after its prefix), so
/// that all of them live in one Redis Cluster slot.
const HASH_TAG: &str = "{rl}";

/// The largest time, in microseconds, the script may be given: Lua numbers
/// are doubles, exact up to 2^53, and a TAT may lie up to
/// [`Quota::MAX_PERIOD`] beyond now.
const MAX_NOW_MICROS: u64 = (1 << 53) - Quota::MAX_PERIOD.as_secs() * 1_000_000;

/// Where a [`RedisRateLimiter`] takes the current time from.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME`, read inside the script): one clock
    /// for every instance, however far their own clocks drift. Use it in
    /// production.
    #[default]
    Server,
    /// The given clock, passed to the script with each decision: for
    /// deterministic tests with a `ManualClock`. Instances using it must
    /// agree on the time, or each sees the others' charges shifted.
    Client(Arc<DynClock>),
}

/// How a [`RedisRateLimiter`] behaves; start from
/// [`RedisOptions::default`] and change what you need.
///
/// ```
/// use std::time::Duration;
/// use sofiia_ratelimit::{RedisOptions, TimeSource};
///
/// let options = RedisOptions::default()
///     .with_timeout(Duration::from_millis(500))
///     .with_time_source(TimeSource::Server);
/// assert_eq!(options.timeout(), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    timeout: Duration,
    time_source: TimeSource,
    ttl_grace: Duration,
}

impl Default for RedisOptions {
    /// A 2 s timeout, the server's clock, no TTL grace.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            time_source: TimeSource::Server,
            ttl_grace: Duration::ZERO,
        }
    }
}

impl RedisOptions {
    /// How long one operation (getting a connection and running the script,
    /// or a ping) may take before it fails with
    /// [`RateLimitError::Unavailable`] instead of keeping the request
    /// waiting. Default 2 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the time comes from. Default [`TimeSource::Server`].
    pub fn with_time_source(mut self, time_source: TimeSource) -> Self {
        self.time_source = time_source;
        self
    }

    /// How long each key outlives its idle time. Keys expire on the server's
    /// clock; with [`TimeSource::Client`] on a clock that runs slower than
    /// the server's (a frozen test clock), a key could otherwise expire
    /// while the client still counts it as spent. Default zero, right for
    /// [`TimeSource::Server`].
    pub fn with_ttl_grace(mut self, grace: Duration) -> Self {
        self.ttl_grace = grace;
        self
    }

    /// The operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time source.
    pub fn time_source(&self) -> &TimeSource {
        &self.time_source
    }

    /// The TTL grace.
    pub fn ttl_grace(&self) -> Duration {
        self.ttl_grace
    }
}

/// GCRA rate limits kept in Redis, exact across every process sharing it.
///
/// Each decision is one Lua script (`EVALSHA`, loaded again by itself after
/// a Redis restart) that reads every bucket, decides, and writes all of them
/// or none, atomically. A bucket is one string key holding its theoretical
/// arrival time, with a `PX` TTL that ends when the bucket is idle, so idle
/// buckets take no memory. Time is the Redis server's (`TIME`) unless
/// [`TimeSource::Client`] says otherwise.
///
/// # Keys
///
/// `<prefix>{rl}:<policy>:<key>`, where policy and key are
/// percent-escaped (`%`, `:`, `{`, `}`, and every byte outside printable
/// ASCII), so no key, whatever a user puts in it, can reach another bucket
/// or break the layout; braces in the prefix are escaped too.
///
/// # Redis Cluster
///
/// A script may only touch keys of one hash slot. The chat bucket of a
/// decision is shared with every operator and the operator bucket with
/// every chat, so no tag per chat or per operator could put both in one
/// slot for every decision: all keys of a limiter carry the one tag `{rl}`
/// and live in one slot, on one primary. Quotas stay exact across the
/// cluster; the price is that rate limiting does not spread over the
/// cluster's nodes (a few small keys and one short script per request are
/// well within one node's means). Run a separate prefix-tagged limiter per
/// shard of traffic if that ever becomes the bottleneck. (The connection
/// here is to one server; the layout is ready for a cluster client.)
///
/// # Failures
///
/// Every operation is one `EVALSHA` on the shared multiplexed
/// [`RedisConnection`], bounded by [`RedisOptions::with_timeout`]. A
/// connection or I/O failure, a timeout, or a server that is out of memory,
/// loading or failing over is [`RateLimitError::Unavailable`]; a script
/// error (such as a bucket key holding something else) is
/// [`RateLimitError::Backend`]: the classification every Redis backend
/// shares ([`CallError::is_unavailable`]). Nothing needs restarting when
/// Redis comes back: the connection is opened again and the script loaded
/// again on `NOSCRIPT`.
///
/// ```no_run
/// use sofiia_ratelimit::{Charge, Quota, RateLimiter, RedisRateLimiter};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = sofiia_ratelimit::RedisConnection::open("redis://127.0.0.1:6379")?;
/// let limiter = RedisRateLimiter::new(conn, "sofiia:");
/// let decision = limiter
///     .check(&[Charge::new("chat", "incident-42", Quota::per_minute(20)?)])
///     .await?;
/// # let _ = decision;
/// # Ok(())
/// # }
/// ```
pub struct RedisRateLimiter {
    conn: RedisConnection,
    /// `<prefix>{rl}:`, braces in the prefix escaped.
    key_prefix: String,
    options: RedisOptions,
    script: Script,
}

impl RedisRateLimiter {
    /// A limiter on `pool` with default options, its keys starting with
    /// `prefix`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        Self::with_options(conn, prefix, RedisOptions::default())
    }

    /// A limiter on `pool` with the given options.
    pub fn with_options(
        conn: RedisConnection,
        prefix: impl Into<String>,
        options: RedisOptions,
    ) -> Self {
        let prefix = prefix.into();
        let key_prefix = sofiia_redis_support::tagged_key_prefix(&prefix, HASH_TAG);
        Self {
            conn,
            key_prefix,
            options,
            script: Script::new(SCRIPT),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The Redis key of `(policy, key)`'s bucket.
    fn bucket_key(&self, policy: &str, key: &str) -> String {
        let mut out = String::with_capacity(self.key_prefix.len() + policy.len() + key.len() + 1);
        out.push_str(&self.key_prefix);
        escape_into(&mut out, policy);
        out.push(':');
        escape_into(&mut out, key);
        out
    }

    /// The time to pass to the script: empty for the server's clock.
    fn now_arg(&self) -> Result<String, RedisError> {
        match &self.options.time_source {
            TimeSource::Server => Ok(String::new()),
            TimeSource::Client(clock) => {
                let now = gcra::micros(clock.now());
                if now > MAX_NOW_MICROS {
                    return Err(RedisError::ClockOutOfRange);
                }
                Ok(now.to_string())
            }
        }
    }

    async fn decide(&self, charges: &[Charge]) -> Result<Decision, RedisError> {
        if charges.is_empty() {
            // Nothing to charge; not worth a round trip.
            return Ok(gcra::decide(charges, 0, &[]));
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(self.now_arg()?);
        invocation.arg(u64::try_from(self.options.ttl_grace.as_millis()).unwrap_or(u64::MAX));
        for charge in charges {
            invocation.key(self.bucket_key(charge.policy, &charge.key));
            invocation.arg(charge.quota.interval_micros());
            invocation.arg(charge.quota.count().get());
        }
        let reply =
            sofiia_redis_support::invoke(&self.conn, self.options.timeout, &invocation).await?;
        let reply: Vec<i64> = redis::FromRedisValue::from_redis_value(reply)
            .map_err(|_| RedisError::UnexpectedReply)?;

        let (script_allowed, now, tats) = match reply.as_slice() {
            [allowed, now, tats @ ..] if tats.len() == charges.len() => (*allowed, *now, tats),
            _ => return Err(RedisError::UnexpectedReply),
        };
        let now = u64::try_from(now).map_err(|_| RedisError::UnexpectedReply)?;
        let tats = tats
            .iter()
            .map(|&t| u64::try_from(t).map_err(|_| RedisError::UnexpectedReply))
            .collect::<Result<Vec<u64>, _>>()?;
        let decision = gcra::decide(charges, now, &tats);
        // The script wrote (or not) by its own arithmetic; a report that
        // disagrees with it must not reach the caller.
        if decision.allowed != (script_allowed == 1) {
            return Err(RedisError::Inconsistent);
        }
        Ok(decision)
    }
}

/// Appends `s` with `%`, `:`, braces, and every byte outside printable
/// ASCII as `%XX`: an injective encoding, so distinct (policy, key) pairs
/// always make distinct Redis keys.
fn escape_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'%' | b':' | b'{' | b'}' => push_hex(out, b),
            b'!'..=b'~' => out.push(char::from(b)),
            _ => push_hex(out, b),
        }
    }
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("key_prefix", &self.key_prefix)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, charges: &[Charge]) -> Result<Decision> {
        Ok(self.decide(charges).await?)
    }

    async fn ping(&self) -> Result<()> {
        sofiia_redis_support::query::<String>(
            &self.conn,
            self.options.timeout,
            &redis::cmd("PING"),
        )
        .await
        .map_err(RedisError::from)?;
        Ok(())
    }
}

/// What went wrong inside this backend; converted to [`RateLimitError`] at
/// the trait boundary, and kept as its source.
#[derive(Debug, thiserror::Error)]
enum RedisError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the rate-limit script's reply does not have the expected shape")]
    UnexpectedReply,
    #[error("the rate-limit script and this client disagree on a decision")]
    Inconsistent,
    #[error("the client clock is beyond the range the rate-limit script can represent")]
    ClockOutOfRange,
}

impl RedisError {
    /// Whether a later retry may succeed: the one classification of every
    /// Redis backend ([`CallError::is_unavailable`]).
    fn is_transient(&self) -> bool {
        match self {
            RedisError::Call(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl From<RedisError> for RateLimitError {
    fn from(err: RedisError) -> Self {
        if err.is_transient() {
            RateLimitError::Unavailable {
                source: Box::new(err),
            }
        } else {
            RateLimitError::Backend {
                source: Box::new(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::net::TcpListener;

    use sofiia_core_domain::ManualClock;
    use sofiia_testkit::{RedisServer, RedisTestContext};

    use super::*;
    use crate::testing::TestLimiter;

    crate::rate_limiter_tests!(
        async fn limiter(clock: Arc<ManualClock>) -> Option<TestLimiter> {
            let redis = RedisTestContext::new("ratelimit-suite").await?;
            let options = RedisOptions::default()
                .with_time_source(TimeSource::Client(clock))
                // The test clock stands still; keys must not expire under it.
                .with_ttl_grace(Duration::from_secs(3600));
            let limiter =
                RedisRateLimiter::with_options(redis.conn.clone(), &redis.prefix, options);
            Some(TestLimiter::with_guard(limiter, redis))
        }
    );

    fn charge(policy: &'static str, key: &str, quota: &str) -> Charge {
        Charge::new(policy, key, quota.parse().unwrap())
    }

    fn conn(url: &str) -> RedisConnection {
        sofiia_testkit::connection(url)
    }

    fn source(err: &RateLimitError) -> &RedisError {
        err.source()
            .and_then(|s| s.downcast_ref::<RedisError>())
            .expect("the Redis error is kept as the source")
    }

    #[tokio::test]
    async fn keys_share_one_hash_tag_and_escape_user_input() {
        let limiter = RedisRateLimiter::new(conn("redis://127.0.0.1:1"), "app:");
        assert_eq!(limiter.bucket_key("chat", "c1"), "app:{rl}:chat:c1");
        assert_eq!(
            limiter.bucket_key("chat", "a:b%{c}\n é"),
            "app:{rl}:chat:a%3Ab%25%7Bc%7D%0A%20%C3%A9"
        );
        assert_eq!(limiter.bucket_key("chat:a", "b"), "app:{rl}:chat%3Aa:b");
        assert_ne!(
            limiter.bucket_key("chat", "a:b"),
            limiter.bucket_key("chat:a", "b")
        );
        // The cluster hash tag is the first `{...}`: always `rl`.
        fn tag(key: &str) -> &str {
            let open = key.find('{').expect("a tag");
            let close = key[open..].find('}').expect("closed") + open;
            &key[open + 1..close]
        }
        for prefix in ["", "app:", "x{}", "a{b", "a}b{", "{}{"] {
            let limiter = RedisRateLimiter::new(conn("redis://127.0.0.1:1"), prefix);
            for (policy, key) in [("chat", "{x}"), ("operator", "}{"), ("p", "")] {
                assert_eq!(tag(&limiter.bucket_key(policy, key)), "rl", "{prefix:?}");
            }
        }
        let debug = format!("{limiter:?}");
        assert!(debug.contains("app:{rl}:"), "{debug}");
    }

    /// The real server clock: 3/min allows exactly 3 of 10 at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_time_allows_exactly_the_burst() {
        let Some(redis) = RedisTestContext::new("ratelimit-server-time").await else {
            return;
        };
        let limiter = RedisRateLimiter::new(redis.conn.clone(), &redis.prefix);
        assert!(matches!(
            limiter.options().time_source(),
            TimeSource::Server
        ));
        let c = [charge("chat", "server-time", "3/min")];
        let mut allowed = Vec::new();
        for _ in 0..10 {
            allowed.push(limiter.check(&c).await.unwrap().allowed);
        }
        // Ten checks take far less than the 20 s a new request needs.
        assert_eq!(allowed.iter().filter(|a| **a).count(), 3);
        assert_eq!(allowed[..3], [true, true, true]);
    }

    /// Every key written has a TTL no longer than its bucket's time to idle
    /// (plus the grace), so idle buckets vanish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_has_a_ttl() {
        let Some(redis) = RedisTestContext::new("ratelimit-ttl").await else {
            return;
        };
        let limiter = RedisRateLimiter::new(redis.conn.clone(), &redis.prefix);
        for i in 0..4 {
            let charges = [
                charge("chat", &format!("ttl-{i}"), "20/min"),
                charge("operator", "ttl-op", "4/h"),
            ];
            assert!(limiter.check(&charges).await.unwrap().allowed);
        }
        // A refused decision writes nothing.
        assert!(
            !limiter
                .check(&[charge("operator", "ttl-op", "4/h")])
                .await
                .unwrap()
                .allowed
        );
        assert_eq!(redis.key_count().await, 5);

        let mut conn = redis.conn.manager();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", redis.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            // 20/min once: idle in 3 s; 4/h spent: idle in 1 h.
            let max = if key.contains(":chat:") {
                3_000
            } else {
                3_600_000
            };
            assert!(ttl > 0 && ttl <= max, "{key}: PTTL {ttl}");
            assert!(
                key.starts_with(&format!("{}{{rl}}:", redis.prefix)),
                "{key}"
            );
        }
    }

    /// A bucket key holding something else is a script error: `Backend`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_bucket_is_a_backend_error() {
        let Some(redis) = RedisTestContext::new("ratelimit-corrupt").await else {
            return;
        };
        let limiter = RedisRateLimiter::new(redis.conn.clone(), &redis.prefix);
        let mut conn = redis.conn.manager();
        let _: () = redis::cmd("SET")
            .arg(limiter.bucket_key("chat", "text"))
            .arg("not a number")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(limiter.bucket_key("chat", "hash"))
            .arg("f")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in ["text", "hash"] {
            let err = limiter
                .check(&[
                    charge("operator", "o", "5/min"),
                    charge("chat", key, "5/min"),
                ])
                .await
                .unwrap_err();
            assert!(matches!(err, RateLimitError::Backend { .. }), "{err:?}");
            assert!(
                matches!(source(&err), RedisError::Call(CallError::Redis(_))),
                "{err:?}"
            );
        }
        // All or none: the operator bucket was not charged by either.
        assert_eq!(redis.key_count().await, 2);
    }

    /// Nothing listens: `Unavailable` from the refused connection itself,
    /// not from waiting out the timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_port_is_unavailable_at_once() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let options = RedisOptions::default().with_timeout(Duration::from_secs(600));
        let limiter = RedisRateLimiter::with_options(
            conn(&format!("redis://127.0.0.1:{port}")),
            "x:",
            options,
        );
        let err = limiter
            .check(&[charge("chat", "c", "1/s")])
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable { .. }), "{err:?}");
        assert!(
            matches!(source(&err), RedisError::Call(CallError::Redis(e)) if e.is_connection_refusal()),
            "{err:?}"
        );
        let err = limiter.ping().await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable { .. }), "{err:?}");
    }

    /// A server that accepts but never answers: the operation timeout turns
    /// the hang into `Unavailable`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_server_is_unavailable_after_the_timeout() {
        // Never accepted, never answered: the kernel completes the TCP
        // handshake from the backlog, then nothing comes back.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = RedisOptions::default().with_timeout(Duration::from_millis(200));
        let limiter = RedisRateLimiter::with_options(
            conn(&format!("redis://127.0.0.1:{port}")),
            "x:",
            options,
        );
        let err = limiter
            .check(&[charge("chat", "c", "1/s")])
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable { .. }), "{err:?}");
        assert!(
            matches!(source(&err), RedisError::Call(CallError::Timeout(_))),
            "{err:?}"
        );
        let err = limiter.ping().await.unwrap_err();
        assert!(
            matches!(source(&err), RedisError::Call(CallError::Timeout(_))),
            "{err:?}"
        );
        drop(listener);
    }

    /// Redis goes away and comes back (empty, its script cache flushed): the
    /// same limiter fails as `Unavailable`, then works again by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_when_redis_returns() {
        let Some(mut server) = RedisServer::start("ratelimit-recovery") else {
            return;
        };
        let limiter = RedisRateLimiter::with_options(
            conn(&server.url()),
            "recovery:",
            RedisOptions::default().with_timeout(Duration::from_secs(5)),
        );
        let c = [charge("chat", "c", "2/min")];
        assert!(limiter.check(&c).await.unwrap().allowed);
        limiter.ping().await.unwrap();

        server.stop();
        let err = limiter.check(&c).await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable { .. }), "{err:?}");
        let err = limiter.ping().await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable { .. }), "{err:?}");

        server.restart();
        limiter.ping().await.unwrap();
        // The restarted server lost its data: a full bucket again.
        let d = limiter.check(&c).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.policies[0].remaining, 1);
    }

    /// The shared classification: a server out of memory or loading is
    /// unavailable; a redirection (this client talks to one server) or a
    /// wrong type needs a person.
    #[test]
    fn the_limiter_classifies_as_every_redis_backend_does() {
        let transient = |line: &str| {
            let err = redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .and_then(|v| v.extract_error())
                .expect_err("an error reply");
            RedisError::Call(CallError::Redis(err)).is_transient()
        };
        assert!(transient("OOM used memory > maxmemory"));
        assert!(transient("LOADING Redis is loading the dataset in memory"));
        assert!(!transient("MOVED 3999 127.0.0.1:6381"));
        assert!(!transient("WRONGTYPE wrong kind of value"));
        assert!(RedisError::Call(CallError::Timeout(Duration::from_secs(1))).is_transient());
        assert!(!RedisError::UnexpectedReply.is_transient());
    }

    #[tokio::test]
    async fn a_client_clock_beyond_lua_precision_is_refused() {
        let clock = Arc::new(ManualClock::new(sofiia_core_domain::Timestamp::MAX));
        let options = RedisOptions::default().with_time_source(TimeSource::Client(clock));
        let limiter = RedisRateLimiter::with_options(conn("redis://127.0.0.1:1"), "x:", options);
        let err = limiter
            .check(&[charge("chat", "c", "1/s")])
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Backend { .. }), "{err:?}");
        assert!(matches!(source(&err), RedisError::ClockOutOfRange));
        // No charges: allowed without a round trip, even with no server.
        let d = limiter.check(&[]).await.unwrap();
        assert!(d.allowed && d.policies.is_empty());
    }
}
