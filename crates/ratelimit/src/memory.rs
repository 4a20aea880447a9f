//! The in-process backend.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use async_trait::async_trait;
use sofiia_core_domain::DynClock;

use crate::gcra;
use crate::{Charge, Decision, RateLimitError, RateLimiter, Result};

/// GCRA rate limits held in this process's memory.
///
/// Exact within one process; instances of a service that must share quotas
/// need `RedisRateLimiter` (feature `redis`) instead. Time comes
/// from the injected clock, so tests can drive it.
///
/// # Memory
///
/// One entry per bucket (a policy and key) whose quota is not fully
/// restored. An entry whose theoretical arrival time has passed is
/// indistinguishable from no entry, so such idle entries are dropped as time
/// passes (on every decision, in order of TAT: amortised O(log n) each).
/// Under a flood of distinct keys the number of entries never exceeds
/// `capacity`: when it would, the entries that would become idle soonest are
/// evicted first. Evicting an entry that is not idle yet forgets part of a
/// spent quota (its bucket acts full again), so choose a capacity above the
/// number of buckets that can be active within one period; the default
/// cleanup alone keeps the map at that size.
///
/// # Locking
///
/// One [`Mutex`], held only for the arithmetic of one decision and never
/// across an `.await`; a multi-policy decision must see and update all its
/// buckets at once, which one lock gives without lock ordering. If a panic
/// ever struck while it was held, every later call fails with
/// [`RateLimitError::Backend`] rather than trusting half-updated state.
///
/// ```
/// use std::sync::Arc;
/// use sofiia_core_domain::SystemClock;
/// use sofiia_ratelimit::{Charge, MemoryRateLimiter, Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = MemoryRateLimiter::new(Arc::new(SystemClock), 10_000);
/// let quota = Quota::per_minute(2)?;
/// let charge = [Charge::new("chat", "incident-42", quota)];
/// assert!(limiter.check(&charge).await?.allowed);
/// assert!(limiter.check(&charge).await?.allowed);
/// assert!(!limiter.check(&charge).await?.allowed);
/// assert_eq!(limiter.len()?, 1);
/// # Ok(())
/// # }
/// ```
pub struct MemoryRateLimiter {
    clock: Arc<DynClock>,
    capacity: usize,
    inner: Mutex<Buckets>,
}

/// Every non-idle bucket, by name and by TAT.
#[derive(Default)]
struct Buckets {
    /// policy → key → TAT (µs).
    tats: HashMap<&'static str, HashMap<Arc<str>, u64>>,
    /// `(TAT, policy, key)` of every entry of `tats`: the order in which
    /// they become idle.
    by_tat: BTreeSet<(u64, &'static str, Arc<str>)>,
}

impl Buckets {
    fn len(&self) -> usize {
        self.by_tat.len()
    }

    fn get(&self, policy: &'static str, key: &str) -> Option<u64> {
        self.tats.get(policy)?.get(key).copied()
    }

    fn set(&mut self, policy: &'static str, key: &str, tat: u64) {
        let keys = self.tats.entry(policy).or_default();
        let key: Arc<str> = match keys.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(key),
        };
        if let Some(old) = keys.insert(Arc::clone(&key), tat) {
            self.by_tat.remove(&(old, policy, Arc::clone(&key)));
        }
        self.by_tat.insert((tat, policy, key));
    }

    /// Drops the entry that becomes idle soonest.
    fn pop_soonest(&mut self) {
        if let Some((_, policy, key)) = self.by_tat.pop_first()
            && let Some(keys) = self.tats.get_mut(policy)
        {
            keys.remove(&*key);
            if keys.is_empty() {
                self.tats.remove(policy);
            }
        }
    }

