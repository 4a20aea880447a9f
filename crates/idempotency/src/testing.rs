//! The behavioural suite every [`IdempotencyStore`] backend must pass.
//!
//! Each `case_*` function takes a fresh, empty store and panics with a
//! description of the first broken rule. Run them all with
//! [`idempotency_store_tests!`](crate::idempotency_store_tests), which turns
//! each case into one `#[tokio::test]`:
//!
//! ```
//! mod suite {
//!     use std::sync::Arc;
//!     use sofiia_core_domain::ManualClock;
//!     use sofiia_idempotency::MemoryIdempotencyStore;
//!     use sofiia_idempotency::testing::{ManualTime, TestStore};
//!
//!     sofiia_idempotency::idempotency_store_tests!(
//!         async fn store() -> TestStore {
//!             let clock = Arc::new(ManualClock::default());
//!             TestStore::new(
//!                 MemoryIdempotencyStore::new(clock.clone(), 10_000),
//!                 ManualTime::new(clock),
//!             )
//!         }
//!     );
//! }
//! # fn main() {}
//! ```
//!
//! A crate that does this needs `sofiia-idempotency` with the `testing`
//! feature and `tokio` with the `macros` and `rt-multi-thread` features among
//! its dev-dependencies.
//!
//! # Time
//!
//! Leases and results expire, and the cases check that they do. How time
//! passes is the one difference between backends, and it is an explicit
//! parameter, never a skipped case: a [`TestTime`] moves a backend's clock.
//! A backend on an injected clock moves a [`ManualClock`] ([`ManualTime`],
//! instant); one that keeps time itself, like Redis, really waits
//! ([`RealTime`]). TTLs meant to expire are [`TestTime::short_ttl`] and the
//! cases wait [`TestTime::past_short_ttl`] for them; TTLs meant to outlive a
//! case are [`LONG_TTL`].
//!
//! # Concurrency
//!
//! The cases need a multi-threaded tokio runtime: the concurrency case calls
//! the store from many OS threads at once, so that a backend's atomicity is
//! tested under real parallelism, not only interleaving. The macro provides
//! one.
//!
//! [`IdempotencyStore`]: crate::IdempotencyStore

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sofiia_core_domain::ManualClock;
use sofiia_testkit::Guarded;
use tokio::sync::Barrier;

use crate::{
    DynIdempotencyStore, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore,
    LeaseToken, Reservation, ScopedKey, StoredResponse,
};

/// A TTL no case outlives.
pub const LONG_TTL: Duration = Duration::from_secs(60);

/// How time passes for a backend under test.
#[async_trait]
pub trait TestTime: Send + Sync + 'static {
    /// Lets at least `d` pass, as the backend sees time.
    async fn advance(&self, d: Duration);

    /// A TTL that the cases let expire. Short, because a backend on real
    /// time waits it out; long enough that the steps taken before it should
    /// expire finish well within it.
    fn short_ttl(&self) -> Duration {
        Duration::from_millis(300)
    }

    /// How long the cases wait for a [`short_ttl`](TestTime::short_ttl) to
    /// have passed: a third more, so that expiry is certain.
    fn past_short_ttl(&self) -> Duration {
        let short = self.short_ttl();
        short + short / 3
    }
}

/// Time of a backend that reads an injected [`ManualClock`]: advancing it is
/// instant.
#[derive(Debug, Clone)]
pub struct ManualTime(Arc<ManualClock>);

impl ManualTime {
    /// Moves `clock`, which the store under test must read.
    pub fn new(clock: Arc<ManualClock>) -> Self {
        Self(clock)
    }
}

#[async_trait]
impl TestTime for ManualTime {
    async fn advance(&self, d: Duration) {
        self.0.advance(d);
    }
}

/// Time of a backend that keeps time itself (Redis): advancing it sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

#[async_trait]
impl TestTime for RealTime {
    async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// A store under test, with its time and whatever must live as long as it.
///
/// The store is dropped before the guard, so a guard may remove what the
/// store used: a Redis key prefix, a temporary directory.
pub struct TestStore {
    store: Guarded<DynIdempotencyStore>,
    time: Box<dyn TestTime>,
}

impl TestStore {
    /// A store that needs nothing kept alive.
    pub fn new(store: impl IdempotencyStore, time: impl TestTime) -> Self {
        Self::with_guard(store, time, ())
    }

