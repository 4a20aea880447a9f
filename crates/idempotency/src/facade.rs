//! [`Idempotency`]: the front door most callers want.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    DynIdempotencyStore, Fingerprint, IdempotencyError, LeaseToken, Reservation, Result, ScopedKey,
    StoredResponse,
};

/// Runs requests at most once per key, over any [`IdempotencyStore`].
///
/// Holds the store and the two TTLs, and turns a reservation into what a
/// handler does next ([`Begin`]). It knows no HTTP framework; the `actix`
/// feature adds an actix-web helper on top.
///
/// [`IdempotencyStore`]: crate::IdempotencyStore
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<DynIdempotencyStore>,
    lease_ttl: Duration,
    result_ttl: Duration,
    max_retry_after: Duration,
}

/// What to do with a request, as decided by [`Idempotency::begin`].
#[derive(Debug)]
pub enum Begin {
    /// The key was free: run the request, then
    /// [`complete`](Guard::complete) or [`release`](Guard::release) (or,
    /// once the upstream answered, [`answered`](Guard::answered)).
    Execute(Guard),
    /// The request ran and its upstream answered, but whoever held it
    /// stopped before finishing: finish it from the pending result (never
    /// run it again), then [`complete`](PendingGuard::complete).
    Resume(PendingGuard),
    /// The request already ran: answer this again.
    Replay(StoredResponse),
    /// The request is running elsewhere: answer 409 with `Retry-After`.
    InFlight {
        /// When to try again; whole seconds, at least one.
        retry_after: Duration,
    },
    /// The request ran and its result is being stored elsewhere: answer 503
    /// with `Retry-After`.
    Pending {
        /// When to try again; whole seconds, at least one.
        retry_after: Duration,
    },
    /// The key belongs to a different request: answer 422.
    Mismatch,
}

impl Idempotency {
    /// The longest `Retry-After` given for a request in flight unless set
    /// otherwise.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

    /// Over `store`: a lease lasts `lease_ttl`, a completed answer is
    /// replayed for `result_ttl`.
    ///
    /// Choose `lease_ttl` longer than the slowest execution: once a lease
    /// expires, a retry runs again even if the first execution is still
    /// going (its late `complete` then fails with
    /// [`LeaseLost`](crate::IdempotencyError::LeaseLost)).
    pub fn new(store: Arc<DynIdempotencyStore>, lease_ttl: Duration, result_ttl: Duration) -> Self {
        Self {
            store,
            lease_ttl,
            result_ttl,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// Sets the longest `Retry-After` for a request in flight (see
    /// [`Idempotency::begin`]).
    #[must_use]
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<DynIdempotencyStore> {
        &self.store
    }

    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The result TTL.
    pub fn result_ttl(&self) -> Duration {
        self.result_ttl
    }

    /// Reserves `key` for the request `fingerprint` describes.
    ///
    /// For a request in flight, `retry_after` is
    /// `min(lease_remaining, max_retry_after)` rounded up to whole seconds
    /// and at least one second (`Retry-After` has whole seconds). The
    /// remaining lease only bounds when the first execution ends, usually
    /// far too late (the lease outlasts the slowest execution), so the hint
    /// is capped; with the default cap it is always one second.
    ///
    /// # Errors
    ///
    /// What the store's [`reserve`](crate::IdempotencyStore::reserve)
    /// returns. On [`Unavailable`](crate::IdempotencyError::Unavailable)
    /// nothing may run: answer 503.
    pub async fn begin(&self, key: &ScopedKey, fingerprint: &Fingerprint) -> Result<Begin> {
        let reservation = self.store.reserve(key, fingerprint, self.lease_ttl).await?;
        Ok(match reservation {
            Reservation::Acquired(lease) => Begin::Execute(Guard {
                holder: self.holder(key, fingerprint, lease.token),
                armed: true,
            }),
            Reservation::Resume { lease, pending } => Begin::Resume(PendingGuard {
                holder: self.holder(key, fingerprint, lease.token),
                pending,
            }),
            Reservation::Completed(response) => Begin::Replay(response),
            Reservation::InFlight { lease_remaining } => Begin::InFlight {
                retry_after: retry_after(lease_remaining.min(self.max_retry_after)),
            },
            Reservation::Pending { lease_remaining } => Begin::Pending {
                retry_after: retry_after(lease_remaining.min(self.max_retry_after)),
            },
            Reservation::Mismatch => Begin::Mismatch,
        })
    }

    fn holder(&self, key: &ScopedKey, fingerprint: &Fingerprint, token: LeaseToken) -> Holder {
        Holder {
            store: Arc::clone(&self.store),
            key: key.clone(),
            fingerprint: *fingerprint,
            token,
            lease_ttl: self.lease_ttl,
            result_ttl: self.result_ttl,
        }
    }

    /// Whether the store answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// What the store's [`check`](crate::IdempotencyStore::check) returns.
    pub async fn check(&self) -> Result<()> {
        self.store.check().await
    }
}

/// `d` rounded up to whole seconds, at least one.
fn retry_after(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.store)
            .field("lease_ttl", &self.lease_ttl)
            .field("result_ttl", &self.result_ttl)
            .field("max_retry_after", &self.max_retry_after)
            .finish()
    }
}

