//! The behavioural suite every [`RateLimiter`] backend must pass.
//!
//! Each `case_*` function takes a fresh limiter and the [`ManualClock`] it
//! reads time from, and panics with a description of the first broken rule.
//! Run them all with [`rate_limiter_tests!`](crate::rate_limiter_tests),
//! which turns each case into one `#[tokio::test]`:
//!
//! ```
//! mod suite {
//!     use std::sync::Arc;
//!     use sofiia_ratelimit::MemoryRateLimiter;
//!     use sofiia_ratelimit::testing::{ManualClock, TestLimiter};
//!
//!     sofiia_ratelimit::rate_limiter_tests!(
//!         async fn limiter(clock: Arc<ManualClock>) -> Option<TestLimiter> {
//!             Some(TestLimiter::new(MemoryRateLimiter::new(clock, 1_000)))
//!         }
//!     );
//! }
//! # fn main() {}
//! ```
//!
//! A crate that does this needs `sofiia-ratelimit` with the `testing`
//! feature and `tokio` with the `macros` and `rt-multi-thread` features among
//! its dev-dependencies.
//!
//! Every outcome is exact: the clock moves only when a case moves it, so
//! counts, `remaining`, `reset_after` and `retry_after` are asserted to the
//! microsecond, and the concurrency cases count exactly how many of many
//! simultaneous decisions were allowed. Expected values are worked out by
//! hand from the quotas (see each case), never read back from the limiter.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use sofiia_core_domain::ManualClock;
use sofiia_testkit::Guarded;

use crate::{Charge, Decision, DynRateLimiter, PolicyState, Quota, RateLimiter};
use crate::{policy_header, ratelimit_header};

/// A limiter under test, with whatever must live as long as it.
pub struct TestLimiter(Guarded<DynRateLimiter>);

impl TestLimiter {
    /// A limiter that needs nothing kept alive.
    pub fn new(limiter: impl RateLimiter) -> Self {
        Self::with_guard(limiter, ())
    }

    /// A limiter and a guard to drop after it, such as the Redis test
    /// context owning its key prefix.
    pub fn with_guard(limiter: impl RateLimiter, guard: impl Any + Send) -> Self {
        Self(Guarded::with_guard(Arc::new(limiter), guard))
    }

    /// The limiter.
    pub fn limiter(&self) -> &Arc<DynRateLimiter> {
        self.0.shared()
    }
}

impl fmt::Debug for TestLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestLimiter")
            .field("limiter", self.limiter())
            .finish_non_exhaustive()
    }
}

/// Expands to one `#[tokio::test]` per case of [`testing`](crate::testing),
/// each on a fresh limiter from the given constructor.
///
/// The constructor is an `async fn(Arc<ManualClock>) -> Option<TestLimiter>`
/// whose limiter must read the time from the given clock; the cases move
/// it. It returns `None` to skip, after saying loudly why (as
/// `sofiia_testkit::RedisTestContext::new` does when no Redis is
/// configured). Give it inline (see the [module](crate::testing)
/// documentation) or as the path of such a function:
///
/// ```
/// mod suite {
///     use std::sync::Arc;
///     use sofiia_ratelimit::MemoryRateLimiter;
///     use sofiia_ratelimit::testing::{ManualClock, TestLimiter};
///
///     async fn fresh(clock: Arc<ManualClock>) -> Option<TestLimiter> {
///         Some(TestLimiter::new(MemoryRateLimiter::new(clock, 1_000)))
///     }
///
///     sofiia_ratelimit::rate_limiter_tests!(fresh);
/// }
/// # fn main() {}
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies. Every case always runs for a
/// backend that was constructed: one that cannot meet a case must fail it.
#[macro_export]
macro_rules! rate_limiter_tests {
    (@cases $ctor:path; $($case:ident),+ $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let clock = ::std::sync::Arc::new($crate::testing::ManualClock::default());
            let limiter: ::std::option::Option<$crate::testing::TestLimiter> =
                $ctor(::std::sync::Arc::clone(&clock)).await;
            let ::std::option::Option::Some(limiter) = limiter else {
                return;
            };
            $crate::testing::$case(limiter.limiter(), &clock).await;
        }
    )+};
    (async fn $ctor:ident($clock:ident: $clock_ty:ty) -> $ret:ty $body:block) => {
        async fn $ctor($clock: $clock_ty) -> $ret $body
        $crate::rate_limiter_tests!($ctor);
    };
    ($ctor:path) => {
        $crate::rate_limiter_tests!(@cases $ctor;
            // cases:begin (a unit test checks that every case is listed)
            case_ping_succeeds,
            case_empty_decision_is_allowed,
            case_burst_allows_exactly_count,
            case_refill_gives_one_per_emission_interval,
            case_full_period_restores_the_whole_burst,
            case_refusal_by_one_policy_charges_no_bucket,
            case_keys_are_isolated,
            case_policy_names_are_isolated,
            case_keys_that_look_alike_are_isolated,
            case_states_are_exact,
            case_per_second_quota,
            case_per_hour_quota,
            case_same_bucket_twice_is_charged_twice,
            case_concurrent_checks_admit_exactly_the_quota,
            case_concurrent_decisions_are_all_or_none,
            // cases:end
        );
    };
}

