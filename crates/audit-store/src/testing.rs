//! The behavioural suite every [`AuditStore`] backend must pass.
//!
//! Each `case_*` function takes a fresh, empty store and panics with a
//! description of the first broken rule. Run them all with
//! [`audit_store_tests!`](crate::audit_store_tests), which turns each case
//! into one `#[tokio::test]`:
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! mod suite {
//!     use sofiia_audit_store::SqliteAuditStore;
//!     use sofiia_audit_store::testing::TestStore;
//!
//!     sofiia_audit_store::audit_store_tests!(
//!         async fn store() -> TestStore {
//!             let dir = tempfile::tempdir().expect("temp dir");
//!             let store = SqliteAuditStore::open(dir.path().join("audit.sqlite3"))
//!                 .await
//!                 .expect("open");
//!             // The directory lives as long as the test, then goes.
//!             TestStore::with_guard(store, dir)
//!         }
//!     );
//! }
//! # fn main() {}
//! ```
//!
//! A crate that does this needs `sofiia-audit-store` with the `testing`
//! feature and `tokio` with the `macros` and `rt-multi-thread` features among
//! its dev-dependencies.
//!
//! The cases need a multi-threaded tokio runtime: the concurrency cases call
//! the store from many OS threads at once, so that a backend's atomicity is
//! tested under real parallelism, not only interleaving. The macro provides
//! one.
//!
//! Expected results are computed by the cases themselves from what they
//! appended (filters applied in Rust, order by id descending), never read
//! back from the store under test.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sofiia_core_domain::{Clock, ManualClock, Page, PageLimit, Timestamp};
use sofiia_testkit::Guarded;

use crate::{
    AuditEvent, AuditQuery, AuditStore, DynAuditStore, GENESIS_HASH, NewEvent, Outcome, PruneBatch,
    Verification, compute_hash,
};

/// A store under test, with whatever must live as long as it.
///
/// The store is dropped before the guard, so a guard may remove what the
/// store used: a temporary directory, a key prefix.
pub struct TestStore(Guarded<DynAuditStore>);

impl TestStore {
    /// A store that needs nothing kept alive.
    pub fn new(store: impl AuditStore) -> Self {
        Self::with_guard(store, ())
    }

    /// A store and a guard to drop after it, such as a `tempfile::TempDir`
    /// holding its file. A guard's `Drop` also runs when the case panics.
    pub fn with_guard(store: impl AuditStore, guard: impl Any + Send) -> Self {
        Self(Guarded::with_guard(Arc::new(store), guard))
    }

    /// The store.
    pub fn store(&self) -> &DynAuditStore {
        self.0.get()
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
/// `sofiia_testkit::PostgresTestDatabase::new` does, or fails where it is
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
/// `-> Option<TestStore>`, for a backend whose server may be absent), given either inline (see
/// the [module](crate::testing) documentation) or as the path of such a
/// function defined elsewhere:
///
/// ```
/// mod suite {
///     use sofiia_audit_store::MemoryAuditStore;
///     use sofiia_audit_store::testing::TestStore;
///
///     async fn fresh_store() -> TestStore {
///         TestStore::new(MemoryAuditStore::new())
///     }
///
///     sofiia_audit_store::audit_store_tests!(fresh_store);
/// }
/// # fn main() {}
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies. Every case always runs: a backend
/// that cannot meet one must fail it, not skip it.
#[macro_export]
macro_rules! audit_store_tests {
    (@cases $ctor:path; $($case:ident),+ $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store = $crate::testing::IntoTestStore::into_test_store($ctor().await);
            if let Some(store) = store {
                $crate::testing::$case(store.store()).await;
            }
        }
    )+};
    (async fn $ctor:ident() -> $ret:ty $body:block) => {
        async fn $ctor() -> $ret $body
        $crate::audit_store_tests!($ctor);
    };
    ($ctor:path) => {
        $crate::audit_store_tests!(@cases $ctor;
            // cases:begin (a unit test checks that every case is listed)
            case_check_succeeds,
            case_empty_store,
            case_append_returns_increasing_ids_and_a_chain,
            case_read_returns_exactly_what_append_returned,
            case_details_and_optional_fields_round_trip,
            case_read_is_newest_first,
            case_read_filters_by_actor,
            case_read_filters_by_action,
            case_read_since_is_inclusive_and_until_exclusive,
            case_read_combines_filters,
            case_read_before_id_is_exclusive,
            case_cursor_walks_return_each_match_once,
            case_count_before_counts_what_a_prune_deletes,
            case_prune_deletes_exactly_the_older_events_in_batches,
            case_prune_stops_at_the_first_event_not_older,
            case_prune_with_batch_zero_deletes_nothing,
            case_ids_are_never_reused_after_pruning,
            case_prune_everything_then_append_chains_from_the_anchor,
            case_verify_is_intact_after_appends_and_prunes,
            case_concurrent_appends_form_one_chain,
            case_concurrent_appends_and_prunes_keep_the_chain_intact,
            // cases:end
        );
    };
}

/// Page sizes every walk is tried with: all small sizes, so that page
/// boundaries fall everywhere inside runs of equal timestamps, and one
/// large.
const WALK_SIZES: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 200];