    /// A store and a guard to drop after it, such as a
    /// `sofiia_testkit::RedisTestContext` owning its key prefix.
    pub fn with_guard(
        store: impl IdempotencyStore,
        time: impl TestTime,
        guard: impl Any + Send,
    ) -> Self {
        Self {
            store: Guarded::with_guard(Arc::new(store), guard),
            time: Box::new(time),
        }
    }

    /// The store.
    pub fn store(&self) -> &DynIdempotencyStore {
        self.store.get()
    }

    /// The store, to share with spawned tasks.
    pub fn shared_store(&self) -> Arc<DynIdempotencyStore> {
        Arc::clone(self.store.shared())
    }

    /// Its time.
    pub fn time(&self) -> &dyn TestTime {
        &*self.time
    }
}

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStore")
            .field("store", &self.store())
            .finish_non_exhaustive()
    }
}

/// What a suite constructor may return: a store, or `None` when the backend
/// is not available here and the constructor has said so loudly (as
/// `sofiia_testkit::RedisTestContext::new` does, or fails where it is
/// required).
pub trait IntoTestStore {
    /// The store, or `None` to end the case early.
    fn into_test_store(self) -> Option<TestStore>;
}

impl IntoTestStore for TestStore {
    fn into_test_store(self) -> Option<TestStore> {
        Some(self)
    }
}

impl IntoTestStore for Option<TestStore> {
    fn into_test_store(self) -> Option<TestStore> {
        self
    }
}

/// Expands to one `#[tokio::test]` per case of [`testing`](crate::testing),
/// each on a fresh store from the given constructor.
///
/// The constructor is an `async fn() -> TestStore` (or
/// `-> Option<TestStore>`, for a backend whose server may be absent), given
/// either inline (see the [module](crate::testing) documentation) or as the
/// path of such a function defined elsewhere:
///
/// ```
/// mod suite {
///     use std::sync::Arc;
///     use sofiia_core_domain::ManualClock;
///     use sofiia_idempotency::MemoryIdempotencyStore;
///     use sofiia_idempotency::testing::{ManualTime, TestStore};
///
///     async fn fresh_store() -> TestStore {
///         let clock = Arc::new(ManualClock::default());
///         TestStore::new(MemoryIdempotencyStore::new(clock.clone(), 100), ManualTime::new(clock))
///     }
///
///     sofiia_idempotency::idempotency_store_tests!(fresh_store);
/// }
/// # fn main() {}
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies. Every case always runs: a backend
/// that cannot meet one must fail it, not skip it.
#[macro_export]
macro_rules! idempotency_store_tests {
    (@cases $ctor:path; $($case:ident),+ $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store = $crate::testing::IntoTestStore::into_test_store($ctor().await);
            if let Some(store) = store {
                $crate::testing::$case(&store).await;
            }
        }
    )+};
    (async fn $ctor:ident() -> $ret:ty $body:block) => {
        async fn $ctor() -> $ret $body
        $crate::idempotency_store_tests!($ctor);
    };
    ($ctor:path) => {
        $crate::idempotency_store_tests!(@cases $ctor;
            // cases:begin (a unit test checks that every case is listed)
            case_check_succeeds,
            case_first_reserve_acquires_the_lease_it_was_asked_for,
            case_completed_request_replays_the_same_bytes,
            case_replay_keeps_empty_and_large_responses,
            case_reserve_while_in_flight_is_in_flight,
            case_mismatch_while_in_flight,
            case_mismatch_once_completed,
            case_expired_lease_frees_the_key,
            case_stale_complete_is_fenced_off,
            case_stale_release_is_fenced_off,
            case_release_frees_the_key,
            case_wrong_token_changes_nothing,
            case_complete_and_release_of_an_absent_key_are_lease_lost,
            case_a_lease_is_spent_once_completed_or_released,
            case_completed_result_expires_after_its_ttl,
            case_principals_are_isolated,
            case_keys_are_isolated,
            case_concurrent_reserves_admit_exactly_one,
            case_a_held_result_is_pending_then_resumed_after_the_lease,
            case_a_pending_key_is_never_released,
            case_hold_pending_renews_the_lease,
            case_hold_pending_needs_the_lease,
            case_a_pending_key_keeps_its_fingerprint_and_completes,
            case_a_pending_result_expires_after_its_keep_time,
            case_purge_removes_nothing_unexpired,
            case_concurrent_resumes_admit_exactly_one,
            // cases:end
        );
    };
}

