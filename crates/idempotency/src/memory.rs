//! The in-process backend.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What one entry costs beside the bytes of its answer or pending result:
/// the map slot, both index entries, the fingerprint, token and times. An
/// estimate, so that many tiny entries are bounded too.
const ENTRY_OVERHEAD: usize = 160;

/// The metric counting completed results this backend dropped to make room
/// before their TTL: each is a key whose retry would run again.
pub const EVICTIONS_METRIC: &str = "sofiia_idempotency_evictions_total";

/// Keys of one process, bounded in number and in bytes.
///
/// For a single instance's tests, demos and embedders that accept its
/// limits. **It cannot promise a replay after an eviction or a restart**:
/// everything is lost when the process ends, and a completed result may be
/// dropped before its TTL to make room, after which a retry of its key runs
/// again. Use `SqliteIdempotencyStore` (one instance, durable) or
/// `RedisIdempotencyStore` (many instances) where that matters.
///
/// Time (lease and result expiry) comes from the injected clock. Memory is
/// bounded by `capacity` keys and by [`max_bytes`](Self::with_max_bytes)
/// (the bytes of stored answers and pending results, plus a fixed
/// overhead per entry):
/// - expired entries are removed as operations pass them, and first
///   whenever room is needed;
/// - when the store is full and nothing has expired, the completed result
///   that expires first is evicted, and counted in
///   `sofiia_idempotency_evictions_total` ([`evictions`](Self::evictions));
/// - an unexpired lease and a pending result are never evicted: that would
///   let a retry run while the first execution is still going, or run a
///   request whose upstream already answered. A store full of them refuses
///   new keys with [`IdempotencyError::Unavailable`] (answer 503).
///
/// Every operation is O(log n): entries are indexed by expiry.
pub struct MemoryIdempotencyStore {
    clock: Arc<DynClock>,
    capacity: usize,
    max_bytes: usize,
    evictions: AtomicU64,
    inner: Mutex<Inner>,
}

/// A scoped key's digest: fixed-size and cheap to copy into the indexes.
type Slot = [u8; 32];

#[derive(Default)]
struct Inner {
    entries: HashMap<Slot, Entry>,
    /// In-flight entries by expiry.
    leases: BTreeSet<(Timestamp, Slot)>,
    /// Pending entries by the end of their keep time.
    pending: BTreeSet<(Timestamp, Slot)>,
    /// Completed entries by expiry.
    results: BTreeSet<(Timestamp, Slot)>,
    /// The bytes counted against `max_bytes`.
    bytes: usize,
}

struct Entry {
    fingerprint: Fingerprint,
    /// The end of the lease (in flight), of the keep time (pending) or of
    /// the result TTL (completed).
    expires_at: Timestamp,
    state: State,
}

enum State {
    InFlight(LeaseToken),
    Pending {
        token: LeaseToken,
        lease_until: Timestamp,
        result: Vec<u8>,
    },
    Completed(StoredResponse),
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.state {
                State::InFlight(_) => 0,
                State::Pending { result, .. } => result.len(),
                State::Completed(r) => response_size(r),
            }
    }

    /// Whether `lease` holds this entry at `now`: in flight under it and
    /// unexpired, or pending under it (only a resume takes a pending key
    /// from its holder, and that changes the token).
    fn held_by(&self, lease: &LeaseToken, now: Timestamp) -> bool {
        match &self.state {
            State::InFlight(token) => token == lease && self.expires_at > now,
            State::Pending { token, .. } => token == lease,
            State::Completed(_) => false,
        }
    }
}