    /// Drops every entry whose TAT is not after `now`: they are idle.
    fn drop_idle(&mut self, now: u64) {
        while self.by_tat.first().is_some_and(|(tat, _, _)| *tat <= now) {
            self.pop_soonest();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum MemoryError {
    /// The lock was poisoned by a panic while it was held.
    #[error("the in-memory rate limiter is unusable: a panic interrupted an update")]
    Poisoned,
}

impl From<MemoryError> for RateLimitError {
    fn from(err: MemoryError) -> Self {
        RateLimitError::Backend {
            source: Box::new(err),
        }
    }
}

impl MemoryRateLimiter {
    /// A limiter with no spent quota, keeping at most `capacity` buckets
    /// (at least 1; a 0 is taken as 1).
    pub fn new(clock: Arc<DynClock>, capacity: usize) -> Self {
        Self {
            clock,
            capacity: capacity.max(1),
            inner: Mutex::new(Buckets::default()),
        }
    }

    /// The most buckets it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many buckets it keeps now, idle ones not yet dropped included.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Backend`] if a panic poisoned its state.
    pub fn len(&self) -> Result<usize> {
        Ok(self.lock()?.len())
    }

    /// Whether it keeps no bucket.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Backend`] if a panic poisoned its state.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    // A poisoned lock is reported, not recovered with `into_inner`: the panic
    // may have struck between the updates of `tats` and `by_tat`.
    fn lock(&self) -> Result<MutexGuard<'_, Buckets>, MemoryError> {
        self.inner.lock().map_err(|_| MemoryError::Poisoned)
    }

    fn decide(&self, charges: &[Charge]) -> Result<Decision, MemoryError> {
        // Read the clock before the lock: a slow clock must not stretch the
        // critical section.
        let now = gcra::micros(self.clock.now());
        let mut buckets = self.lock()?;
        buckets.drop_idle(now);

        // Phase 1: every bucket's TAT before its charge, nothing written. A
        // bucket named earlier in this decision is seen as that earlier
        // charge left it.
        let mut tats = Vec::with_capacity(charges.len());
        for (i, charge) in charges.iter().enumerate() {
            let earlier = charges[..i]
                .iter()
                .zip(&tats)
                .rev()
                .find(|(c, _)| c.policy == charge.policy && c.key == charge.key)
                .map(|(c, &tat)| {
                    if gcra::admits(c, now, tat) {
                        gcra::charged(c, tat)
                    } else {
                        tat
                    }
                });
            let stored = earlier.or_else(|| buckets.get(charge.policy, &charge.key));
            tats.push(stored.unwrap_or(now).max(now));
        }
        let decision = gcra::decide(charges, now, &tats);

        // Phase 2: all or none.
        if decision.allowed {
            for (charge, &tat) in charges.iter().zip(&tats) {
                buckets.set(charge.policy, &charge.key, gcra::charged(charge, tat));
            }
            while buckets.len() > self.capacity {
                buckets.pop_soonest();
            }
        }
        Ok(decision)
    }
}

impl fmt::Debug for MemoryRateLimiter {
    // Sizes only: keys may name users, and a busy lock must not block a
    // `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("MemoryRateLimiter");
        s.field("clock", &self.clock)
            .field("capacity", &self.capacity);
        match self.inner.try_lock() {
            Ok(buckets) => s.field("buckets", &buckets.len()),
            Err(TryLockError::WouldBlock) => s.field("buckets", &"locked"),
            Err(TryLockError::Poisoned(_)) => s.field("buckets", &"poisoned"),
        };
        s.finish()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, charges: &[Charge]) -> Result<Decision> {
        Ok(self.decide(charges)?)
    }

    async fn ping(&self) -> Result<()> {
        // Usable exactly when the lock is not poisoned.
        drop(self.lock()?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use sofiia_core_domain::{Clock, ManualClock};

    use super::*;
    use crate::testing::TestLimiter;
    use crate::{DynRateLimiter, Quota};

    crate::rate_limiter_tests!(
        async fn limiter(clock: Arc<ManualClock>) -> Option<TestLimiter> {
            Some(TestLimiter::new(MemoryRateLimiter::new(clock, 10_000)))
        }
    );

    fn charge(policy: &'static str, key: &str, quota: &str) -> Charge {
        Charge::new(policy, key, quota.parse().unwrap())
    }

    /// The same decisions from storage that never forgets a bucket: the
    /// oracle for what dropping idle entries may not change.
    #[derive(Default)]
    struct Reference(HashMap<(&'static str, String), u64>);

    impl Reference {
        fn check(&mut self, charges: &[Charge], now: u64) -> Decision {
            let mut pending: HashMap<(&'static str, String), u64> = HashMap::new();
            let mut tats = Vec::new();
            for c in charges {
                let k = (c.policy, c.key.clone());
                let tat = pending.get(&k).or(self.0.get(&k)).copied();
                let tat = tat.unwrap_or(now).max(now);
                if gcra::admits(c, now, tat) {
                    pending.insert(k, gcra::charged(c, tat));
                }
                tats.push(tat);
            }
            let decision = gcra::decide(charges, now, &tats);
            if decision.allowed {
                self.0.extend(pending);
            }
            decision
        }
    }

    /// 100 000 distinct keys through a limiter of capacity 10 000: it never
    /// holds more, and every decision equals that of storage that never
    /// drops anything, because every entry it dropped was idle.
    #[tokio::test]
    async fn flood_of_distinct_keys_stays_bounded_without_changing_decisions() {
        let clock = Arc::new(ManualClock::default());
        let limiter = MemoryRateLimiter::new(clock.clone(), 10_000);
        let mut reference = Reference::default();
        // 2 per 8 s (T = 4 s). One new key per millisecond, charged again
        // 300 ms later, is live for 8 s: some 8 000 buckets at a time.
        let quota = Quota::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(8)).unwrap();
        let key = |i: u32| Charge::new("chat", format!("flood-{i}"), quota);
        let (mut max_len, mut refused) = (0, 0);
        for i in 0..100_000u32 {
            let now = gcra::micros(clock.now());
            let mut charges = vec![key(i)];
            if i >= 300 {
                charges.push(key(i - 300));
            }
            if i >= 600 && i % 5 == 0 {
                // A third charge within 8 s: refused, so nothing is charged.
                charges.push(key(i - 600));
            }
            let decision = limiter.check(&charges).await.unwrap();
            assert_eq!(decision, reference.check(&charges, now), "decision {i}");
            refused += usize::from(!decision.allowed);
            if i >= 9_000 && i % 97 == 0 {
                // A key idle for a second: dropped, and as good as new.
                let idle = [key(i - 9_000)];
                let decision = limiter.check(&idle).await.unwrap();
                assert_eq!(decision, reference.check(&idle, now), "idle {i}");
                assert_eq!(decision.policies[0].remaining, 1);
            }
            let len = limiter.len().unwrap();
            assert!(len <= limiter.capacity(), "{len} buckets at {i}");
            max_len = max_len.max(len);
            clock.advance(Duration::from_millis(1));
        }
        assert!(refused >= 1_000, "only {refused} refusals");
        assert!(max_len >= 7_000, "the flood filled only {max_len} buckets");
        assert!(reference.0.len() >= 99_000);
    }

    /// With more live buckets than room, those that become idle soonest go
    /// first, and the limiter never exceeds its capacity.
    #[tokio::test]
    async fn capacity_evicts_the_buckets_idle_soonest() {
        let clock = Arc::new(ManualClock::default());
        let limiter = MemoryRateLimiter::new(clock.clone(), 10);
        // 1/min: key k, charged at second k, is idle at second k + 60.
        for k in 0..20 {
            let decision = limiter
                .check(&[charge("chat", &format!("k{k}"), "1/min")])
                .await
                .unwrap();
            assert!(decision.allowed);
            assert_eq!(limiter.len().unwrap(), (k + 1).min(10));
            clock.advance(Duration::from_secs(1));
        }
        // k10..k19 are kept (still spent), k0..k9 were evicted (full again).
        for k in (10..20).rev() {
            let d = limiter
                .check(&[charge("chat", &format!("k{k}"), "1/min")])
                .await
                .unwrap();
            assert!(!d.allowed, "k{k} must still be spent");
        }
        let d = limiter
            .check(&[charge("chat", "k9", "1/min")])
            .await
            .unwrap();
        assert!(d.allowed, "k9 was evicted, so its bucket is full again");
        assert_eq!(limiter.len().unwrap(), 10);
        // k9 replaced k10, the soonest idle of the kept ones.
        let d = limiter
            .check(&[charge("chat", "k10", "1/min")])
            .await
            .unwrap();
        assert!(d.allowed);
    }

    #[tokio::test]
    async fn idle_buckets_are_dropped_as_time_passes() {
        let clock = Arc::new(ManualClock::default());
        let limiter = MemoryRateLimiter::new(clock.clone(), 100);
        for k in 0..5 {
            limiter
                .check(&[charge("chat", &format!("k{k}"), "3/min")])
                .await
                .unwrap();
        }
        limiter
            .check(&[charge("operator", "o", "1/h")])
            .await
            .unwrap();
        assert_eq!(limiter.len().unwrap(), 6);
        // 3/min: one charge leaves a TAT 20 s ahead.
        clock.advance(Duration::from_secs(20));
        limiter.check(&[]).await.unwrap();
        assert_eq!(limiter.len().unwrap(), 1);
        clock.advance(Duration::from_secs(3600));
        limiter.check(&[]).await.unwrap();
        assert!(limiter.is_empty().unwrap());
    }

    #[tokio::test]
    async fn a_poisoned_lock_is_a_backend_error() {
        let limiter = Arc::new(MemoryRateLimiter::new(Arc::new(ManualClock::default()), 10));
        let poisoner = Arc::clone(&limiter);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.inner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(joined.is_err());
        let dyn_limiter: &DynRateLimiter = &*limiter;
        let err = dyn_limiter
            .check(&[charge("chat", "c", "1/s")])
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Backend { .. }), "{err:?}");
        let err = dyn_limiter.ping().await.unwrap_err();
        assert!(matches!(err, RateLimitError::Backend { .. }), "{err:?}");
        assert!(format!("{limiter:?}").contains("poisoned"));
    }

    #[test]
    fn debug_shows_sizes_only() {
        let limiter = MemoryRateLimiter::new(Arc::new(ManualClock::default()), 0);
        assert_eq!(limiter.capacity(), 1);
        let debug = format!("{limiter:?}");
        assert!(debug.contains("buckets: 0"), "{debug}");
    }
}