// ---------------------------------------------------------------------------
// Fixture and helpers.

/// Builds the events the cases store, at times from a frozen clock.
#[derive(Debug, Default)]
pub struct Fixture {
    clock: ManualClock,
}

impl Fixture {
    /// A fixture whose times start at [`ManualClock::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The fixture's start time plus `secs` seconds.
    pub fn at(&self, secs: u64) -> Timestamp {
        self.clock.now().saturating_add(Duration::from_secs(secs))
    }

    /// A `chat.send` by `alice` at [`at(secs)`](Self::at), with every
    /// optional field set.
    pub fn event(&self, secs: u64) -> NewEvent {
        self.event_by(secs, "alice", "chat.send")
    }

    /// An event by `actor` doing `action` at [`at(secs)`](Self::at).
    pub fn event_by(&self, secs: u64, actor: &str, action: &str) -> NewEvent {
        let mut details = Map::new();
        details.insert("attempt".into(), json!(secs));
        NewEvent {
            ts: self.at(secs),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: "incident-42".to_owned(),
            outcome: Outcome::Ok,
            status: Some(200),
            request_id: Some(format!("req-{secs}")),
            node: Some("NODA1".to_owned()),
            source_ip: Some("192.0.2.7".to_owned()),
            user_agent: Some("curl/8.5.0".to_owned()),
            details,
        }
    }
}

fn limit(n: u64) -> PageLimit {
    PageLimit::new(n).expect("a valid page size")
}

async fn append(store: &DynAuditStore, event: NewEvent) -> AuditEvent {
    store.append(event).await.expect("append")
}

async fn append_all(store: &DynAuditStore, events: Vec<NewEvent>) -> Vec<AuditEvent> {
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        stored.push(append(store, event).await);
    }
    stored
}

async fn read(store: &DynAuditStore, query: &AuditQuery) -> Page<AuditEvent> {
    store.read(query).await.expect("read")
}

async fn verify(store: &DynAuditStore) -> Verification {
    store.verify().await.expect("verify")
}

async fn prune(store: &DynAuditStore, cutoff: Timestamp, batch: u32) -> PruneBatch {
    store.prune_batch(cutoff, batch).await.expect("prune_batch")
}

async fn count_before(store: &DynAuditStore, cutoff: Timestamp) -> u64 {
    store.count_before(cutoff).await.expect("count_before")
}

/// Every page of `query` (its `limit` and filters), following the cursors;
/// checks each cursor on the way.
async fn walk(store: &DynAuditStore, query: &AuditQuery) -> Vec<AuditEvent> {
    let mut query = query.clone();
    let mut all: Vec<AuditEvent> = Vec::new();
    for _ in 0..10_000 {
        let page = read(store, &query).await;
        assert!(
            page.items.len() <= query.limit.get(),
            "a page holds at most `limit` events"
        );
        let next = page.next.clone();
        all.extend(page.items);
        let Some(cursor) = next else {
            return all;
        };
        let last = all.last().expect("a page with a cursor is not empty");
        assert_eq!(
            cursor,
            last.cursor(),
            "the cursor names the page's last event"
        );
        query.before_id = Some(cursor.id().parse().expect("a cursor id is decimal"));
    }
    panic!("the walk did not end: {query:?}");
}

