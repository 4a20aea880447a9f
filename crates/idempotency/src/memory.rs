//! The in-process backend.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sofiia_core_domain::{DynClock, SystemClock, Timestamp};

use crate::fingerprint::ttl_millis;
use crate::{
    Fingerprint, IdempotencyError, IdempotencyStore, Lease, LeaseToken, Reservation, Result,
    ScopedKey, StoredResponse,
};

/// How many expired entries each operation removes on its way, at most.
/// Enough to keep pace with any rate of new keys (each call adds at most
/// one), small enough that no call holds the lock for long.
const PURGE_PER_CALL: usize = 4;

/// Keys of one process, bounded in number.
///
/// For a single instance, tests and demos; instances that share keys need a
/// shared backend such as `RedisIdempotencyStore`.
///
/// Time (lease and result expiry) comes from the injected clock. Memory is
/// bounded by `capacity` keys:
/// - expired entries are removed as operations pass them, and first
///   whenever room is needed;
/// - when the store is full and nothing has expired, the completed result
///   that expires first is evicted (a later retry of it runs again, which is
///   what happens after its TTL anyway, only sooner);
/// - an unexpired lease is never evicted: that would let a retry run while
///   the first execution is still going. A store full of live leases refuses
///   new keys with [`IdempotencyError::Unavailable`] (answer 503).
///
/// Every operation is O(log n): entries are indexed by expiry.
pub struct MemoryIdempotencyStore {
    clock: Arc<DynClock>,
    capacity: usize,
    inner: Mutex<Inner>,
}

/// A scoped key's digest: fixed-size and cheap to copy into the indexes.
type Slot = [u8; 32];

#[derive(Default)]
struct Inner {
    entries: HashMap<Slot, Entry>,
    /// In-flight entries by expiry.
    leases: BTreeSet<(Timestamp, Slot)>,
    /// Completed entries by expiry.
    results: BTreeSet<(Timestamp, Slot)>,
}

struct Entry {
    fingerprint: Fingerprint,
    expires_at: Timestamp,
    state: State,
}

enum State {
    InFlight(LeaseToken),
    Completed(StoredResponse),
}

/// Failures of this backend, boxed as the `source` of an [`IdempotencyError`].
#[derive(Debug, thiserror::Error)]
enum MemoryError {
    #[error("a thread panicked while holding the store's lock; its state may be inconsistent")]
    Poisoned,
    #[error("all {capacity} entries are live leases; none may be evicted")]
    Full { capacity: usize },
}

impl From<MemoryError> for IdempotencyError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::Full { .. } => IdempotencyError::Unavailable {
                source: Box::new(e),
            },
            MemoryError::Poisoned => IdempotencyError::Backend {
                source: Box::new(e),
            },
        }
    }
}

