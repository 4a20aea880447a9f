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

/// The largest time, in microseconds, the script may be given: Lua numbers
/// are doubles, exact up to 2^53, and a TAT may lie up to
/// [`Quota::MAX_PERIOD`] beyond now.
const MAX_NOW_MICROS: u64 = (1 << 53) - Quota::MAX_PERIOD.as_secs() * 1_000_000;

/// Where a [`RedisRateLimiter`] takes the current time from.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME`, read inside the script): one clock
    /// for every instance, however far their own clocks drift. On a
    /// cluster, each bucket is read on the clock of the primary that holds
    /// it, still one clock per bucket. Use it in production.
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
/// or none, atomically (on a Redis Cluster, one per slot: see below). A
/// bucket is one string key holding its theoretical
/// arrival time, with a `PX` TTL that ends when the bucket is idle, so idle
/// buckets take no memory. Time is the Redis server's (`TIME`) unless
/// [`TimeSource::Client`] says otherwise.
///
/// # Keys
///
/// `<prefix>rl:{<policy>:<key>}`, where policy and key are
/// percent-escaped (`%`, `:`, `{`, `}`, and every byte outside printable
/// ASCII), so no key, whatever a user puts in it, can reach another bucket
/// or break the layout; braces in the prefix are escaped too, so the hash
/// tag is always the bucket's own `{<policy>:<key>}`.
///
/// # Redis Cluster
///
/// Each bucket is its own hash slot, so one chat's and one operator's
/// buckets, and the buckets of all chats and operators, spread over the
/// cluster's primaries. A script may only touch keys of one slot, so on a
/// cluster ([`RedisConnection::open_cluster`]) a decision runs one script
/// per slot, in the order of its charges: each charges its buckets only if
/// they all allow it; once one refuses, the rest are only read (for the
/// policies' state), and the slots already charged are charged back
/// (their TATs move back by one interval). Quotas stay exact: a request is
/// allowed only after every bucket admitted it, so no bucket ever admits
/// more than its quota, and a refused request keeps no charge once the
/// decision returns. The cluster client resends a command whose connection
/// dropped before its reply, so a script may run twice: a charge run twice
/// only makes its buckets stricter, and each refund carries an id (a
/// marker key in its bucket's slot, kept a minute) so that it is taken
/// back once. While a refused decision is taking its charges back, a
/// concurrent request may see them and be refused too: the error is only
/// ever on the strict side. If Redis fails in the middle, the charges made
/// are taken back when possible and the caller gets the failure; one that
/// cannot be taken back makes its bucket stricter until it drains. A
/// decision over one slot (or on a single server, for any keys) is one
/// script, as before.
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
    /// The prefix, braces escaped.
    key_prefix: String,
    options: RedisOptions,
    script: Script,
}