// ---------------------------------------------------------------------------
// Helpers.

fn key(principal: &str, key: &str) -> ScopedKey {
    ScopedKey::new(principal, IdempotencyKey::new(key).expect("valid test key"))
}

fn alice() -> ScopedKey {
    key("alice", "send-00000001")
}

fn fp(request: &str) -> Fingerprint {
    Fingerprint::builder()
        .part("POST")
        .part("/api/chats/c1/send")
        .part(request)
        .finish()
}

fn response(tag: &str) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-tag".into(), tag.into()),
        ],
        body: format!("{{\"reply\":\"{tag}\"}}").into_bytes(),
    }
}

async fn reserve(
    store: &DynIdempotencyStore,
    k: &ScopedKey,
    f: &Fingerprint,
    ttl: Duration,
) -> Reservation {
    store
        .reserve(k, f, ttl)
        .await
        .unwrap_or_else(|e| panic!("reserve failed: {e:?}"))
}

async fn acquire(
    store: &DynIdempotencyStore,
    k: &ScopedKey,
    f: &Fingerprint,
    ttl: Duration,
) -> LeaseToken {
    match reserve(store, k, f, ttl).await {
        Reservation::Acquired(lease) => lease.token,
        other => panic!("expected Acquired for {k:?}, got {other:?}"),
    }
}

async fn expect_in_flight(store: &DynIdempotencyStore, k: &ScopedKey, f: &Fingerprint) {
    match reserve(store, k, f, LONG_TTL).await {
        Reservation::InFlight { .. } => {}
        other => panic!("expected InFlight for {k:?}, got {other:?}"),
    }
}

async fn expect_completed(
    store: &DynIdempotencyStore,
    k: &ScopedKey,
    f: &Fingerprint,
    expected: &StoredResponse,
) {
    match reserve(store, k, f, LONG_TTL).await {
        Reservation::Completed(got) => assert_eq!(&got, expected, "replayed response of {k:?}"),
        other => panic!("expected Completed for {k:?}, got {other:?}"),
    }
}

fn assert_lease_lost(result: crate::Result<()>, what: &str) {
    assert!(
        matches!(result, Err(IdempotencyError::LeaseLost)),
        "{what}: expected LeaseLost, got {result:?}"
    );
}

fn other_token(token: &LeaseToken) -> LeaseToken {
    let mut bytes = token.0;
    bytes[0] ^= 0xff;
    LeaseToken(bytes)
}

// ---------------------------------------------------------------------------
// Cases.

/// `check` succeeds on a working store.
pub async fn case_check_succeeds(t: &TestStore) {
    t.store().check().await.expect("check");
}

/// A free key is acquired with a lease of the requested TTL and a token
/// that differs between reservations.
pub async fn case_first_reserve_acquires_the_lease_it_was_asked_for(t: &TestStore) {
    let store = t.store();
    let a = match reserve(store, &alice(), &fp("a"), LONG_TTL).await {
        Reservation::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    };
    assert_eq!(a.ttl, LONG_TTL);
    let b = acquire(store, &key("alice", "send-00000002"), &fp("a"), LONG_TTL).await;
    assert_ne!(a.token, b, "two leases share a token");
}

/// A completed request is replayed with the same status, headers (in
/// order) and body bytes, as often as it is asked for.
pub async fn case_completed_request_replays_the_same_bytes(t: &TestStore) {
    let store = t.store();
    let answer = StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".into(), "application/octet-stream".into()),
            ("x-empty".into(), String::new()),
            ("x-dup".into(), "1".into()),
            ("x-dup".into(), "2".into()),
            ("x-unicode".into(), "ключ ✓".into()),
            ("a".into(), "ordered-before-z".into()),
        ],
        // Every byte value, including NUL and invalid UTF-8.
        body: (0..=255u8).chain([0, 0xff, 0xfe]).collect(),
    };
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .complete(&alice(), &token, &answer, LONG_TTL)
        .await
        .expect("complete");
    for _ in 0..3 {
        expect_completed(store, &alice(), &fp("a"), &answer).await;
    }
}