impl MemoryIdempotencyStore {
    /// A store of at most `capacity` keys, in flight or completed, that
    /// tells time by `clock`. With a capacity of 0 every reservation is
    /// refused.
    pub fn new(clock: Arc<DynClock>, capacity: usize) -> Self {
        Self {
            clock,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A store on the system clock.
    pub fn with_system_clock(capacity: usize) -> Self {
        Self::new(Arc::new(SystemClock), capacity)
    }

    /// The most keys it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries it holds now, including expired ones not yet
    /// removed.
    pub fn len(&self) -> usize {
        // Reading a length cannot observe a half-made change, so a poisoned
        // lock is fine here.
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        // A panic while the lock was held may have left the map and its
        // indexes disagreeing; refuse rather than risk a second execution.
        self.inner.lock().map_err(|_| MemoryError::Poisoned.into())
    }
}

impl Inner {
    fn index(&mut self, state: &State) -> &mut BTreeSet<(Timestamp, Slot)> {
        match state {
            State::InFlight(_) => &mut self.leases,
            State::Completed(_) => &mut self.results,
        }
    }

    fn insert(&mut self, slot: Slot, entry: Entry) {
        let at = entry.expires_at;
        self.index(&entry.state).insert((at, slot));
        if let Some(old) = self.entries.insert(slot, entry) {
            // Callers remove first; keep the indexes exact regardless.
            self.index(&old.state).remove(&(old.expires_at, slot));
        }
    }

    fn remove(&mut self, slot: &Slot) -> Option<Entry> {
        let entry = self.entries.remove(slot)?;
        self.index(&entry.state).remove(&(entry.expires_at, *slot));
        Some(entry)
    }

    /// The entry of `slot` if it has not expired; an expired one is removed.
    fn live(&mut self, slot: &Slot, now: Timestamp) -> Option<&mut Entry> {
        let expired = self.entries.get(slot)?.expires_at <= now;
        if expired {
            self.remove(slot);
            return None;
        }
        self.entries.get_mut(slot)
    }

    /// Removes up to `max` expired entries, earliest first.
    fn purge_expired(&mut self, now: Timestamp, max: usize) {
        for _ in 0..max {
            let earliest = [self.leases.first(), self.results.first()]
                .into_iter()
                .flatten()
                .min()
                .copied();
            match earliest {
                Some((at, slot)) if at <= now => {
                    self.remove(&slot);
                }
                _ => return,
            }
        }
    }

    /// Frees one entry: an expired lease, else the completed result that
    /// expires first (expired or not). Never an unexpired lease.
    fn evict_one(&mut self, now: Timestamp) -> bool {
        if let Some(&(at, slot)) = self.leases.first()
            && at <= now
        {
            self.remove(&slot);
            return true;
        }
        if let Some(&(_, slot)) = self.results.first() {
            self.remove(&slot);
            return true;
        }
        false
    }
}

fn expiry(now: Timestamp, ttl: Duration) -> Timestamp {
    now.saturating_add(Duration::from_millis(ttl_millis(ttl)))
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn reserve(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
    ) -> Result<Reservation> {
        let slot = key.digest();
        let now = self.clock.now();
        let mut inner = self.lock()?;
        inner.purge_expired(now, PURGE_PER_CALL);
        if let Some(entry) = inner.live(&slot, now) {
            if entry.fingerprint != *fingerprint {
                return Ok(Reservation::Mismatch);
            }
            return Ok(match &entry.state {
                State::InFlight(_) => Reservation::InFlight {
                    lease_remaining: entry.expires_at.duration_since(now),
                },
                State::Completed(response) => Reservation::Completed(response.clone()),
            });
        }
        while inner.entries.len() >= self.capacity {
            if !inner.evict_one(now) {
                return Err(MemoryError::Full {
                    capacity: self.capacity,
                }
                .into());
            }
        }
        let token = LeaseToken::random()?;
        inner.insert(
            slot,
            Entry {
                fingerprint: *fingerprint,
                expires_at: expiry(now, lease_ttl),
                state: State::InFlight(token),
            },
        );
        Ok(Reservation::Acquired(Lease {
            token,
            ttl: lease_ttl,
        }))
    }

    async fn complete(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<()> {
        let slot = key.digest();
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let held = matches!(
            inner.live(&slot, now),
            Some(Entry { state: State::InFlight(token), .. }) if token == lease
        );
        let Some(entry) = held.then(|| inner.remove(&slot)).flatten() else {
            return Err(IdempotencyError::LeaseLost);
        };
        inner.insert(
            slot,
            Entry {
                fingerprint: entry.fingerprint,
                expires_at: expiry(now, ttl),
                state: State::Completed(response.clone()),
            },
        );
        Ok(())
    }

    async fn release(&self, key: &ScopedKey, lease: &LeaseToken) -> Result<()> {
        let slot = key.digest();
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let held = matches!(
            inner.live(&slot, now),
            Some(Entry { state: State::InFlight(token), .. }) if token == lease
        );
        if !held {
            return Err(IdempotencyError::LeaseLost);
        }
        inner.remove(&slot);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.lock().map(drop)
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("clock", &self.clock)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sofiia_core_domain::ManualClock;

    use super::*;
    use crate::IdempotencyKey;
    use crate::testing::{ManualTime, TestStore};

    async fn fresh_store() -> TestStore {
        let clock = Arc::new(ManualClock::default());
        TestStore::new(
            MemoryIdempotencyStore::new(clock.clone(), 10_000),
            ManualTime::new(clock),
        )
    }

    crate::idempotency_store_tests!(fresh_store);

    fn key(n: usize) -> ScopedKey {
        ScopedKey::new(
            "alice",
            IdempotencyKey::new(format!("key-{n:08}")).expect("valid key"),
        )
    }

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::builder().part(s).finish()
    }

    fn response(n: usize) -> StoredResponse {
        StoredResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    const LEASE: Duration = Duration::from_secs(30);
    const RESULT: Duration = Duration::from_secs(3600);

    async fn acquire(store: &MemoryIdempotencyStore, k: &ScopedKey, lease: Duration) -> LeaseToken {
        match store.reserve(k, &fp("req"), lease).await.unwrap() {
            Reservation::Acquired(lease) => lease.token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_flood_of_completed_keys_stays_within_capacity() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryIdempotencyStore::new(clock.clone(), 1_000);
        for n in 0..10_000 {
            // Distinct expiries, so "the earliest" is well defined.
            clock.advance(Duration::from_millis(1));
            let k = key(n);
            let token = acquire(&store, &k, LEASE).await;
            store
                .complete(&k, &token, &response(n), RESULT)
                .await
                .unwrap();
            assert!(
                store.len() <= 1_000,
                "{} entries after key {n}",
                store.len()
            );
        }
        assert_eq!(store.len(), 1_000);
        // The newest results survive and replay; the oldest were evicted, so
        // their keys are free again.
        for n in 9_000..10_000 {
            match store.reserve(&key(n), &fp("req"), LEASE).await.unwrap() {
                Reservation::Completed(r) => assert_eq!(r, response(n)),
                other => panic!("key {n}: expected Completed, got {other:?}"),
            }
        }
        assert!(matches!(
            store.reserve(&key(0), &fp("req"), LEASE).await.unwrap(),
            Reservation::Acquired(_)
        ));
        assert_eq!(store.len(), 1_000);
    }

    #[tokio::test]
    async fn live_leases_are_never_evicted() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryIdempotencyStore::new(clock.clone(), 10);
        let mut tokens = Vec::new();
        for n in 0..10 {
            tokens.push(acquire(&store, &key(n), LEASE).await);
        }
        let err = store
            .reserve(&key(10), &fp("req"), LEASE)
            .await
            .unwrap_err();
        assert!(
            matches!(err, IdempotencyError::Unavailable { .. }),
            "{err:?}"
        );
        for n in 0..10 {
            assert!(
                matches!(
                    store.reserve(&key(n), &fp("req"), LEASE).await.unwrap(),
                    Reservation::InFlight { .. }
                ),
                "lease {n} was lost"
            );
        }

        // A completed result is evictable: key 10 now takes its place, and
        // every lease still holds.
        store
            .complete(&key(3), &tokens[3], &response(3), RESULT)
            .await
            .unwrap();
        acquire(&store, &key(10), LEASE).await;
        assert_eq!(store.len(), 10);
        for n in (0..10).filter(|&n| n != 3) {
            store.release(&key(n), &tokens[n]).await.unwrap();
        }

        // Expired leases are evictable too.
        let store = MemoryIdempotencyStore::new(clock.clone(), 10);
        for n in 0..10 {
            acquire(&store, &key(n), Duration::from_secs(1)).await;
        }
        clock.advance(Duration::from_secs(2));
        for n in 10..20 {
            acquire(&store, &key(n), LEASE).await;
        }
        assert_eq!(store.len(), 10);
    }

    #[tokio::test]
    async fn zero_capacity_refuses_every_reservation() {
        let store = MemoryIdempotencyStore::with_system_clock(0);
        let err = store.reserve(&key(0), &fp("req"), LEASE).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::Unavailable { .. }));
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn expired_entries_are_purged_as_operations_pass() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryIdempotencyStore::new(clock.clone(), 1_000);
        for n in 0..100 {
            let token = acquire(&store, &key(n), LEASE).await;
            store
                .complete(&key(n), &token, &response(n), Duration::from_secs(1))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        for n in 100..200 {
            acquire(&store, &key(n), LEASE).await;
        }
        // Each of the 100 reservations removed expired entries on its way.
        assert_eq!(store.len(), 100);
    }

    #[tokio::test]
    async fn a_poisoned_lock_is_a_backend_error() {
        let store = MemoryIdempotencyStore::with_system_clock(10);
        let k = key(0);
        let token = acquire(&store, &k, LEASE).await;
        let poisoner = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = store.inner.lock();
                panic!("poisoning the lock on purpose");
            })
            .join()
        });
        assert!(poisoner.is_err());

        let is_backend = |r: Result<()>| matches!(r, Err(IdempotencyError::Backend { .. }));
        assert!(matches!(
            store.reserve(&k, &fp("req"), LEASE).await,
            Err(IdempotencyError::Backend { .. })
        ));
        assert!(is_backend(
            store.complete(&k, &token, &response(0), RESULT).await
        ));
        assert!(is_backend(store.release(&k, &token).await));
        assert!(is_backend(store.check().await));
        assert_eq!(store.len(), 1);
    }
}