impl RedisRateLimiter {
    /// A limiter on `conn` with default options, its keys starting with
    /// `prefix`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        Self::with_options(conn, prefix, RedisOptions::default())
    }

    /// A limiter on `conn` with the given options.
    pub fn with_options(
        conn: RedisConnection,
        prefix: impl Into<String>,
        options: RedisOptions,
    ) -> Self {
        let key_prefix = sofiia_redis_support::escape_braces(&prefix.into());
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

    /// The Redis key of `(policy, key)`'s bucket:
    /// `<prefix>rl:{<policy>:<key>}`, its own hash slot on a cluster.
    fn bucket_key(&self, policy: &str, key: &str) -> String {
        let mut out = String::with_capacity(self.key_prefix.len() + policy.len() + key.len() + 6);
        out.push_str(&self.key_prefix);
        out.push_str("rl:{");
        escape_into(&mut out, policy);
        out.push(':');
        escape_into(&mut out, key);
        out.push('}');
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
        let now = self.now_arg()?;
        let keys: Vec<String> = charges
            .iter()
            .map(|c| self.bucket_key(c.policy, &c.key))
            .collect();
        let groups = slot_groups(&keys, self.conn.is_cluster());
        let mut nows = vec![0; charges.len()];
        let mut tats = vec![0; charges.len()];
        let mut charged = 0;
        let mut allowed = true;
        for group in &groups {
            let mode = if allowed { Mode::Charge } else { Mode::Peek };
            let ran = self.run(mode, &now, group, charges, &keys, &mut tats).await;
            let (group_allowed, group_now) = match ran {
                Ok(ran) => ran,
                Err(e) => {
                    // Best effort: the caller sees the failure either way,
                    // and a charge left behind only makes the limit
                    // stricter until the bucket drains.
                    let _ = self.refund(&now, &groups[..charged], charges, &keys).await;
                    return Err(e);
                }
            };
            for &i in group {
                nows[i] = group_now;
            }
            if group_allowed && mode == Mode::Charge {
                charged += 1;
            }
            allowed &= group_allowed;
        }
        if !allowed {
            // Groups charged before a later one refused are taken back; on a
            // single slot there are none.
            self.refund(&now, &groups[..charged], charges, &keys)
                .await?;
        }
        Ok(gcra::decide_at(charges, &nows, &tats))
    }

    /// Takes back the charges of `groups`, in the order they were made.
    async fn refund(
        &self,
        now: &str,
        groups: &[Vec<usize>],
        charges: &[Charge],
        keys: &[String],
    ) -> Result<(), RedisError> {
        let mut scratch = vec![0; charges.len()];
        for group in groups {
            let id = uuid::Uuid::new_v4().as_u128();
            self.run(Mode::Refund(id), now, group, charges, keys, &mut scratch)
                .await?;
        }
        Ok(())
    }

    /// Runs the script in `mode` over the charges of `group` (indices into
    /// `charges` and `keys`, all in one slot on a cluster), writing their
    /// TATs into `tats` unless refunding. Returns whether the script allowed
    /// them, and its time.
    async fn run(
        &self,
        mode: Mode,
        now: &str,
        group: &[usize],
        charges: &[Charge],
        keys: &[String],
        tats: &mut [u64],
    ) -> Result<(bool, u64), RedisError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(now);
        invocation.arg(u64::try_from(self.options.ttl_grace.as_millis()).unwrap_or(u64::MAX));
        invocation.arg(mode.arg());
        for &i in group {
            invocation.key(&keys[i]);
            invocation.arg(charges[i].quota.interval_micros());
            invocation.arg(charges[i].quota.count().get());
        }
        let reply =
            sofiia_redis_support::invoke(&self.conn, self.options.timeout, &invocation).await?;
        let reply: Vec<i64> = redis::FromRedisValue::from_redis_value(reply)
            .map_err(|_| RedisError::UnexpectedReply)?;
        let refund = matches!(mode, Mode::Refund(_));
        let expected = if refund { 0 } else { group.len() };
        let (script_allowed, script_now, script_tats) = match reply.as_slice() {
            [allowed, now, tats @ ..] if tats.len() == expected => (*allowed, *now, tats),
            _ => return Err(RedisError::UnexpectedReply),
        };
        let script_now = u64::try_from(script_now).map_err(|_| RedisError::UnexpectedReply)?;
        for (&i, &tat) in group.iter().zip(script_tats) {
            tats[i] = u64::try_from(tat).map_err(|_| RedisError::UnexpectedReply)?;
        }
        if !refund {
            // The script wrote (or not) by its own arithmetic; a report that
            // disagrees with it must not reach the caller.
            let mine = group
                .iter()
                .all(|&i| gcra::admits(&charges[i], script_now, tats[i]));
            if mine != (script_allowed == 1) {
                return Err(RedisError::Inconsistent);
            }
        }
        Ok((script_allowed == 1, script_now))
    }
}

/// What one run of the script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Decide and, if allowed, charge every bucket.
    Charge,
    /// Decide and charge nothing.
    Peek,
    /// Take back one earlier charge, once: the id names the refund.
    Refund(u128),
}

impl Mode {
    /// The script's mode argument.
    fn arg(self) -> String {
        match self {
            Mode::Charge => "charge".into(),
            Mode::Peek => "peek".into(),
            Mode::Refund(id) => format!("refund:{id:032x}"),
        }
    }
}