/// An answer with no headers and no body, and one with a 64 KiB body, both
/// replay exactly.
pub async fn case_replay_keeps_empty_and_large_responses(t: &TestStore) {
    let store = t.store();
    let empty = StoredResponse {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let large = StoredResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: (0..64 * 1024).map(|i| (i % 251) as u8).collect(),
    };
    for (name, answer) in [("send-empty-1", &empty), ("send-large-1", &large)] {
        let k = key("alice", name);
        let token = acquire(store, &k, &fp("a"), LONG_TTL).await;
        store
            .complete(&k, &token, answer, LONG_TTL)
            .await
            .expect("complete");
        expect_completed(store, &k, &fp("a"), answer).await;
    }
}

/// While a lease holds the key, the same request is in flight, with the
/// lease's remaining time.
pub async fn case_reserve_while_in_flight_is_in_flight(t: &TestStore) {
    let store = t.store();
    acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    for _ in 0..3 {
        match reserve(store, &alice(), &fp("a"), LONG_TTL).await {
            Reservation::InFlight { lease_remaining } => {
                assert!(
                    lease_remaining > Duration::ZERO && lease_remaining <= LONG_TTL,
                    "lease_remaining {lease_remaining:?} outside (0, {LONG_TTL:?}]"
                );
            }
            other => panic!("expected InFlight, got {other:?}"),
        }
    }
}

/// A different request with a key in flight is a mismatch, and leaves the
/// lease untouched.
pub async fn case_mismatch_while_in_flight(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    assert_eq!(
        reserve(store, &alice(), &fp("b"), LONG_TTL).await,
        Reservation::Mismatch
    );
    expect_in_flight(store, &alice(), &fp("a")).await;
    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("the mismatch must not disturb the lease");
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;
}

/// A different request with a completed key is a mismatch, and the stored
/// answer stays.
pub async fn case_mismatch_once_completed(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("complete");
    for _ in 0..2 {
        assert_eq!(
            reserve(store, &alice(), &fp("b"), LONG_TTL).await,
            Reservation::Mismatch
        );
    }
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;
}

/// Once its lease expires, a key is free: the next reservation (for any
/// request) acquires it, and the expired lease can no longer complete.
pub async fn case_expired_lease_frees_the_key(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let stale = acquire(store, &alice(), &fp("a"), short).await;
    expect_in_flight(store, &alice(), &fp("a")).await;
    t.time().advance(t.time().past_short_ttl()).await;
    let fresh = acquire(store, &alice(), &fp("b"), LONG_TTL).await;
    assert_ne!(stale, fresh);
    assert_lease_lost(
        store
            .complete(&alice(), &stale, &response("a"), LONG_TTL)
            .await,
        "complete with the expired lease",
    );
}

/// A's lease expires and B acquires the key: A's complete fails with
/// `LeaseLost`, whether B is still in flight or has completed, and B's
/// answer is what replays.
pub async fn case_stale_complete_is_fenced_off(t: &TestStore) {
    let store = t.store();
    let a = acquire(store, &alice(), &fp("a"), t.time().short_ttl()).await;
    t.time().advance(t.time().past_short_ttl()).await;
    let b = acquire(store, &alice(), &fp("a"), LONG_TTL).await;

    assert_lease_lost(
        store.complete(&alice(), &a, &response("A"), LONG_TTL).await,
        "A's complete while B is in flight",
    );
    expect_in_flight(store, &alice(), &fp("a")).await;

    store
        .complete(&alice(), &b, &response("B"), LONG_TTL)
        .await
        .expect("B's complete");
    assert_lease_lost(
        store.complete(&alice(), &a, &response("A"), LONG_TTL).await,
        "A's complete after B completed",
    );
    expect_completed(store, &alice(), &fp("a"), &response("B")).await;
}

/// A's lease expires and B acquires the key: A's release fails with
/// `LeaseLost` and B keeps the key, and can still complete it.
pub async fn case_stale_release_is_fenced_off(t: &TestStore) {
    let store = t.store();
    let a = acquire(store, &alice(), &fp("a"), t.time().short_ttl()).await;
    t.time().advance(t.time().past_short_ttl()).await;
    let b = acquire(store, &alice(), &fp("a"), LONG_TTL).await;

    assert_lease_lost(
        store.release(&alice(), &a).await,
        "A's release while B holds the key",
    );
    expect_in_flight(store, &alice(), &fp("a")).await;
    store
        .complete(&alice(), &b, &response("B"), LONG_TTL)
        .await
        .expect("B's complete after A's release");
    assert_lease_lost(
        store.release(&alice(), &a).await,
        "A's release after B completed",
    );
    expect_completed(store, &alice(), &fp("a"), &response("B")).await;
}