/// The events of `stored` that `query`'s filters (not its page) select,
/// newest (highest id) first.
fn expected(stored: &[AuditEvent], query: &AuditQuery) -> Vec<u64> {
    let mut ids: Vec<u64> = stored
        .iter()
        .filter(|e| query.actor.as_ref().is_none_or(|a| *a == e.event.actor))
        .filter(|e| query.action.as_ref().is_none_or(|a| *a == e.event.action))
        .filter(|e| query.since.is_none_or(|t| e.event.ts >= t))
        .filter(|e| query.until.is_none_or(|t| e.event.ts < t))
        .filter(|e| query.before_id.is_none_or(|b| e.id < b))
        .map(|e| e.id)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

fn ids(events: &[AuditEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// The whole store, newest first.
async fn everything(store: &DynAuditStore) -> Vec<AuditEvent> {
    walk(
        store,
        &AuditQuery {
            limit: limit(200),
            ..AuditQuery::default()
        },
    )
    .await
}

/// Checks that `newest_first` is one chain from `anchor`: each event's
/// `prev_hash` is the hash before it and its hash is its content's.
fn assert_chain(newest_first: &[AuditEvent], anchor: &str) {
    let mut prev = anchor.to_owned();
    let mut last_id = 0;
    for event in newest_first.iter().rev() {
        assert!(event.id > last_id, "ids increase along the chain");
        assert_eq!(
            event.prev_hash, prev,
            "event {} chains from its predecessor",
            event.id
        );
        assert_eq!(
            event.hash,
            compute_hash(&event.prev_hash, &event.event),
            "event {} carries its own hash",
            event.id
        );
        prev.clone_from(&event.hash);
        last_id = event.id;
    }
}

/// Runs `f(0..n)` at once on `n` OS threads and returns the results in
/// index order. Needs a multi-threaded runtime.
fn in_parallel<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = T>,
    T: Send,
{
    let handle = tokio::runtime::Handle::current();
    // Parks this worker for the duration, letting the runtime move its other
    // tasks elsewhere, rather than blocking an async worker thread.
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let (f, handle) = (&f, &handle);
                    scope.spawn(move || handle.block_on(f(i)))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    })
}

/// A mixed history: three actors, three actions, runs of equal
/// timestamps (seconds 0..=9, up to five events each).
async fn mixed_history(store: &DynAuditStore, fx: &Fixture) -> Vec<AuditEvent> {
    let actors = ["alice", "bob", "anonymous"];
    let actions = ["chat.send", "audit.read", "auth.denied"];
    let mut events = Vec::new();
    for i in 0..45_u64 {
        let secs = i / 5 + (i % 3);
        let actor = actors[usize::try_from(i % 3).unwrap_or(0)];
        let action = actions[usize::try_from((i / 3) % 3).unwrap_or(0)];
        events.push(fx.event_by(secs, actor, action));
    }
    append_all(store, events).await
}

/// The filter combinations every read case tries, from a history made by
/// [`mixed_history`].
fn filter_combinations(fx: &Fixture) -> Vec<AuditQuery> {
    let mut queries = Vec::new();
    for actor in [None, Some("alice"), Some("anonymous"), Some("nobody")] {
        for action in [None, Some("audit.read"), Some("auth.denied")] {
            for (since, until) in [
                (None, None),
                (Some(fx.at(3)), None),
                (None, Some(fx.at(7))),
                (Some(fx.at(3)), Some(fx.at(7))),
                (Some(fx.at(5)), Some(fx.at(5))),
            ] {
                queries.push(AuditQuery {
                    actor: actor.map(str::to_owned),
                    action: action.map(str::to_owned),
                    since,
                    until,
                    ..AuditQuery::default()
                });
            }
        }
    }
    queries
}

// ---------------------------------------------------------------------------
// Cases.

/// A fresh store answers its readiness check.
pub async fn case_check_succeeds(store: &DynAuditStore) {
    store.check().await.expect("check on a fresh store");
}

/// An empty store reads nothing, counts nothing, prunes nothing and
/// verifies intact.
pub async fn case_empty_store(store: &DynAuditStore) {
    let fx = Fixture::new();
    let page = read(store, &AuditQuery::default()).await;
    assert_eq!(page.items, Vec::new());
    assert_eq!(page.next, None);
    assert_eq!(count_before(store, Timestamp::MAX).await, 0);
    assert_eq!(
        prune(store, fx.at(10), 100).await,
        PruneBatch {
            deleted: 0,
            more: false
        }
    );
    assert_eq!(verify(store).await, Verification::Intact { events: 0 });
}

/// Ids increase strictly; the first event chains from the genesis hash and
/// each later one from the one before; each hash is `compute_hash` of the
/// event.
pub async fn case_append_returns_increasing_ids_and_a_chain(store: &DynAuditStore) {
    let fx = Fixture::new();
    let events: Vec<NewEvent> = (0..10).map(|i| fx.event(i % 3)).collect();
    let stored = append_all(store, events.clone()).await;
    assert_eq!(stored[0].prev_hash, GENESIS_HASH, "the first event");
    for (i, (event, input)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(&event.event, input, "event {i} is stored as given");
        assert_eq!(
            event.hash,
            compute_hash(&event.prev_hash, input),
            "event {i}"
        );
        assert_eq!(event.hash.len(), 64);
        assert!(
            event
                .hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        if i > 0 {
            assert!(event.id > stored[i - 1].id, "ids increase: {i}");
            assert_eq!(event.prev_hash, stored[i - 1].hash, "event {i} chains");
        }
    }
    assert_eq!(verify(store).await, Verification::Intact { events: 10 });
}

/// What `read` returns is exactly what `append` returned.
pub async fn case_read_returns_exactly_what_append_returned(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, (0..5).map(|i| fx.event(i)).collect()).await;
    let mut newest_first = stored;
    newest_first.reverse();
    assert_eq!(everything(store).await, newest_first);
}

/// Details (nested, unicode, numbers of every kind, empty) and absent or
/// present optional fields come back unchanged and still verify.
pub async fn case_details_and_optional_fields_round_trip(store: &DynAuditStore) {
    let fx = Fixture::new();
    let rich = json!({
        "nested": {"list": [1, -2, 3.25, 1e-7, 1.0, true, null, "x"], "empty": {}},
        "unicode": "é ü 😀 \u{0} \u{1f} \"quoted\" \\ / \n",
        "big": u64::MAX,
        "negative": i64::MIN,
        "float": 0.1,
        // Floats whose shortest spelling a fast, inexact parser reads back
        // one unit off: the chain must still verify after a round trip.
        "hard floats": [6.662907547475537e-23, 5e-324, 1.7976931348623157e308, 0.30000000000000004],
        "": "empty key",
        "\u{e000}": "private use",
        "😀": "astral key"
    });
    let Value::Object(rich) = rich else {
        panic!("an object literal")
    };
    let mut with_details = fx.event(1);
    with_details.details = rich;
    let mut bare = fx.event(2);
    bare.status = None;
    bare.request_id = None;
    bare.node = None;
    bare.source_ip = None;
    bare.user_agent = None;
    bare.details = Map::new();
    bare.outcome = Outcome::Denied;
    let mut odd = fx.event(3);
    odd.actor = String::new();
    odd.target = "tab\there, nul \u{0}".into();
    odd.user_agent = Some(String::new());
    odd.status = Some(u16::MAX);
    odd.outcome = Outcome::Error;
    let stored = append_all(store, vec![with_details.clone(), bare.clone(), odd.clone()]).await;
    let read_back = everything(store).await;
    assert_eq!(read_back.len(), 3);
    assert_eq!(read_back[2].event, with_details);
    assert_eq!(read_back[1].event, bare);
    assert_eq!(read_back[0].event, odd);
    assert_eq!(ids(&read_back), expected(&stored, &AuditQuery::default()));
    assert_eq!(verify(store).await, Verification::Intact { events: 3 });
}

/// Without filters, events come newest (highest id) first, whatever their
/// timestamps, and a page that holds the rest has no cursor.
pub async fn case_read_is_newest_first(store: &DynAuditStore) {
    let fx = Fixture::new();
    // Timestamps that disagree with the append order: the order is by id.
    let stored = append_all(store, [5, 1, 9, 1, 3].map(|s| fx.event(s)).to_vec()).await;
    let page = read(store, &AuditQuery::default()).await;
    assert_eq!(ids(&page.items), expected(&stored, &AuditQuery::default()));
    assert_eq!(page.next, None);

    let query = AuditQuery {
        limit: limit(2),
        ..AuditQuery::default()
    };
    let page = read(store, &query).await;
    assert_eq!(ids(&page.items), vec![stored[4].id, stored[3].id]);
    assert_eq!(page.next, Some(stored[3].cursor()));

    let query = AuditQuery {
        limit: limit(5),
        ..AuditQuery::default()
    };
    let page = read(store, &query).await;
    assert_eq!(page.items.len(), 5);
    assert_eq!(page.next, None, "a full last page has no cursor");
}

/// `actor` selects exactly that actor's events, byte for byte.
pub async fn case_read_filters_by_actor(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(
        store,
        vec![
            fx.event_by(1, "alice", "chat.send"),
            fx.event_by(1, "bob", "chat.send"),
            fx.event_by(2, "Alice", "chat.send"),
            fx.event_by(3, "alice", "audit.read"),
            fx.event_by(4, "alice ", "chat.send"),
        ],
    )
    .await;
    for actor in ["alice", "bob", "Alice", "alice ", "carol", ""] {
        let query = AuditQuery {
            actor: Some(actor.into()),
            ..AuditQuery::default()
        };
        let page = read(store, &query).await;
        assert_eq!(
            ids(&page.items),
            expected(&stored, &query),
            "actor {actor:?}"
        );
        assert!(page.items.iter().all(|e| e.event.actor == actor));
    }
    let query = AuditQuery {
        actor: Some("alice".into()),
        ..AuditQuery::default()
    };
    assert_eq!(
        ids(&read(store, &query).await.items),
        vec![stored[3].id, stored[0].id]
    );
}

/// `action` selects exactly that action's events.
pub async fn case_read_filters_by_action(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(
        store,
        vec![
            fx.event_by(1, "alice", "chat.send"),
            fx.event_by(1, "alice", "chat.send.replay"),
            fx.event_by(2, "bob", "chat.send"),
            fx.event_by(3, "bob", "audit.read"),
        ],
    )
    .await;
    let query = AuditQuery {
        action: Some("chat.send".into()),
        ..AuditQuery::default()
    };
    assert_eq!(
        ids(&read(store, &query).await.items),
        vec![stored[2].id, stored[0].id],
        "an exact match, not a prefix"
    );
    for action in ["chat.send.replay", "audit.read", "chat", "audit.prune"] {
        let query = AuditQuery {
            action: Some(action.into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            ids(&read(store, &query).await.items),
            expected(&stored, &query),
            "action {action:?}"
        );
    }
}

/// `since` includes events at exactly that time; `until` excludes them.
pub async fn case_read_since_is_inclusive_and_until_exclusive(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, [0, 1, 2, 2, 3, 4].map(|s| fx.event(s)).to_vec()).await;
    let cases = [
        (Some(2), None, vec![5, 4, 3, 2]),
        (None, Some(2), vec![1, 0]),
        (Some(2), Some(3), vec![3, 2]),
        (Some(2), Some(2), vec![]),
        (Some(3), Some(2), vec![]),
        (Some(0), Some(5), vec![5, 4, 3, 2, 1, 0]),
        (Some(5), None, vec![]),
        (None, Some(0), vec![]),
    ];
    for (since, until, positions) in cases {
        let query = AuditQuery {
            since: since.map(|s| fx.at(s)),
            until: until.map(|s| fx.at(s)),
            ..AuditQuery::default()
        };
        let want: Vec<u64> = positions.iter().map(|&p: &usize| stored[p].id).collect();
        assert_eq!(
            ids(&read(store, &query).await.items),
            want,
            "since {since:?} until {until:?}"
        );
        assert_eq!(want, expected(&stored, &query));
    }
}

/// Every combination of actor, action, since and until selects the
/// intersection.
pub async fn case_read_combines_filters(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = mixed_history(store, &fx).await;
    for query in filter_combinations(&fx) {
        let page = read(
            store,
            &AuditQuery {
                limit: limit(200),
                ..query.clone()
            },
        )
        .await;
        assert_eq!(ids(&page.items), expected(&stored, &query), "{query:?}");
        assert_eq!(page.next, None);
    }
}

/// `before_id` starts strictly below that id, also when no event has it.
pub async fn case_read_before_id_is_exclusive(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, (0..6).map(|i| fx.event(i)).collect()).await;
    let max = stored.iter().map(|e| e.id).max().unwrap_or(0);
    for before in [
        0,
        1,
        stored[0].id,
        stored[3].id,
        stored[3].id + 1,
        max,
        max + 1,
        u64::MAX,
    ] {
        let query = AuditQuery {
            before_id: Some(before),
            ..AuditQuery::default()
        };
        assert_eq!(
            ids(&read(store, &query).await.items),
            expected(&stored, &query),
            "before {before}"
        );
    }
    let query = AuditQuery {
        before_id: Some(stored[3].id),
        actor: Some("alice".into()),
        since: Some(fx.at(1)),
        ..AuditQuery::default()
    };
    assert_eq!(
        ids(&read(store, &query).await.items),
        vec![stored[2].id, stored[1].id]
    );
}