/// The charges (indices into `keys`) grouped by the hash slot of their
/// keys, groups in the order of their first charge: one group on a single
/// server, where a script may touch any keys.
fn slot_groups(keys: &[String], cluster: bool) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..keys.len()).collect()];
    }
    let mut groups: Vec<(sofiia_redis_support::Slot, Vec<usize>)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = sofiia_redis_support::slot_of(key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
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
            Some(on_clock(redis, clock))
        }
    );

    /// A limiter in `redis` on the test clock, keeping the context.
    fn on_clock(redis: RedisTestContext, clock: Arc<ManualClock>) -> TestLimiter {
        let limiter = on_client_clock(&redis, clock);
        TestLimiter::with_guard(limiter, redis)
    }

    fn on_client_clock(redis: &RedisTestContext, clock: Arc<ManualClock>) -> RedisRateLimiter {
        RedisRateLimiter::with_options(redis.conn.clone(), &redis.prefix, client_time(clock))
    }

    fn client_time(clock: Arc<ManualClock>) -> RedisOptions {
        RedisOptions::default()
            .with_time_source(TimeSource::Client(clock))
            // The test clock stands still; keys must not expire under it.
            .with_ttl_grace(Duration::from_secs(3600))
    }

    /// The same suite on a three-primary Redis Cluster, where a decision's
    /// buckets live on different primaries.
    mod on_cluster {
        use super::*;
        use crate::MemoryRateLimiter;

        crate::rate_limiter_tests!(
            async fn limiter(clock: Arc<ManualClock>) -> Option<TestLimiter> {
                let redis = RedisTestContext::cluster("ratelimit-cluster-suite").await?;
                Some(on_clock(redis, clock))
            }
        );

        /// Every decision, refusals by the first or a later slot's buckets
        /// included, reports and leaves the same state as the one-process
        /// limiter: a refused decision takes back what it charged on other
        /// primaries.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn decisions_over_several_primaries_match_the_memory_limiter() {
            let Some(redis) = RedisTestContext::cluster("ratelimit-cluster-refund").await else {
                return;
            };
            let clock = Arc::new(ManualClock::default());
            let limiter = on_client_clock(&redis, clock.clone());
            let memory = MemoryRateLimiter::new(clock.clone(), 1000);
            let send = |chat: &str, operator: &str| {
                [
                    charge("chat", chat, "3/min"),
                    charge("operator", operator, "4/min"),
                    charge("global", "all", "100/min"),
                ]
            };
            assert_ne!(
                sofiia_redis_support::slot_of(&limiter.bucket_key("chat", "c1")),
                sofiia_redis_support::slot_of(&limiter.bucket_key("operator", "alice")),
            );
            let script = [
                send("c1", "alice"),
                send("c1", "alice"),
                send("c1", "alice"),
                // Refused by the chat, the first slot: nothing charged.
                send("c1", "alice"),
                send("c2", "alice"),
                // Refused by the operator, a later slot: the chat and
                // global charges are taken back.
                send("c3", "alice"),
                send("c3", "alice"),
                send("c3", "bob"),
                send("c3", "bob"),
            ];
            let mut allowed = 0;
            for (step, charges) in script.iter().enumerate() {
                let got = limiter.check(charges).await.unwrap();
                let want = memory.check(charges).await.unwrap();
                assert_eq!(got, want, "step {step}");
                allowed += usize::from(got.allowed);
                if step == 4 {
                    clock.advance(Duration::from_secs(1));
                }
            }
            assert_eq!(allowed, 6);
            // c3 was refused twice after alice ran out: its bucket holds
            // only bob's two charges, so one more is left.
            let last = limiter
                .check(&[charge("chat", "c3", "3/min")])
                .await
                .unwrap();
            assert_eq!(
                last,
                memory
                    .check(&[charge("chat", "c3", "3/min")])
                    .await
                    .unwrap()
            );
            assert!(last.allowed);
            assert_eq!(last.policies[0].remaining, 0);
        }

        /// A refund run twice (a resent command) takes the charge back
        /// once: the bucket is never left with room beyond its quota.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_refund_run_twice_takes_back_one_charge() {
            let Some(redis) = RedisTestContext::cluster("ratelimit-refund-twice").await else {
                return;
            };
            let clock = Arc::new(ManualClock::default());
            let limiter = on_client_clock(&redis, clock.clone());
            let charges = [charge("chat", "twice", "3/min")];
            for _ in 0..3 {
                assert!(limiter.check(&charges).await.unwrap().allowed);
            }
            let keys = vec![limiter.bucket_key("chat", "twice")];
            let now = limiter.now_arg().unwrap();
            let mut scratch = vec![0];
            for _ in 0..2 {
                limiter
                    .run(Mode::Refund(7), &now, &[0], &charges, &keys, &mut scratch)
                    .await
                    .unwrap();
            }
            assert!(limiter.check(&charges).await.unwrap().allowed, "one back");
            assert!(!limiter.check(&charges).await.unwrap().allowed, "only one");
        }

        /// Each chat's and operator's buckets are keys of their own slots,
        /// spread over every primary.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn buckets_spread_over_every_primary() {
            let Some(redis) = RedisTestContext::cluster("ratelimit-cluster-spread").await else {
                return;
            };
            let limiter = RedisRateLimiter::new(redis.conn.clone(), &redis.prefix);
            for i in 0..24 {
                let charges = [
                    charge("chat", &format!("chat-{i}"), "5/min"),
                    charge("operator", &format!("op-{i}"), "5/min"),
                ];
                assert!(limiter.check(&charges).await.unwrap().allowed);
            }
            let held = redis.keys_per_node();
            assert_eq!(held.iter().sum::<usize>(), 48, "{held:?}");
            assert!(held.iter().all(|&n| n > 0), "{held:?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_corrupt_bucket_is_a_backend_error_on_a_cluster() {
            let Some(redis) = RedisTestContext::cluster("ratelimit-cluster-corrupt").await else {
                return;
            };
            corrupt_bucket_case(&redis).await;
        }
    }

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
    async fn each_bucket_is_its_own_hash_tag_and_user_input_is_escaped() {
        let limiter = RedisRateLimiter::new(conn("redis://127.0.0.1:1"), "app:");
        assert_eq!(limiter.bucket_key("chat", "c1"), "app:rl:{chat:c1}");
        assert_eq!(
            limiter.bucket_key("chat", "a:b%{c}\n é"),
            "app:rl:{chat:a%3Ab%25%7Bc%7D%0A%20%C3%A9}"
        );
        assert_eq!(limiter.bucket_key("chat:a", "b"), "app:rl:{chat%3Aa:b}");
        assert_ne!(
            limiter.bucket_key("chat", "a:b"),
            limiter.bucket_key("chat:a", "b")
        );
        // The cluster hash tag is the first `{...}`: always the escaped
        // policy and key, whatever the prefix or the key holds.
        fn tag(key: &str) -> &str {
            let open = key.find('{').expect("a tag");
            let close = key[open..].find('}').expect("closed") + open;
            &key[open + 1..close]
        }
        for prefix in ["", "app:", "x{}", "a{b", "a}b{", "{}{"] {
            let limiter = RedisRateLimiter::new(conn("redis://127.0.0.1:1"), prefix);
            for (policy, key, expected) in [
                ("chat", "{x}", "chat:%7Bx%7D"),
                ("operator", "}{", "operator:%7D%7B"),
                ("p", "", "p:"),
            ] {
                assert_eq!(
                    tag(&limiter.bucket_key(policy, key)),
                    expected,
                    "{prefix:?}"
                );
            }
        }
        let debug = format!("{limiter:?}");
        assert!(debug.contains("\"app:\""), "{debug}");
    }

    #[test]
    fn charges_group_by_slot_on_a_cluster_only() {
        let keys: Vec<String> = ["a{x}", "b{y}", "c{x}", "d{z}", "e{y}"]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(slot_groups(&keys, false), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(
            slot_groups(&keys, true),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
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

        let mut conn = redis.conn.handle();
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
            let max = if key.contains("{chat:") {
                3_000
            } else {
                3_600_000
            };
            assert!(ttl > 0 && ttl <= max, "{key}: PTTL {ttl}");
            assert!(key.starts_with(&format!("{}rl:{{", redis.prefix)), "{key}");
        }
    }

    /// A bucket key holding something else is a script error: `Backend`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_bucket_is_a_backend_error() {
        let Some(redis) = RedisTestContext::new("ratelimit-corrupt").await else {
            return;
        };
        corrupt_bucket_case(&redis).await;
    }

    /// A decision whose chat bucket holds text, or a hash, fails as
    /// `Backend` and leaves the operator bucket as it was.
    async fn corrupt_bucket_case(redis: &RedisTestContext) {
        let limiter = RedisRateLimiter::new(redis.conn.clone(), &redis.prefix);
        let mut conn = redis.conn.handle();
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
        // All or none: the operator bucket was not charged by either (on a
        // cluster: charged on its own primary, then taken back, which leaves
        // only the refunds' short-lived markers).
        let keys = redis.keys().await;
        let buckets: Vec<&String> = keys.iter().filter(|k| !k.contains(":refund:")).collect();
        assert_eq!(buckets.len(), 2, "{keys:?}");
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