/// A released key is free at once, for the same request or another.
pub async fn case_release_frees_the_key(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store.release(&alice(), &token).await.expect("release");
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store.release(&alice(), &token).await.expect("release");
    acquire(store, &alice(), &fp("b"), LONG_TTL).await;
}

/// Completing or releasing with a token that never held the key fails with
/// `LeaseLost` and changes nothing, in flight or completed.
pub async fn case_wrong_token_changes_nothing(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    let wrong = other_token(&token);
    assert_lease_lost(
        store
            .complete(&alice(), &wrong, &response("x"), LONG_TTL)
            .await,
        "complete with a wrong token",
    );
    assert_lease_lost(
        store.release(&alice(), &wrong).await,
        "release with a wrong token",
    );
    expect_in_flight(store, &alice(), &fp("a")).await;

    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("the owner's complete");
    assert_lease_lost(
        store
            .complete(&alice(), &wrong, &response("x"), LONG_TTL)
            .await,
        "complete with a wrong token once completed",
    );
    assert_lease_lost(
        store.release(&alice(), &wrong).await,
        "release with a wrong token once completed",
    );
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;
}

/// Completing or releasing a key nobody reserved fails with `LeaseLost` and
/// creates nothing.
pub async fn case_complete_and_release_of_an_absent_key_are_lease_lost(t: &TestStore) {
    let store = t.store();
    let token = LeaseToken([7; 16]);
    assert_lease_lost(
        store
            .complete(&alice(), &token, &response("x"), LONG_TTL)
            .await,
        "complete of an absent key",
    );
    assert_lease_lost(
        store.release(&alice(), &token).await,
        "release of an absent key",
    );
    acquire(store, &alice(), &fp("a"), LONG_TTL).await;
}

/// A lease ends with its first complete or release: a second one of either
/// fails with `LeaseLost` and changes nothing.
pub async fn case_a_lease_is_spent_once_completed_or_released(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .complete(&alice(), &token, &response("first"), LONG_TTL)
        .await
        .expect("first complete");
    assert_lease_lost(
        store
            .complete(&alice(), &token, &response("second"), LONG_TTL)
            .await,
        "second complete",
    );
    assert_lease_lost(
        store.release(&alice(), &token).await,
        "release after complete",
    );
    expect_completed(store, &alice(), &fp("a"), &response("first")).await;

    let k = key("alice", "send-00000002");
    let token = acquire(store, &k, &fp("a"), LONG_TTL).await;
    store.release(&k, &token).await.expect("release");
    assert_lease_lost(store.release(&k, &token).await, "second release");
    assert_lease_lost(
        store
            .complete(&k, &token, &response("late"), LONG_TTL)
            .await,
        "complete after release",
    );
    acquire(store, &k, &fp("a"), LONG_TTL).await;
}

/// A completed answer is replayed until its TTL passes; then the key is free
/// (for any request).
pub async fn case_completed_result_expires_after_its_ttl(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .complete(&alice(), &token, &response("a"), t.time().short_ttl())
        .await
        .expect("complete");
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;
    t.time().advance(t.time().past_short_ttl()).await;
    acquire(store, &alice(), &fp("b"), LONG_TTL).await;
}

/// One key used by two principals is two keys: neither sees the other's
/// lease, answer or fingerprint.
pub async fn case_principals_are_isolated(t: &TestStore) {
    let store = t.store();
    let alice = key("alice", "shared-key-1");
    let bob = key("bob", "shared-key-1");
    let token = acquire(store, &alice, &fp("a"), LONG_TTL).await;
    // Bob's different request is no mismatch, and his lease is his own.
    let bob_token = acquire(store, &bob, &fp("b"), LONG_TTL).await;
    store
        .complete(&alice, &token, &response("alice"), LONG_TTL)
        .await
        .expect("alice's complete");
    expect_in_flight(store, &bob, &fp("b")).await;
    assert_lease_lost(
        store.release(&bob, &token).await,
        "alice's token on bob's key",
    );
    store
        .complete(&bob, &bob_token, &response("bob"), LONG_TTL)
        .await
        .expect("bob's complete");
    expect_completed(store, &alice, &fp("a"), &response("alice")).await;
    expect_completed(store, &bob, &fp("b"), &response("bob")).await;

    // A principal that is a prefix of another, with the rest moved into
    // the key, is still someone else.
    let ab = ScopedKey::new("ab", IdempotencyKey::new("cdefghij").expect("valid key"));
    let a = ScopedKey::new("a", IdempotencyKey::new("bcdefghij").expect("valid key"));
    acquire(store, &ab, &fp("a"), LONG_TTL).await;
    acquire(store, &a, &fp("a"), LONG_TTL).await;
}