fn response_size(r: &StoredResponse) -> usize {
    r.body.len()
        + r.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

/// Failures of this backend, boxed as the `source` of an [`IdempotencyError`].
#[derive(Debug, thiserror::Error)]
enum MemoryError {
    #[error("a thread panicked while holding the store's lock; its state may be inconsistent")]
    Poisoned,
    #[error(
        "no room: {entries} entries of at most {capacity}, {bytes} bytes of at most {max_bytes}, \
         and only live leases and pending results left, which may not be evicted"
    )]
    Full {
        entries: usize,
        capacity: usize,
        bytes: usize,
        max_bytes: usize,
    },
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
    /// The byte bound unless set otherwise: 256 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

    /// A store of at most `capacity` keys, in flight, pending or completed,
    /// and [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES), that tells time
    /// by `clock`. With a capacity of 0 every reservation is refused.
    pub fn new(clock: Arc<DynClock>, capacity: usize) -> Self {
        Self {
            clock,
            capacity,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            evictions: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A store on the system clock.
    pub fn with_system_clock(capacity: usize) -> Self {
        Self::new(Arc::new(SystemClock), capacity)
    }

    /// Sets the most bytes the store holds: stored answers and pending
    /// results, plus a fixed overhead per entry.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The most keys it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most bytes it holds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// How many completed results were evicted before their TTL to make
    /// room, since the store was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
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

    /// The bytes it holds now, as counted against the byte bound.
    pub fn bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
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

    /// Frees room until one more entry of `extra` bytes fits: expired
    /// entries first, then completed results, soonest-expiring first.
    fn make_room(
        &self,
        inner: &mut Inner,
        now: Timestamp,
        extra: usize,
        new_entry: bool,
    ) -> Result<()> {
        let fits = |inner: &Inner| {
            (!new_entry || inner.entries.len() < self.capacity)
                && inner.bytes.saturating_add(extra) <= self.max_bytes
        };
        while !fits(inner) {
            match inner.evict_one(now) {
                Some(true) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(EVICTIONS_METRIC).increment(1);
                }
                Some(false) => {}
                None => {
                    return Err(MemoryError::Full {
                        entries: inner.entries.len(),
                        capacity: self.capacity,
                        bytes: inner.bytes,
                        max_bytes: self.max_bytes,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}

impl Inner {
    fn index(&mut self, state: &State) -> &mut BTreeSet<(Timestamp, Slot)> {
        match state {
            State::InFlight(_) => &mut self.leases,
            State::Pending { .. } => &mut self.pending,
            State::Completed(_) => &mut self.results,
        }
    }

    fn insert(&mut self, slot: Slot, entry: Entry) {
        let at = entry.expires_at;
        self.index(&entry.state).insert((at, slot));
        self.bytes += entry.size();
        if let Some(old) = self.entries.insert(slot, entry) {
            // Callers remove first; keep the indexes exact regardless.
            self.index(&old.state).remove(&(old.expires_at, slot));
            self.bytes -= old.size();
        }
    }

    fn remove(&mut self, slot: &Slot) -> Option<Entry> {
        let entry = self.entries.remove(slot)?;
        self.index(&entry.state).remove(&(entry.expires_at, *slot));
        self.bytes -= entry.size();
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

    /// The expired entry that expired first, if any.
    fn earliest_expired(&self, now: Timestamp) -> Option<Slot> {
        [
            self.leases.first(),
            self.pending.first(),
            self.results.first(),
        ]
        .into_iter()
        .flatten()
        .min()
        .filter(|(at, _)| *at <= now)
        .map(|(_, slot)| *slot)
    }

    /// Removes up to `max` expired entries, earliest first; how many.
    fn purge_expired(&mut self, now: Timestamp, max: usize) -> usize {
        let mut removed = 0;
        while removed < max {
            let Some(slot) = self.earliest_expired(now) else {
                break;
            };
            self.remove(&slot);
            removed += 1;
        }
        removed
    }

    /// Frees one entry: an expired one, else the completed result that
    /// expires first. Never an unexpired lease or pending result. `None`
    /// when nothing may go; `Some(true)` when a live result was evicted.
    fn evict_one(&mut self, now: Timestamp) -> Option<bool> {
        if let Some(slot) = self.earliest_expired(now) {
            self.remove(&slot);
            return Some(false);
        }
        let &(_, slot) = self.results.first()?;
        self.remove(&slot);
        Some(true)
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
            return Ok(match &mut entry.state {
                State::InFlight(_) => Reservation::InFlight {
                    lease_remaining: entry.expires_at.duration_since(now),
                },
                State::Pending {
                    lease_until,
                    token,
                    result,
                } => {
                    if *lease_until > now {
                        Reservation::Pending {
                            lease_remaining: lease_until.duration_since(now),
                        }
                    } else {
                        // The holder stopped: the caller takes over.
                        *token = LeaseToken::random()?;
                        *lease_until = expiry(now, lease_ttl);
                        Reservation::Resume {
                            lease: Lease {
                                token: *token,
                                ttl: lease_ttl,
                            },
                            pending: result.clone(),
                        }
                    }
                }
                State::Completed(response) => Reservation::Completed(response.clone()),
            });
        }
        self.make_room(&mut inner, now, ENTRY_OVERHEAD, true)?;
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

    async fn hold_pending(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        pending: &[u8],
        lease_ttl: Duration,
        keep_ttl: Duration,
    ) -> Result<()> {
        let slot = key.digest();
        let now = self.clock.now();
        let mut inner = self.lock()?;
        let held = inner
            .live(&slot, now)
            .is_some_and(|entry| entry.held_by(lease, now));
        if !held {
            return Err(IdempotencyError::LeaseLost);
        }
        let Some(entry) = inner.remove(&slot) else {
            return Err(IdempotencyError::LeaseLost);
        };
        let fingerprint = entry.fingerprint;
        if let Err(e) = self.make_room(&mut inner, now, ENTRY_OVERHEAD + pending.len(), true) {
            // Put it back as it was: nothing changes on failure.
            inner.insert(slot, entry);
            return Err(e);
        }
        inner.insert(
            slot,
            Entry {
                fingerprint,
                expires_at: expiry(now, keep_ttl),
                state: State::Pending {
                    token: *lease,
                    lease_until: expiry(now, lease_ttl),
                    result: pending.to_vec(),
                },
            },
        );
        Ok(())
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
        let held = inner
            .live(&slot, now)
            .is_some_and(|entry| entry.held_by(lease, now));
        let Some(entry) = held.then(|| inner.remove(&slot)).flatten() else {
            return Err(IdempotencyError::LeaseLost);
        };
        let fits = self
            .make_room(
                &mut inner,
                now,
                ENTRY_OVERHEAD + response_size(response),
                true,
            )
            .is_ok();
        if fits {
            inner.insert(
                slot,
                Entry {
                    fingerprint: entry.fingerprint,
                    expires_at: expiry(now, ttl),
                    state: State::Completed(response.clone()),
                },
            );
        } else {
            // Only live leases and pending results are left, which may not
            // go: the answer itself is what gives way. The request did
            // complete; a retry of its key will run again.
            self.evictions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(EVICTIONS_METRIC).increment(1);
        }
        Ok(())
    }

    async fn release(&self, key: &ScopedKey, lease: &LeaseToken) -> Result<()> {
        let slot = key.digest();
        let now = self.clock.now();
        let mut inner = self.lock()?;
        match inner.live(&slot, now) {
            Some(entry) if entry.held_by(lease, now) => {
                if matches!(entry.state, State::Pending { .. }) {
                    return Err(IdempotencyError::ResultPending);
                }
            }
            _ => return Err(IdempotencyError::LeaseLost),
        }
        inner.remove(&slot);
        Ok(())
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        let now = self.clock.now();
        let mut inner = self.lock()?;
        Ok(inner.purge_expired(now, limit) as u64)
    }

    async fn check(&self) -> Result<()> {
        self.lock().map(drop)
    }
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.len())
            .field("evictions", &self.evictions())
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
    async fn the_byte_bound_evicts_results_and_counts_them_but_never_pending_ones() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryIdempotencyStore::new(clock.clone(), 10_000).with_max_bytes(100 * 1024);
        let big = |n: usize| StoredResponse {
            status: 200,
            headers: Vec::new(),
            body: vec![u8::try_from(n % 251).unwrap(); 10 * 1024],
        };
        for n in 0..50 {
            clock.advance(Duration::from_millis(1));
            let token = acquire(&store, &key(n), LEASE).await;
            store
                .complete(&key(n), &token, &big(n), RESULT)
                .await
                .unwrap();
            assert!(
                store.bytes() <= 100 * 1024,
                "{} bytes after {n}",
                store.bytes()
            );
        }
        // About nine 10 KiB answers fit; the rest were evicted, oldest first.
        let kept = store.len();
        assert!((8..=10).contains(&kept), "{kept} kept");
        assert_eq!(store.evictions(), 50 - kept as u64);
        match store.reserve(&key(49), &fp("req"), LEASE).await.unwrap() {
            Reservation::Completed(r) => assert_eq!(r, big(49)),
            other => panic!("the newest result must replay, got {other:?}"),
        }

        // Pending results are never evicted: a store full of them refuses
        // more, and keeps every one.
        let store = MemoryIdempotencyStore::new(clock.clone(), 10_000).with_max_bytes(50 * 1024);
        let mut held = Vec::new();
        let mut refused = None;
        for n in 0..10 {
            let token = acquire(&store, &key(n), LEASE).await;
            match store
                .hold_pending(&key(n), &token, &[7; 10 * 1024], LEASE, RESULT)
                .await
            {
                Ok(()) => held.push(n),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(refused, Some(IdempotencyError::Unavailable { .. })),
            "{refused:?}"
        );
        assert_eq!(store.evictions(), 0);
        for n in held {
            assert!(matches!(
                store.reserve(&key(n), &fp("req"), LEASE).await.unwrap(),
                Reservation::Pending { .. }
            ));
        }
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