/// Walking every page with any page size returns each matching event
/// exactly once, newest first, however many share a timestamp, for every
/// filter combination.
pub async fn case_cursor_walks_return_each_match_once(store: &DynAuditStore) {
    let fx = Fixture::new();
    let mut stored = mixed_history(store, &fx).await;
    // A long run at one timestamp.
    let frozen: Vec<NewEvent> = (0..23)
        .map(|i| fx.event_by(4, if i % 2 == 0 { "alice" } else { "bob" }, "chat.send"))
        .collect();
    stored.extend(append_all(store, frozen).await);
    for size in WALK_SIZES {
        for query in filter_combinations(&fx) {
            let query = AuditQuery {
                limit: limit(size),
                ..query
            };
            let walked = walk(store, &query).await;
            let walked_ids = ids(&walked);
            let unique: HashSet<u64> = walked_ids.iter().copied().collect();
            assert_eq!(unique.len(), walked_ids.len(), "no duplicates: {query:?}");
            assert_eq!(walked_ids, expected(&stored, &query), "{query:?}");
        }
    }
}

/// `count_before` counts exactly the events a prune to the same cutoff
/// deletes.
pub async fn case_count_before_counts_what_a_prune_deletes(store: &DynAuditStore) {
    let fx = Fixture::new();
    append_all(store, [1, 1, 2, 3, 3, 3, 5].map(|s| fx.event(s)).to_vec()).await;
    let cases = [(0, 0), (1, 0), (2, 2), (3, 3), (4, 6), (5, 6), (6, 7)];
    for (cutoff, count) in cases {
        assert_eq!(
            count_before(store, fx.at(cutoff)).await,
            count,
            "cutoff {cutoff}"
        );
    }
    assert_eq!(count_before(store, Timestamp::MIN).await, 0);
    assert_eq!(count_before(store, Timestamp::MAX).await, 7);
    assert_eq!(
        prune(store, fx.at(4), 100).await,
        PruneBatch {
            deleted: 6,
            more: false
        }
    );
    assert_eq!(count_before(store, fx.at(4)).await, 0);
    assert_eq!(count_before(store, fx.at(6)).await, 1);
}