/// Two keys of one principal never interact.
pub async fn case_keys_are_isolated(t: &TestStore) {
    let store = t.store();
    let one = key("alice", "send-00000001");
    let two = key("alice", "send-00000002");
    let token = acquire(store, &one, &fp("a"), LONG_TTL).await;
    let token_two = acquire(store, &two, &fp("a"), LONG_TTL).await;
    store
        .complete(&one, &token, &response("one"), LONG_TTL)
        .await
        .expect("complete");
    expect_in_flight(store, &two, &fp("a")).await;
    store.release(&two, &token_two).await.expect("release");
    expect_completed(store, &one, &fp("a"), &response("one")).await;
}

/// 100 tasks on several threads reserve one free key at once: exactly one
/// acquires it, every other one sees it in flight.
pub async fn case_concurrent_reserves_admit_exactly_one(t: &TestStore) {
    const TASKS: usize = 100;
    let reservations = reserve_at_once(t, TASKS).await;
    let mut acquired = Vec::new();
    let mut in_flight = 0;
    for reservation in reservations {
        match reservation {
            Ok(Reservation::Acquired(lease)) => acquired.push(lease.token),
            Ok(Reservation::InFlight { .. }) => in_flight += 1,
            other => panic!("unexpected reservation: {other:?}"),
        }
    }
    assert_eq!(
        acquired.len(),
        1,
        "{} tasks acquired the key",
        acquired.len()
    );
    assert_eq!(in_flight, TASKS - 1);
    // The one lease really holds the key.
    store_complete_ok(t, &acquired[0]).await;
}

/// Once held, a pending result keeps the key past its holder's lease:
/// while the lease lasts the key is pending; after it, the next reservation
/// resumes it with the pending result under a new lease, and the old lease
/// can no longer complete it.
pub async fn case_a_held_result_is_pending_then_resumed_after_the_lease(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let first = acquire(store, &alice(), &fp("a"), short).await;
    store
        .hold_pending(&alice(), &first, b"reply-1", short, LONG_TTL)
        .await
        .expect("hold_pending");
    match reserve(store, &alice(), &fp("a"), LONG_TTL).await {
        Reservation::Pending { lease_remaining } => assert!(
            lease_remaining > Duration::ZERO && lease_remaining <= short,
            "lease_remaining {lease_remaining:?} outside (0, {short:?}]"
        ),
        other => panic!("expected Pending, got {other:?}"),
    }
    t.time().advance(t.time().past_short_ttl()).await;
    let second = match reserve(store, &alice(), &fp("a"), LONG_TTL).await {
        Reservation::Resume { lease, pending } => {
            assert_eq!(pending, b"reply-1");
            assert_eq!(lease.ttl, LONG_TTL);
            assert_ne!(lease.token, first);
            lease.token
        }
        other => panic!("expected Resume, got {other:?}"),
    };
    // The resumer holds it now: others see it pending again.
    assert!(matches!(
        reserve(store, &alice(), &fp("a"), LONG_TTL).await,
        Reservation::Pending { .. }
    ));
    assert_lease_lost(
        store
            .complete(&alice(), &first, &response("old"), LONG_TTL)
            .await,
        "the first holder's complete after the resume",
    );
    store
        .complete(&alice(), &second, &response("resumed"), LONG_TTL)
        .await
        .expect("the resumer's complete");
    expect_completed(store, &alice(), &fp("a"), &response("resumed")).await;
}

/// A key with a pending result is never freed by its holder: release fails
/// with `ResultPending` and the key stays pending, then completes.
pub async fn case_a_pending_key_is_never_released(t: &TestStore) {
    let store = t.store();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&alice(), &token, b"reply", LONG_TTL, LONG_TTL)
        .await
        .expect("hold_pending");
    let r = store.release(&alice(), &token).await;
    assert!(
        matches!(r, Err(IdempotencyError::ResultPending)),
        "release of a pending key: expected ResultPending, got {r:?}"
    );
    assert_lease_lost(
        store.release(&alice(), &other_token(&token)).await,
        "release of a pending key with a wrong token",
    );
    assert!(matches!(
        reserve(store, &alice(), &fp("a"), LONG_TTL).await,
        Reservation::Pending { .. }
    ));
    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("complete");
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;
}