/// What a holder of a key needs to act on it.
struct Holder {
    store: Arc<DynIdempotencyStore>,
    key: ScopedKey,
    fingerprint: Fingerprint,
    token: LeaseToken,
    lease_ttl: Duration,
    result_ttl: Duration,
}

impl Holder {
    async fn complete(&self, response: &StoredResponse) -> Result<()> {
        self.store
            .complete(&self.key, &self.token, response, self.result_ttl)
            .await
    }
}

/// The lease on a key whose request is running.
///
/// Consume it with [`complete`](Guard::complete), [`release`](Guard::release)
/// or, once the upstream answered, [`answered`](Guard::answered). Dropped
/// without any (the request was cancelled before the upstream answered, or
/// its handler panicked), it releases the key in the background on the
/// current tokio runtime, so a retry need not wait for the lease to expire.
/// Outside a runtime the key stays in flight until its lease expires.
#[must_use = "complete or release the key; dropping the guard releases it"]
pub struct Guard {
    holder: Holder,
    /// Whether `Drop` still has to release the key.
    armed: bool,
}

impl Guard {
    /// The key held.
    pub fn key(&self) -> &ScopedKey {
        &self.holder.key
    }

    /// Stores `response` (owned or borrowed) to be replayed to retries for
    /// the result TTL.
    ///
    /// On an error the caller should still return `response`: the request
    /// ran. The key then stays in flight until its lease expires (it is not
    /// released, which would invite a second execution at once). Where the
    /// answer must not be lost, use [`answered`](Self::answered) instead and
    /// complete from the [`PendingGuard`], retrying.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`](crate::IdempotencyError::LeaseLost)
    /// when the lease expired and the key moved on, or a store error.
    pub async fn complete(mut self, response: impl Borrow<StoredResponse>) -> Result<()> {
        // Disarmed before the call: if this future is dropped half-way, the
        // answer may be stored already, and the request ran either way.
        self.armed = false;
        self.holder.complete(response.borrow()).await
    }

    /// Frees the key so a retry runs again (the request failed in a way
    /// worth retrying).
    ///
    /// A release that fails (the store is unavailable, or the lease expired
    /// already) is not reported: no caller could do anything about it, and
    /// the key is free by the end of its lease either way. Call
    /// [`IdempotencyStore::release`](crate::IdempotencyStore::release)
    /// directly to observe the outcome.
    pub async fn release(mut self) {
        self.armed = false;
        let _ = self
            .holder
            .store
            .release(&self.holder.key, &self.holder.token)
            .await;
    }