/// Pruning in batches deletes exactly the events older than the cutoff,
/// oldest first, `more` set while another batch is due; the rest stays.
pub async fn case_prune_deletes_exactly_the_older_events_in_batches(store: &DynAuditStore) {
    let fx = Fixture::new();
    // 11 events before second 10 (several at one time), 4 at or after it.
    let seconds = [0, 1, 1, 1, 2, 3, 5, 5, 8, 9, 9, 10, 10, 11, 20];
    let stored = append_all(store, seconds.map(|s| fx.event(s)).to_vec()).await;
    let cutoff = fx.at(10);
    assert_eq!(count_before(store, cutoff).await, 11);

    let mut batches = Vec::new();
    loop {
        let batch = prune(store, cutoff, 4).await;
        batches.push(batch);
        if !batch.more {
            break;
        }
        assert!(batches.len() < 10, "pruning did not end: {batches:?}");
    }
    let expected_batches = [(4, true), (4, true), (3, false)]
        .map(|(deleted, more)| PruneBatch { deleted, more })
        .to_vec();
    assert_eq!(batches, expected_batches);

    let kept = everything(store).await;
    assert_eq!(
        ids(&kept),
        expected(
            &stored,
            &AuditQuery {
                since: Some(cutoff),
                ..AuditQuery::default()
            }
        )
    );
    assert_chain(&kept, &stored[10].hash);
    assert_eq!(count_before(store, cutoff).await, 0);
    assert_eq!(
        prune(store, cutoff, 4).await,
        PruneBatch {
            deleted: 0,
            more: false
        },
        "nothing left to prune"
    );

    // A batch that ends exactly at the last prunable event says so.
    let batch = prune(store, fx.at(11), 2).await;
    assert_eq!(
        batch,
        PruneBatch {
            deleted: 2,
            more: false
        }
    );
    assert_eq!(verify(store).await, Verification::Intact { events: 2 });
}