// ---------------------------------------------------------------------------
// Helpers.

fn quota(text: &str) -> Quota {
    Quota::parse(text).expect("a valid test quota")
}

fn charge(policy: &'static str, key: &str, q: &str) -> Charge {
    Charge::new(policy, key, quota(q))
}

async fn check(limiter: &DynRateLimiter, charges: &[Charge]) -> Decision {
    let decision = limiter
        .check(charges)
        .await
        .unwrap_or_else(|e| panic!("check failed: {e:?}"));
    assert_eq!(
        decision.policies.len(),
        charges.len(),
        "one state per charge: {decision:?}"
    );
    for (state, charge) in decision.policies.iter().zip(charges) {
        assert_eq!(state.policy, charge.policy, "states in charge order");
        assert_eq!(state.quota, charge.quota, "states carry their quota");
    }
    assert_eq!(
        decision.allowed,
        decision.policies.iter().all(|p| p.allowed),
        "allowed exactly when every policy allows: {decision:?}"
    );
    decision
}

/// Checks `charges` `n` times and returns which were allowed.
async fn check_n(limiter: &DynRateLimiter, charges: &[Charge], n: usize) -> Vec<bool> {
    let mut allowed = Vec::with_capacity(n);
    for _ in 0..n {
        allowed.push(check(limiter, charges).await.allowed);
    }
    allowed
}