/// Holding again renews the lease from then (so a holder that keeps
/// retrying keeps the key) and replaces the pending result; a holder whose
/// pending lease ran out may still renew it while nobody has resumed it.
pub async fn case_hold_pending_renews_the_lease(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&alice(), &token, b"v1", short, LONG_TTL)
        .await
        .expect("first hold");
    t.time().advance(t.time().past_short_ttl()).await;
    // Nobody resumed it: the holder's renewal still counts.
    store
        .hold_pending(&alice(), &token, b"v2", LONG_TTL, LONG_TTL)
        .await
        .expect("renewal after the lease ran out, before any resume");
    t.time().advance(t.time().past_short_ttl()).await;
    assert!(
        matches!(
            reserve(store, &alice(), &fp("a"), LONG_TTL).await,
            Reservation::Pending { .. }
        ),
        "a renewed lease must still hold the key"
    );
    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("complete after renewal");
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;

    // Replaced: a resume gets the latest pending result.
    let k = key("alice", "send-00000002");
    let token = acquire(store, &k, &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&k, &token, b"v1", short, LONG_TTL)
        .await
        .expect("hold v1");
    store
        .hold_pending(&k, &token, b"v2", short, LONG_TTL)
        .await
        .expect("hold v2");
    t.time().advance(t.time().past_short_ttl()).await;
    match reserve(store, &k, &fp("a"), LONG_TTL).await {
        Reservation::Resume { pending, .. } => assert_eq!(pending, b"v2"),
        other => panic!("expected Resume, got {other:?}"),
    }
}

/// `hold_pending` needs the lease: with a wrong token, an absent key, a
/// lease that expired in flight, a completed key or a pending key resumed by
/// someone else, it fails with `LeaseLost` and changes nothing.
pub async fn case_hold_pending_needs_the_lease(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let hold = |k: ScopedKey, token: LeaseToken| async move {
        store
            .hold_pending(&k, &token, b"x", LONG_TTL, LONG_TTL)
            .await
    };
    assert_lease_lost(
        hold(alice(), LeaseToken([7; 16])).await,
        "hold on an absent key",
    );
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    assert_lease_lost(
        hold(alice(), other_token(&token)).await,
        "hold with a wrong token",
    );
    expect_in_flight(store, &alice(), &fp("a")).await;

    let k = key("alice", "send-00000002");
    let expired = acquire(store, &k, &fp("a"), short).await;
    t.time().advance(t.time().past_short_ttl()).await;
    assert_lease_lost(hold(k.clone(), expired).await, "hold with an expired lease");
    acquire(store, &k, &fp("a"), LONG_TTL).await;

    store
        .complete(&alice(), &token, &response("a"), LONG_TTL)
        .await
        .expect("complete");
    assert_lease_lost(hold(alice(), token).await, "hold once completed");
    expect_completed(store, &alice(), &fp("a"), &response("a")).await;

    let k = key("alice", "send-00000003");
    let first = acquire(store, &k, &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&k, &first, b"x", short, LONG_TTL)
        .await
        .expect("hold");
    t.time().advance(t.time().past_short_ttl()).await;
    assert!(matches!(
        reserve(store, &k, &fp("a"), LONG_TTL).await,
        Reservation::Resume { .. }
    ));
    assert_lease_lost(hold(k.clone(), first).await, "hold after another resumed");
}

/// A pending key is a mismatch for another request, and the stored pending
/// result is untouched by it.
pub async fn case_a_pending_key_keeps_its_fingerprint_and_completes(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&alice(), &token, b"kept", short, LONG_TTL)
        .await
        .expect("hold");
    assert_eq!(
        reserve(store, &alice(), &fp("b"), LONG_TTL).await,
        Reservation::Mismatch
    );
    t.time().advance(t.time().past_short_ttl()).await;
    // Even past the lease, another request cannot resume it.
    assert_eq!(
        reserve(store, &alice(), &fp("b"), LONG_TTL).await,
        Reservation::Mismatch
    );
    match reserve(store, &alice(), &fp("a"), LONG_TTL).await {
        Reservation::Resume { pending, .. } => assert_eq!(pending, b"kept"),
        other => panic!("expected Resume, got {other:?}"),
    }
}