/// Pruning deletes a prefix of the chain: an event older than the cutoff
/// that follows one that is not stays, so that the chain keeps no hole.
pub async fn case_prune_stops_at_the_first_event_not_older(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, [1, 2, 9, 3, 4].map(|s| fx.event(s)).to_vec()).await;
    assert_eq!(count_before(store, fx.at(5)).await, 2);
    assert_eq!(
        prune(store, fx.at(5), 10).await,
        PruneBatch {
            deleted: 2,
            more: false
        }
    );
    let kept = everything(store).await;
    assert_eq!(ids(&kept), vec![stored[4].id, stored[3].id, stored[2].id]);
    assert_eq!(verify(store).await, Verification::Intact { events: 3 });
    assert_eq!(count_before(store, fx.at(10)).await, 3);
    assert_eq!(
        prune(store, fx.at(10), 10).await,
        PruneBatch {
            deleted: 3,
            more: false
        }
    );
}

/// A batch of 0 deletes nothing and records nothing, but tells whether a
/// prune is due.
pub async fn case_prune_with_batch_zero_deletes_nothing(store: &DynAuditStore) {
    let fx = Fixture::new();
    append_all(store, (0..3).map(|i| fx.event(i)).collect()).await;
    assert_eq!(
        prune(store, fx.at(2), 0).await,
        PruneBatch {
            deleted: 0,
            more: true
        }
    );
    assert_eq!(
        prune(store, fx.at(0), 0).await,
        PruneBatch {
            deleted: 0,
            more: false
        }
    );
    assert_eq!(everything(store).await.len(), 3);
    assert_eq!(verify(store).await, Verification::Intact { events: 3 });
}