fn first_n(n: usize, of: usize) -> Vec<bool> {
    (0..of).map(|i| i < n).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn state(
    policy: &'static str,
    q: &str,
    allowed: bool,
    remaining: u32,
    reset_after: Duration,
    retry_after: Duration,
) -> PolicyState {
    PolicyState {
        policy,
        quota: quota(q),
        allowed,
        remaining,
        reset_after,
        retry_after,
    }
}

// ---------------------------------------------------------------------------
// Cases.

/// A working backend answers `ping`.
pub async fn case_ping_succeeds(limiter: &Arc<DynRateLimiter>, _clock: &ManualClock) {
    limiter
        .ping()
        .await
        .unwrap_or_else(|e| panic!("ping failed: {e:?}"));
}

/// No charges: allowed, no policies.
pub async fn case_empty_decision_is_allowed(limiter: &Arc<DynRateLimiter>, _clock: &ManualClock) {
    let decision = check(&**limiter, &[]).await;
    assert_eq!(
        decision,
        Decision {
            allowed: true,
            policies: Vec::new()
        }
    );
}

/// `5/min`: of 20 rapid checks exactly the first 5 are allowed.
pub async fn case_burst_allows_exactly_count(limiter: &Arc<DynRateLimiter>, _clock: &ManualClock) {
    let c = [charge("chat", "burst", "5/min")];
    assert_eq!(check_n(&**limiter, &c, 20).await, first_n(5, 20));
}

/// `5/min` (T = 12 s): once spent, one more request after exactly 12 s,
/// not a millisecond earlier, and only one.
pub async fn case_refill_gives_one_per_emission_interval(
    limiter: &Arc<DynRateLimiter>,
    clock: &ManualClock,
) {
    let c = [charge("chat", "refill", "5/min")];
    assert_eq!(check_n(&**limiter, &c, 6).await, first_n(5, 6));
    clock.advance(ms(11_999));
    let early = check(&**limiter, &c).await;
    assert!(!early.allowed, "1 ms before T: {early:?}");
    assert_eq!(early.retry_after(), ms(1));
    clock.advance(ms(1));
    assert_eq!(check_n(&**limiter, &c, 3).await, first_n(1, 3));
    // Each further T gives exactly one more.
    for _ in 0..3 {
        clock.advance(secs(12));
        assert_eq!(check_n(&**limiter, &c, 2).await, first_n(1, 2));
    }
}

/// `5/min`: a full minute after the burst is spent, the whole burst again;
/// half a minute gives floor(30 / 12) = 2.
pub async fn case_full_period_restores_the_whole_burst(
    limiter: &Arc<DynRateLimiter>,
    clock: &ManualClock,
) {
    let c = [charge("chat", "period", "5/min")];
    assert_eq!(check_n(&**limiter, &c, 5).await, first_n(5, 5));
    clock.advance(secs(60));
    assert_eq!(check_n(&**limiter, &c, 8).await, first_n(5, 8));
    clock.advance(secs(30));
    assert_eq!(check_n(&**limiter, &c, 4).await, first_n(2, 4));
    // Long idle restores no more than the burst.
    clock.advance(secs(3600));
    assert_eq!(check_n(&**limiter, &c, 8).await, first_n(5, 8));
}

/// When one policy refuses, no bucket is charged: neither the allowing
/// policy's bucket nor the refusing one's.
pub async fn case_refusal_by_one_policy_charges_no_bucket(
    limiter: &Arc<DynRateLimiter>,
    _clock: &ManualClock,
) {
    let l = &**limiter;
    // The operator refuses (2/min spent); the chat would have allowed.
    let op = || charge("operator", "alice", "2/min");
    for chat in ["a", "b"] {
        assert!(
            check(l, &[charge("chat", chat, "5/min"), op()])
                .await
                .allowed
        );
    }
    for _ in 0..3 {
        let refused = check(l, &[charge("chat", "c", "5/min"), op()]).await;
        assert!(!refused.allowed);
        // The chat policy allows, with its bucket untouched: 5 remain.
        assert_eq!(
            refused.policies[0],
            state("chat", "5/min", true, 5, Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(
            refused.policies[1],
            state("operator", "2/min", false, 0, secs(60), secs(30))
        );
        assert_eq!(refused.refused_by().map(|p| p.policy), Some("operator"));
    }
    // Chat `c` alone: its first charge ever, so 4 remain after it.
    let alone = check(l, &[charge("chat", "c", "5/min")]).await;
    assert_eq!(
        alone.policies,
        [state("chat", "5/min", true, 4, secs(12), Duration::ZERO)]
    );

    // The chat refuses (1/min spent); the operator would have allowed.
    let op = || charge("operator", "bob", "60/min");
    assert!(
        check(l, &[charge("chat", "d", "1/min"), op()])
            .await
            .allowed
    );
    for _ in 0..3 {
        let refused = check(l, &[charge("chat", "d", "1/min"), op()]).await;
        assert!(!refused.allowed);
        assert_eq!(
            refused.policies[1],
            state("operator", "60/min", true, 59, secs(1), Duration::ZERO)
        );
    }
    // Bob was charged once in all: 58 remain after this one.
    let alone = check(l, &[op()]).await;
    assert_eq!(alone.policies[0].remaining, 58);
}

/// Spending one key's bucket leaves every other key's alone.
pub async fn case_keys_are_isolated(limiter: &Arc<DynRateLimiter>, _clock: &ManualClock) {
    let l = &**limiter;
    let a = [charge("chat", "a", "2/min")];
    let b = [charge("chat", "b", "2/min")];
    assert_eq!(check_n(l, &a, 3).await, first_n(2, 3));
    assert_eq!(check_n(l, &b, 3).await, first_n(2, 3));
    assert_eq!(check_n(l, &a, 1).await, [false]);
}

/// Equal keys under different policy names are different buckets.
pub async fn case_policy_names_are_isolated(limiter: &Arc<DynRateLimiter>, _clock: &ManualClock) {
    let l = &**limiter;
    let chat = [charge("chat", "same", "2/min")];
    let operator = [charge("operator", "same", "2/min")];
    assert_eq!(check_n(l, &chat, 3).await, first_n(2, 3));
    assert_eq!(check_n(l, &operator, 3).await, first_n(2, 3));
}

/// Keys and policy names that a careless key layout would merge (separators,
/// escapes, braces, empty, non-ASCII) are all distinct buckets.
pub async fn case_keys_that_look_alike_are_isolated(
    limiter: &Arc<DynRateLimiter>,
    _clock: &ManualClock,
) {
    let l = &**limiter;
    let buckets: [(&'static str, &str); 12] = [
        ("chat", "a:b"),
        ("chat:a", "b"),
        ("chat", "a%3Ab"),
        ("chat", "a"),
        ("chat", ""),
        ("chat:", ""),
        ("chat", "{rl}"),
        ("chat", "a}b{c"),
        ("chat", "a b"),
        ("chat", "a\nb"),
        ("chat", "ключ"),
        ("chat", "a*"),
    ];
    for (policy, key) in buckets {
        let c = [charge(policy, key, "1/min")];
        assert!(
            check(l, &c).await.allowed,
            "first charge of {policy:?}/{key:?}"
        );
    }
    for (policy, key) in buckets {
        let c = [charge(policy, key, "1/min")];
        assert!(
            !check(l, &c).await.allowed,
            "second charge of {policy:?}/{key:?}"
        );
    }
}

/// `remaining`, `reset_after`, `retry_after` and the IETF fields, worked out
/// by hand for `20/min` (T = 3 s) and `60/min` (T = 1 s).
pub async fn case_states_are_exact(limiter: &Arc<DynRateLimiter>, clock: &ManualClock) {
    let l = &**limiter;
    let chat = || charge("chat", "exact", "20/min");
    let op = || charge("operator", "exact", "60/min");
    let zero = Duration::ZERO;

    // t = 0: TATs move to 3 s and 1 s.
    let d = check(l, &[chat(), op()]).await;
    assert!(d.allowed);
    assert_eq!(
        d.policies,
        [
            state("chat", "20/min", true, 19, secs(3), zero),
            state("operator", "60/min", true, 59, secs(1), zero),
        ]
    );
    assert_eq!(d.retry_after(), Duration::ZERO);
    assert_eq!(d.retry_after_secs(), None);
    assert_eq!(
        policy_header(&d.policies),
        r#""chat";q=20;w=60, "operator";q=60;w=60"#
    );
    assert_eq!(
        ratelimit_header(&d.policies),
        r#""chat";r=19;t=3, "operator";r=59;t=1"#
    );

    // t = 0.5 s: TATs move to 6 s and 2 s; floor(54.5 / 3) = 18 remain.
    clock.advance(ms(500));
    let d = check(l, &[chat(), op()]).await;
    assert_eq!(
        d.policies,
        [
            state("chat", "20/min", true, 18, ms(5_500), zero),
            state("operator", "60/min", true, 58, ms(1_500), zero),
        ]
    );
    assert_eq!(
        ratelimit_header(&d.policies),
        r#""chat";r=18;t=6, "operator";r=58;t=2"#
    );

    // The chat's 18 left, alone: its TAT reaches 60 s.
    for left in (0..18).rev() {
        let d = check(l, &[chat()]).await;
        assert!(d.allowed);
        assert_eq!(d.policies[0].remaining, left);
    }
    assert_eq!(
        check(l, &[chat()]).await.policies[0].reset_after,
        ms(59_500)
    );

    // Refused: the chat allows again when TAT + T − now ≤ 60 s, at 3 s, in
    // 2.5 s. The operator allows, uncharged: TAT 2 s, 58 remain.
    let d = check(l, &[chat(), op()]).await;
    assert!(!d.allowed);
    assert_eq!(
        d.policies,
        [
            state("chat", "20/min", false, 0, ms(59_500), ms(2_500)),
            state("operator", "60/min", true, 58, ms(1_500), zero),
        ]
    );
    assert_eq!(d.retry_after(), ms(2_500));
    assert_eq!(d.retry_after_secs(), Some(3));
    assert_eq!(d.refused_by().map(|p| p.policy), Some("chat"));

    // t = 2.999 s: still refused, 1 ms to go.
    clock.advance(ms(2_499));
    let d = check(l, &[chat(), op()]).await;
    assert_eq!(
        d.policies[0],
        state("chat", "20/min", false, 0, ms(57_001), ms(1))
    );
    assert_eq!(d.retry_after_secs(), Some(1));

    // t = 3 s: allowed; the chat's TAT moves to 63 s, the operator's (2 s,
    // now in the past) to 4 s.
    clock.advance(ms(1));
    let d = check(l, &[chat(), op()]).await;
    assert_eq!(
        d.policies,
        [
            state("chat", "20/min", true, 0, secs(60), zero),
            state("operator", "60/min", true, 59, secs(1), zero),
        ]
    );
}

/// `3/s`: T = 333 333 µs, so a spent bucket allows again after 333.333 ms:
/// refused at 333 ms, allowed at 334 ms.
pub async fn case_per_second_quota(limiter: &Arc<DynRateLimiter>, clock: &ManualClock) {
    let l = &**limiter;
    let c = [charge("chat", "fast", "3/s")];
    assert_eq!(check_n(l, &c, 5).await, first_n(3, 5));
    let d = check(l, &c).await;
    assert_eq!(
        d.policies,
        [state(
            "chat",
            "3/s",
            false,
            0,
            Duration::from_micros(999_999),
            Duration::from_micros(333_333)
        )]
    );
    clock.advance(ms(333));
    let d = check(l, &c).await;
    assert_eq!(d.retry_after(), Duration::from_micros(333));
    clock.advance(ms(1));
    assert_eq!(check_n(l, &c, 2).await, first_n(1, 2));
    clock.advance(secs(1));
    assert_eq!(check_n(l, &c, 4).await, first_n(3, 4));
}

/// `4/h`: T = 15 min.
pub async fn case_per_hour_quota(limiter: &Arc<DynRateLimiter>, clock: &ManualClock) {
    let l = &**limiter;
    let c = [charge("operator", "slow", "4/h")];
    assert_eq!(check_n(l, &c, 4).await, first_n(4, 4));
    let d = check(l, &c).await;
    assert_eq!(
        d.policies,
        [state("operator", "4/h", false, 0, secs(3600), secs(900))]
    );
    assert_eq!(policy_header(&d.policies), r#""operator";q=4;w=3600"#);
    clock.advance(secs(899));
    assert_eq!(check(l, &c).await.retry_after(), secs(1));
    clock.advance(secs(1));
    assert_eq!(check_n(l, &c, 2).await, first_n(1, 2));
    clock.advance(secs(3600));
    assert_eq!(check_n(l, &c, 5).await, first_n(4, 5));
}

/// A bucket named twice in one decision is charged twice, and when the
/// second charge is refused, the first is not kept either.
pub async fn case_same_bucket_twice_is_charged_twice(
    limiter: &Arc<DynRateLimiter>,
    _clock: &ManualClock,
) {
    let l = &**limiter;
    let c = || charge("chat", "twice", "3/min");
    // T = 20 s: the first charge leaves 2, the second 1.
    let d = check(l, &[c(), c()]).await;
    assert!(d.allowed);
    assert_eq!(
        d.policies,
        [
            state("chat", "3/min", true, 2, secs(20), Duration::ZERO),
            state("chat", "3/min", true, 1, secs(40), Duration::ZERO),
        ]
    );
    // One left: a double charge is refused as a whole...
    let d = check(l, &[c(), c()]).await;
    assert!(!d.allowed);
    assert_eq!(
        d.policies[1],
        state("chat", "3/min", false, 0, secs(60), secs(20))
    );
    // ...so the last one is still there.
    let d = check(l, &[c()]).await;
    assert_eq!(
        d.policies,
        [state("chat", "3/min", true, 0, secs(60), Duration::ZERO)]
    );
}

/// Runs `n` decisions at once on the runtime's worker threads and returns
/// which were allowed, by task index.
async fn in_parallel(
    limiter: &Arc<DynRateLimiter>,
    n: usize,
    charges: impl Fn(usize) -> Vec<Charge>,
) -> Vec<bool> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (limiter, barrier, charges) =
                (Arc::clone(limiter), Arc::clone(&barrier), charges(i));
            tokio::spawn(async move {
                // Start together, so the decisions really overlap.
                barrier.wait().await;
                limiter.check(&charges).await
            })
        })
        .collect();
    let mut allowed = Vec::with_capacity(n);
    for task in tasks {
        let decision = task
            .await
            .unwrap_or_else(|e| panic!("a decision task failed: {e}"))
            .unwrap_or_else(|e| panic!("check failed: {e:?}"));
        allowed.push(decision.allowed);
    }
    allowed
}

/// 100 simultaneous decisions on one `10/min` bucket: exactly 10 allowed.
pub async fn case_concurrent_checks_admit_exactly_the_quota(
    limiter: &Arc<DynRateLimiter>,
    _clock: &ManualClock,
) {
    let allowed = in_parallel(limiter, 100, |_| vec![charge("chat", "hot", "10/min")]).await;
    assert_eq!(allowed.iter().filter(|a| **a).count(), 10);
    let after = check(&**limiter, &[charge("chat", "hot", "10/min")]).await;
    assert!(!after.allowed);
}

/// 60 simultaneous decisions, each on its own chat (`1/min`) and one shared
/// operator (`10/min`): exactly 10 allowed, and exactly the chats of those
/// 10 were charged.
pub async fn case_concurrent_decisions_are_all_or_none(
    limiter: &Arc<DynRateLimiter>,
    _clock: &ManualClock,
) {
    let chat = |i: usize| charge("chat", &format!("many-{i}"), "1/min");
    let allowed = in_parallel(limiter, 60, |i| {
        vec![chat(i), charge("operator", "shared", "10/min")]
    })
    .await;
    assert_eq!(allowed.iter().filter(|a| **a).count(), 10);
    for (i, was_allowed) in allowed.into_iter().enumerate() {
        let alone = check(&**limiter, &[chat(i)]).await;
        assert_eq!(
            alone.allowed, !was_allowed,
            "chat {i}: charged exactly when its decision was allowed"
        );
    }
}

#[cfg(test)]
mod tests {
    /// Every `case_*` function must be listed in the macro, or a backend
    /// would silently not run it.
    #[test]
    fn macro_lists_every_case() {
        let defined = sofiia_testkit::assert_every_case_listed(
            include_str!("testing.rs"),
            "rate_limiter_tests!",
        );
        assert!(defined >= 15, "found only {defined} cases");
    }
}