/// A pending result is kept for the keep time given to `hold_pending`, then
/// the key is free (for any request).
pub async fn case_a_pending_result_expires_after_its_keep_time(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let token = acquire(store, &alice(), &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&alice(), &token, b"x", short, short)
        .await
        .expect("hold");
    t.time().advance(t.time().past_short_ttl()).await;
    acquire(store, &alice(), &fp("b"), LONG_TTL).await;
}

/// `purge_expired` never removes an entry whose time has not passed: in
/// flight, pending or completed, each is as it was after a purge.
pub async fn case_purge_removes_nothing_unexpired(t: &TestStore) {
    let store = t.store();
    let short = t.time().short_ttl();
    let in_flight = key("alice", "in-flight-1");
    let pending = key("alice", "pending-01");
    let done = key("alice", "completed-1");
    let gone = key("alice", "expired-01");
    acquire(store, &in_flight, &fp("a"), LONG_TTL).await;
    let token = acquire(store, &pending, &fp("a"), LONG_TTL).await;
    store
        .hold_pending(&pending, &token, b"p", LONG_TTL, LONG_TTL)
        .await
        .expect("hold");
    let token = acquire(store, &done, &fp("a"), LONG_TTL).await;
    store
        .complete(&done, &token, &response("done"), LONG_TTL)
        .await
        .expect("complete");
    let token = acquire(store, &gone, &fp("a"), LONG_TTL).await;
    store
        .complete(&gone, &token, &response("gone"), short)
        .await
        .expect("complete");
    t.time().advance(t.time().past_short_ttl()).await;
    store.purge_expired(1_000).await.expect("purge");
    expect_in_flight(store, &in_flight, &fp("a")).await;
    assert!(matches!(
        reserve(store, &pending, &fp("a"), LONG_TTL).await,
        Reservation::Pending { .. }
    ));
    expect_completed(store, &done, &fp("a"), &response("done")).await;
    acquire(store, &gone, &fp("b"), LONG_TTL).await;
}

/// 100 tasks on several threads reserve one orphaned pending key at once:
/// exactly one resumes it, every other one sees it pending.
pub async fn case_concurrent_resumes_admit_exactly_one(t: &TestStore) {
    const TASKS: usize = 100;
    let short = t.time().short_ttl();
    let token = acquire(t.store(), &alice(), &fp("a"), LONG_TTL).await;
    t.store()
        .hold_pending(&alice(), &token, b"orphan", short, LONG_TTL)
        .await
        .expect("hold");
    t.time().advance(t.time().past_short_ttl()).await;
    let reservations = reserve_at_once(t, TASKS).await;
    let mut resumed = Vec::new();
    let mut pending = 0;
    for reservation in reservations {
        match reservation {
            Ok(Reservation::Resume { lease, pending }) => {
                assert_eq!(pending, b"orphan");
                resumed.push(lease.token);
            }
            Ok(Reservation::Pending { .. }) => pending += 1,
            other => panic!("unexpected reservation: {other:?}"),
        }
    }
    assert_eq!(resumed.len(), 1, "{} tasks resumed the key", resumed.len());
    assert_eq!(pending, TASKS - 1);
    store_complete_ok(t, &resumed[0]).await;
}

/// `tasks` tasks on several threads reserve alice's key at the same moment;
/// their reservations.
fn reserve_at_once(
    t: &TestStore,
    tasks: usize,
) -> impl Future<Output = Vec<crate::Result<Reservation>>> {
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = t.shared_store();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store.reserve(&alice(), &fp("a"), LONG_TTL).await
            })
        })
        .collect();
    async move {
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("task"));
        }
        out
    }
}

async fn store_complete_ok(t: &TestStore, token: &LeaseToken) {
    t.store()
        .complete(&alice(), token, &response("a"), LONG_TTL)
        .await
        .expect("the winner's complete");
    expect_completed(t.store(), &alice(), &fp("a"), &response("a")).await;
}

#[cfg(test)]
mod tests {
    /// A case missing from the macro's list would silently not run.
    #[test]
    fn macro_lists_every_case() {
        let defined = sofiia_testkit::assert_every_case_listed(
            include_str!("testing.rs"),
            "idempotency_store_tests!",
        );
        assert!(defined >= 15, "found only {defined} cases");
    }
}