/// An append after pruning gets an id above every id ever given, also when
/// the newest events were pruned.
pub async fn case_ids_are_never_reused_after_pruning(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, (0..5).map(|i| fx.event(i)).collect()).await;
    let max = stored.iter().map(|e| e.id).max().unwrap_or(0);
    assert_eq!(
        prune(store, fx.at(100), 100).await,
        PruneBatch {
            deleted: 5,
            more: false
        }
    );
    let next = append(store, fx.event(200)).await;
    assert!(next.id > max, "id {} reuses one up to {max}", next.id);
    let after = append(store, fx.event(200)).await;
    assert!(after.id > next.id);
}

/// Pruning every event leaves the anchor; the next event chains from the
/// last deleted event's hash and the chain verifies.
pub async fn case_prune_everything_then_append_chains_from_the_anchor(store: &DynAuditStore) {
    let fx = Fixture::new();
    let stored = append_all(store, (0..3).map(|i| fx.event(i)).collect()).await;
    prune(store, fx.at(100), 100).await;
    assert_eq!(verify(store).await, Verification::Intact { events: 0 });
    let next = append(store, fx.event(200)).await;
    assert_eq!(next.prev_hash, stored[2].hash, "chains from the anchor");
    assert_eq!(next.hash, compute_hash(&stored[2].hash, &next.event));
    assert_eq!(verify(store).await, Verification::Intact { events: 1 });
}