    /// The upstream answered: from now on the key is never released. Turns
    /// the guard into a [`PendingGuard`] holding `pending`, what the caller
    /// needs to finish the request (to store its result) if it has to be
    /// resumed by another caller. Nothing is written yet:
    /// [`hold`](PendingGuard::hold) writes it.
    pub fn answered(mut self, pending: Vec<u8>) -> PendingGuard {
        self.armed = false;
        let holder = Holder {
            store: Arc::clone(&self.holder.store),
            key: self.holder.key.clone(),
            fingerprint: self.holder.fingerprint,
            token: self.holder.token,
            lease_ttl: self.holder.lease_ttl,
            result_ttl: self.holder.result_ttl,
        };
        PendingGuard { holder, pending }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.holder.store);
            let key = self.holder.key.clone();
            let token = self.holder.token;
            // The result is of no use to anyone: on failure the lease
            // expires by itself, which is the best that can be done.
            drop(runtime.spawn(async move {
                let _ = store.release(&key, &token).await;
            }));
        }
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("key", &self.holder.key)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

/// The lease on a key whose upstream has answered: its request must be
/// finished and completed, never run again, never released.
///
/// Made by [`Guard::answered`] (the caller ran the request) or handed out by
/// [`Begin::Resume`] (another caller ran it and stopped). Dropping it
/// changes nothing: the key keeps its pending result, and once the lease
/// ends the next reservation resumes it.
pub struct PendingGuard {
    holder: Holder,
    pending: Vec<u8>,
}

/// What [`PendingGuard::hold`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The pending result is stored and the lease renewed: go on finishing.
    Held,
    /// While this holder could not reach the store, another caller took the
    /// key over and completed it with this answer; there is nothing left to
    /// do.
    Completed(StoredResponse),
    /// Another caller took the key over and is finishing it (or ran it
    /// again, if this holder's pending result never reached the store); this
    /// holder must stop.
    TakenOver,
}

impl PendingGuard {
    /// The key held.
    pub fn key(&self) -> &ScopedKey {
        &self.holder.key
    }

    /// The pending result.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Writes the pending result with the key and renews the lease. Call it
    /// once before storing the result, and again before each retry of the
    /// storing, so that a holder that keeps trying keeps the key.
    ///
    /// If the lease was lost (it ended while the store could not be
    /// reached), the key is reserved again: a key nobody took meanwhile is
    /// this holder's again; one that somebody else holds is reported.
    ///
    /// # Errors
    ///
    /// A store error: nothing is known to be written; try again later.
    pub async fn hold(&mut self) -> Result<Held> {
        let h = &self.holder;
        match h
            .store
            .hold_pending(&h.key, &h.token, &self.pending, h.lease_ttl, h.result_ttl)
            .await
        {
            Ok(()) => return Ok(Held::Held),
            Err(IdempotencyError::LeaseLost) => {}
            Err(e) => return Err(e),
        }
        match h.store.reserve(&h.key, &h.fingerprint, h.lease_ttl).await? {
            Reservation::Acquired(lease) | Reservation::Resume { lease, .. } => {
                self.holder.token = lease.token;
                let h = &self.holder;
                h.store
                    .hold_pending(&h.key, &h.token, &self.pending, h.lease_ttl, h.result_ttl)
                    .await?;
                Ok(Held::Held)
            }
            Reservation::Completed(response) => Ok(Held::Completed(response)),
            Reservation::InFlight { .. } | Reservation::Pending { .. } | Reservation::Mismatch => {
                Ok(Held::TakenOver)
            }
        }
    }

    /// Stores `response` to be replayed to retries for the result TTL: the
    /// request is finished.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`] when another caller took the key
    /// over; a store error otherwise (the guard is kept: try again).
    pub async fn complete(&self, response: impl Borrow<StoredResponse>) -> Result<()> {
        self.holder.complete(response.borrow()).await
    }
}