/// `verify` is intact after appends, after each prune batch and after
/// appends that follow.
pub async fn case_verify_is_intact_after_appends_and_prunes(store: &DynAuditStore) {
    let fx = Fixture::new();
    append_all(store, (0..20).map(|i| fx.event(i / 2)).collect()).await;
    assert_eq!(verify(store).await, Verification::Intact { events: 20 });
    let mut left = 20;
    loop {
        let batch = prune(store, fx.at(6), 3).await;
        left -= batch.deleted;
        assert_eq!(verify(store).await, Verification::Intact { events: left });
        if !batch.more {
            break;
        }
    }
    assert_eq!(left, 8);
    append_all(store, (0..4).map(|i| fx.event(20 + i)).collect()).await;
    assert_eq!(verify(store).await, Verification::Intact { events: 12 });
    let newest_first = everything(store).await;
    assert_eq!(newest_first.len(), 12);
}

/// 200 appends from 20 threads at once: all stored, distinct ids, one
/// intact chain, each thread's events in its own order.
pub async fn case_concurrent_appends_form_one_chain(store: &DynAuditStore) {
    let fx = Fixture::new();
    let results = in_parallel(20, |t| {
        let fx = &fx;
        async move {
            let mut mine = Vec::new();
            for j in 0..10 {
                let event = fx.event_by(j, &format!("op-{t}"), "chat.send");
                mine.push(store.append(event).await.expect("concurrent append"));
            }
            mine
        }
    });
    let mut all_ids = HashSet::new();
    for (t, mine) in results.iter().enumerate() {
        for pair in mine.windows(2) {
            assert!(pair[0].id < pair[1].id, "thread {t}'s appends in order");
        }
        for event in mine {
            assert!(all_ids.insert(event.id), "id {} given twice", event.id);
        }
    }
    assert_eq!(all_ids.len(), 200);
    let stored = everything(store).await;
    assert_eq!(stored.len(), 200);
    let stored_ids: HashSet<u64> = stored.iter().map(|e| e.id).collect();
    assert_eq!(stored_ids, all_ids);
    assert_chain(&stored, GENESIS_HASH);
    for event in results.iter().flatten() {
        assert!(
            stored.contains(event),
            "event {} stored as returned",
            event.id
        );
    }
    assert_eq!(verify(store).await, Verification::Intact { events: 200 });
}

/// Appends racing prune batches: every append is stored, exactly the old
/// events go, and the chain stays intact.
pub async fn case_concurrent_appends_and_prunes_keep_the_chain_intact(store: &DynAuditStore) {
    let fx = Fixture::new();
    let old = append_all(store, (0..50).map(|i| fx.event(i)).collect()).await;
    let cutoff = fx.at(50);
    let results = in_parallel(11, |t| {
        let fx = &fx;
        async move {
            let mut deleted = 0;
            if t == 0 {
                loop {
                    let batch = store.prune_batch(cutoff, 7).await.expect("prune");
                    deleted += batch.deleted;
                    if !batch.more {
                        break;
                    }
                }
            } else {
                for j in 0..10 {
                    store
                        .append(fx.event(100 + j))
                        .await
                        .expect("append while pruning");
                }
            }
            deleted
        }
    });
    assert_eq!(results[0], 50, "every old event pruned");
    let kept = everything(store).await;
    assert_eq!(kept.len(), 100);
    assert!(kept.iter().all(|e| e.event.ts >= cutoff));
    assert_chain(&kept, &old[49].hash);
    assert_eq!(verify(store).await, Verification::Intact { events: 100 });
}

#[cfg(test)]
mod tests {
    /// Every `case_*` function must be listed in the macro, or a backend
    /// would silently not run it.
    #[test]
    fn macro_lists_every_case() {
        let defined = sofiia_testkit::assert_every_case_listed(
            include_str!("testing.rs"),
            "audit_store_tests!",
        );
        assert!(defined >= 20, "found only {defined} cases");
    }
}