impl fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingGuard")
            .field("key", &self.holder.key)
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sofiia_core_domain::ManualClock;

    use super::*;
    use crate::{IdempotencyError, IdempotencyKey, IdempotencyStore, MemoryIdempotencyStore};

    fn setup() -> (Arc<ManualClock>, Arc<MemoryIdempotencyStore>, Idempotency) {
        let clock = Arc::new(ManualClock::default());
        let store = Arc::new(MemoryIdempotencyStore::new(clock.clone(), 100));
        let idempotency = Idempotency::new(
            store.clone(),
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        (clock, store, idempotency)
    }

    fn key(principal: &str) -> ScopedKey {
        ScopedKey::new(principal, IdempotencyKey::new("order-0001").unwrap())
    }

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::builder().part(s).finish()
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![("location".into(), "/orders/1".into())],
            body: b"{\"id\":1}".to_vec(),
        }
    }

    /// Embedders may run these futures on `tokio::spawn`.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let (_, _, idem) = setup();
        send(idem.begin(&key("alice"), &fp("a")));
        send(idem.check());
        send(async move {
            if let Ok(Begin::Execute(guard)) = idem.begin(&key("alice"), &fp("a")).await {
                guard.complete(answer()).await.ok();
            }
        });
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(retry_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            retry_after(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(retry_after(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            retry_after(Duration::from_millis(1001)),
            Duration::from_secs(2)
        );
    }

    #[tokio::test]
    async fn execute_complete_then_replay() {
        let (_, _, idem) = setup();
        let Begin::Execute(guard) = idem.begin(&key("alice"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        assert_eq!(guard.key(), &key("alice"));
        guard.complete(answer()).await.unwrap();
        match idem.begin(&key("alice"), &fp("a")).await.unwrap() {
            Begin::Replay(r) => assert_eq!(r, answer()),
            other => panic!("expected Replay, got {other:?}"),
        }
        assert!(matches!(
            idem.begin(&key("alice"), &fp("b")).await.unwrap(),
            Begin::Mismatch
        ));
        assert!(matches!(
            idem.begin(&key("bob"), &fp("b")).await.unwrap(),
            Begin::Execute(_)
        ));
        idem.check().await.unwrap();
    }

    #[tokio::test]
    async fn in_flight_retry_after_is_capped_and_rounded() {
        let (clock, _, idem) = setup();
        let Begin::Execute(_guard) = idem.begin(&key("alice"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        let retry = |idem: Idempotency| async move {
            match idem.begin(&key("alice"), &fp("a")).await.unwrap() {
                Begin::InFlight { retry_after } => retry_after,
                other => panic!("expected InFlight, got {other:?}"),
            }
        };
        // 30 s of lease left: capped at one second.
        assert_eq!(retry(idem.clone()).await, Duration::from_secs(1));
        // A larger cap lets the remaining lease show, rounded up.
        let wide = idem.clone().with_max_retry_after(Duration::from_secs(60));
        clock.advance(Duration::from_millis(500));
        assert_eq!(retry(wide.clone()).await, Duration::from_secs(30));
        // Under a second left: still one second.
        clock.advance(Duration::from_millis(29_300));
        assert_eq!(retry(wide).await, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn release_lets_a_retry_run() {
        let (_, _, idem) = setup();
        let Begin::Execute(guard) = idem.begin(&key("alice"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        guard.release().await;
        assert!(matches!(
            idem.begin(&key("alice"), &fp("a")).await.unwrap(),
            Begin::Execute(_)
        ));
    }

    #[tokio::test]
    async fn a_late_complete_reports_the_lost_lease() {
        let (clock, _, idem) = setup();
        let Begin::Execute(guard) = idem.begin(&key("alice"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        clock.advance(Duration::from_secs(31));
        assert!(matches!(
            guard.complete(&answer()).await,
            Err(IdempotencyError::LeaseLost)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_guard_releases_in_the_background() {
        let (_, store, idem) = setup();
        let Begin::Execute(guard) = idem.begin(&key("alice"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        drop(guard);
        // The release runs as its own task; wait for it by polling the state,
        // a bounded number of times.
        for _ in 0..1_000 {
            if store.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(store.is_empty(), "the dropped guard's key is still held");
        assert!(matches!(
            idem.begin(&key("alice"), &fp("a")).await.unwrap(),
            Begin::Execute(_)
        ));
    }

    fn pending_guard(begin: Begin) -> PendingGuard {
        match begin {
            Begin::Execute(guard) => guard.answered(b"reply".to_vec()),
            Begin::Resume(pending) => pending,
            other => panic!("expected Execute or Resume, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answered_key_is_held_pending_never_released_and_resumed_after_its_lease() {
        let (clock, store, idem) = setup();
        let mut pending = pending_guard(idem.begin(&key("alice"), &fp("a")).await.unwrap());
        assert_eq!(pending.hold().await.unwrap(), Held::Held);
        assert_eq!(pending.pending(), b"reply");
        assert!(matches!(
            idem.begin(&key("alice"), &fp("a")).await.unwrap(),
            Begin::Pending { retry_after } if retry_after == Duration::from_secs(1)
        ));
        // Dropping it keeps the key: the holder crashed, say.
        drop(pending);
        assert_eq!(store.len(), 1);
        clock.advance(Duration::from_secs(31));
        let resumed = pending_guard(idem.begin(&key("alice"), &fp("a")).await.unwrap());
        assert_eq!(resumed.pending(), b"reply");
        resumed.complete(answer()).await.unwrap();
        assert!(matches!(
            idem.begin(&key("alice"), &fp("a")).await.unwrap(),
            Begin::Replay(r) if r == answer()
        ));
    }

    #[tokio::test]
    async fn a_holder_that_lost_its_lease_takes_the_key_back_unless_someone_else_has_it() {
        let (clock, store, idem) = setup();
        // The lease ran out before the first hold reached the store, and
        // nobody took the key: the holder takes it again.
        let mut pending = pending_guard(idem.begin(&key("alice"), &fp("a")).await.unwrap());
        clock.advance(Duration::from_secs(31));
        assert_eq!(pending.hold().await.unwrap(), Held::Held);
        pending.complete(answer()).await.unwrap();

        // Somebody else reserved it meanwhile (and will run it again): the
        // holder must stop.
        let mut pending = pending_guard(idem.begin(&key("bob"), &fp("a")).await.unwrap());
        clock.advance(Duration::from_secs(31));
        let Begin::Execute(other) = idem.begin(&key("bob"), &fp("a")).await.unwrap() else {
            panic!("expected Execute");
        };
        assert_eq!(pending.hold().await.unwrap(), Held::TakenOver);

        // And once that other caller completed it, the holder learns the
        // answer.
        other.complete(answer()).await.unwrap();
        assert_eq!(pending.hold().await.unwrap(), Held::Completed(answer()));
        assert!(matches!(
            store.release(&key("bob"), &LeaseToken([0; 16])).await,
            Err(IdempotencyError::LeaseLost)
        ));
    }

    #[test]
    fn a_guard_dropped_outside_a_runtime_keeps_the_key_until_its_lease_ends() {
        let (clock, store, idem) = setup();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Begin::Execute(guard) = rt.block_on(idem.begin(&key("alice"), &fp("a"))).unwrap()
        else {
            panic!("expected Execute");
        };
        drop(guard); // no runtime entered here: nothing to spawn on
        assert_eq!(store.len(), 1);
        let r = rt.block_on(store.reserve(&key("alice"), &fp("a"), Duration::from_secs(30)));
        assert!(matches!(r, Ok(Reservation::InFlight { .. })));
        clock.advance(Duration::from_secs(31));
        let r = rt.block_on(store.reserve(&key("alice"), &fp("a"), Duration::from_secs(30)));
        assert!(matches!(r, Ok(Reservation::Acquired(_))));
    }
}
