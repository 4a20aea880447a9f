//! The behavioural suite every [`ChatIndexStore`] backend must pass.
//!
//! Each `case_*` function takes a fresh, empty store and panics with a
//! description of the first broken rule. Run them all with
//! [`chat_index_store_tests!`](crate::chat_index_store_tests), which turns
//! each case into one `#[tokio::test]`:
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! mod suite {
//!     use sofiia_chat_index::SqliteChatIndex;
//!     use sofiia_chat_index::testing::TestStore;
//!
//!     sofiia_chat_index::chat_index_store_tests!(
//!         async fn store() -> TestStore {
//!             let dir = tempfile::tempdir().expect("temp dir");
//!             let store = SqliteChatIndex::open(dir.path().join("index.sqlite3"))
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
//! A crate that does this needs `sofiia-chat-index` with the `testing`
//! feature and `tokio` with the `macros` and `rt-multi-thread` features among
//! its dev-dependencies.
//!
//! The cases need a multi-threaded tokio runtime: the concurrency cases call
//! the store from many OS threads at once, so that a backend's atomicity is
//! tested under real parallelism, not only interleaving. The macro provides
//! one.
//!
//! Expected results are computed by the cases themselves from what they
//! stored (for orders: sort by `(ts, id)` descending, ids compared as
//! bytes), never read back from the store under test.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Clock, Cursor, CursorKeys, Exchange, ManualClock, Message, MessageId,
    NewChat, NodeId, OperatorId, Page, PageLimit, PageRequest, Role, Timestamp,
};
use sofiia_testkit::Guarded;

use crate::{ChatIndexError, ChatIndexStore, DynChatIndexStore, Imported};

/// A store under test, with whatever must live as long as it.
///
/// The store is dropped before the guard, so a guard may remove what the
/// store used: a temporary directory, a Redis key prefix.
pub struct TestStore(Guarded<DynChatIndexStore>);

impl TestStore {
    /// A store that needs nothing kept alive.
    pub fn new(store: impl ChatIndexStore) -> Self {
        Self::with_guard(store, ())
    }

    /// A store and a guard to drop after it, such as a
    /// `tempfile::TempDir` holding its file. A guard's `Drop` also runs when
    /// the case panics; one that must do async work can use
    /// `tokio::task::block_in_place` there, as cases run on a multi-threaded
    /// runtime.
    pub fn with_guard(store: impl ChatIndexStore, guard: impl Any + Send) -> Self {
        Self(Guarded::with_guard(Arc::new(store), guard))
    }

    /// The store.
    pub fn store(&self) -> &DynChatIndexStore {
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

/// What a suite constructor returns: a [`TestStore`], or an
/// `Option<TestStore>` for a backend that may be missing where the tests
/// run (a server that is not configured).
///
/// `None` ends the case at once, so the constructor must say loudly why it
/// has no store, and fail instead where the backend is required; see
/// `sofiia_testkit::RedisTestContext`, which does both.
pub trait IntoTestStore {
    /// The store, if there is one.
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
/// `-> Option<TestStore>`, see [`IntoTestStore`]), given either inline (see
/// the [module](crate::testing) documentation) or as the path of such a
/// function defined elsewhere:
///
/// ```
/// mod suite {
///     use sofiia_chat_index::MemoryChatIndex;
///     use sofiia_chat_index::testing::TestStore;
///
///     async fn fresh_store() -> TestStore {
///         TestStore::new(MemoryChatIndex::new())
///     }
///
///     sofiia_chat_index::chat_index_store_tests!(fresh_store);
/// }
/// # fn main() {}
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies. Every case runs on every store:
/// a backend that cannot meet one must fail it, not skip it; only a
/// constructor that has no store at all (`None`) ends a case early.
#[macro_export]
macro_rules! chat_index_store_tests {
    (@cases $ctor:path; $($case:ident),+ $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(store) = $crate::testing::IntoTestStore::into_test_store($ctor().await)
            else {
                // The constructor has said, loudly, why there is no store.
                return;
            };
            $crate::testing::$case(store.store()).await;
        }
    )+};
    (async fn $ctor:ident() -> $ret:ty $body:block) => {
        async fn $ctor() -> $ret $body
        $crate::chat_index_store_tests!($ctor);
    };
    ($ctor:path) => {
        $crate::chat_index_store_tests!(@cases $ctor;
            // cases:begin (a unit test checks that every case is listed)
            case_check_succeeds,
            case_create_then_get,
            case_get_missing_chat_is_none,
            case_create_existing_id_conflicts,
            case_concurrent_creates_of_one_id_admit_exactly_one,
            case_empty_store_lists_no_chats,
            case_chats_are_listed_by_activity_and_append_moves_to_front,
            case_append_creates_missing_chat_from_new_chat,
            case_append_ignores_new_chat_for_existing_chat,
            case_append_counts_and_updated_at_follows_max_rule,
            case_append_is_idempotent_on_operator_message_id,
            case_append_rejects_inconsistent_exchange,
            case_append_rejects_reused_message_ids_atomically,
            case_list_messages_of_missing_chat_is_not_found,
            case_list_messages_of_empty_chat_is_empty,
            case_full_last_page_has_no_cursor,
            case_messages_of_different_chats_never_mix,
            case_text_round_trips_byte_for_byte,
            case_frozen_clock_chats_walk_exactly_once,
            case_frozen_clock_messages_walk_exactly_once,
            case_mixed_timestamps_walk_in_order,
            case_cursor_between_items_starts_right_after_it,
            case_cursor_of_moved_chat_stays_valid,
            case_concurrent_appends_to_one_chat_are_all_stored,
            case_concurrent_replays_store_one_copy,
            case_import_stores_chats_and_messages_as_given,
            case_import_repeated_or_resumed_leaves_the_same_result,
            case_import_into_existing_chat_keeps_it_and_takes_the_later_time,
            case_imported_chats_take_appends_replays_and_conflicts,
            case_import_rejects_inconsistent_batches_atomically,
            case_concurrent_imports_store_each_message_once,
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

/// Builds the values the cases store, from a frozen clock.
struct Fx {
    clock: ManualClock,
    node: NodeId,
    other_node: NodeId,
    operator: OperatorId,
}

impl Fx {
    fn new() -> Self {
        Self {
            clock: ManualClock::default(),
            node: NodeId::new("NODA1").expect("valid node"),
            other_node: NodeId::new("NODA2").expect("valid node"),
            operator: OperatorId::new("alice").expect("valid operator"),
        }
    }

    /// The frozen clock's time moved by `offset_ms`.
    fn at(&self, offset_ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(self.clock.now().as_unix_millis() + offset_ms)
            .expect("test time in range")
    }

    fn new_chat(&self, id: &str, created_at: Timestamp) -> NewChat {
        NewChat {
            id: chat_id(id),
            title: None,
            node: self.node.clone(),
            created_at,
        }
    }

    fn message(
        &self,
        chat: &ChatId,
        id: MessageId,
        role: Role,
        ts: Timestamp,
        text: &str,
    ) -> Message {
        Message {
            id,
            chat_id: chat.clone(),
            role,
            text: text.to_owned(),
            ts,
            operator_id: self.operator.clone(),
            node: self.node.clone(),
        }
    }

    /// An exchange with the given ids and times.
    fn exchange_with(
        &self,
        chat: &ChatId,
        ids: (MessageId, MessageId),
        times: (Timestamp, Timestamp),
    ) -> Exchange {
        Exchange {
            operator: self.message(chat, ids.0, Role::Operator, times.0, "status?"),
            agent: self.message(chat, ids.1, Role::Agent, times.1, "all green"),
        }
    }

    /// An exchange with fresh ids, both messages at `ts`.
    fn exchange(&self, chat: &ChatId, ts: Timestamp) -> Exchange {
        self.exchange_with(chat, fresh_ids(), (ts, ts))
    }
}

fn chat_id(id: &str) -> ChatId {
    ChatId::new(id).unwrap_or_else(|e| panic!("test chat id {id:?} is invalid: {e}"))
}

fn fresh_ids() -> (MessageId, MessageId) {
    (MessageId::generate(), MessageId::generate())
}

fn limit(n: u64) -> PageLimit {
    PageLimit::new(n).expect("valid page size")
}

fn request(n: u64, after: Option<Cursor>) -> PageRequest {
    PageRequest {
        limit: limit(n),
        after,
    }
}

fn chat_ids(chats: &[Chat]) -> Vec<String> {
    chats.iter().map(|c| c.id.as_str().to_owned()).collect()
}

fn message_ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.id.to_string()).collect()
}

fn strs(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// The list order computed independently of any store: `(ts, id)`
/// descending, ids compared as bytes.
fn expected_order(mut keys: Vec<(Timestamp, String)>) -> Vec<String> {
    keys.sort_by(|a, b| b.cmp(a));
    keys.into_iter().map(|(_, id)| id).collect()
}

/// Asserts that `actual` is exactly `expected`, naming the first difference.
fn assert_sequence(actual: &[String], expected: &[String], what: &str) {
    let unique: HashSet<&String> = actual.iter().collect();
    assert_eq!(
        unique.len(),
        actual.len(),
        "{what}: {} item(s) returned more than once",
        actual.len() - unique.len()
    );
    if let Some(i) = (0..actual.len().min(expected.len())).find(|&i| actual[i] != expected[i]) {
        panic!(
            "{what}: first difference at position {i}: got {:?}, expected {:?}",
            actual[i], expected[i]
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: got {} items, expected {}",
        actual.len(),
        expected.len()
    );
}

/// Checks the page contract: at most `limit` items; a `next` cursor only on a
/// full page, naming its last item.
fn check_page<T>(page: &Page<T>, limit: u64, cursor: impl Fn(&T) -> Cursor, what: &str) {
    let limit = usize::try_from(limit).expect("small page size");
    assert!(
        page.items.len() <= limit,
        "{what}: {} items on a page of {limit}",
        page.items.len()
    );
    if let Some(next) = &page.next {
        assert_eq!(
            page.items.len(),
            limit,
            "{what}: a page with a next cursor must be full"
        );
        let last = page.items.last().map(cursor);
        assert_eq!(
            Some(next),
            last.as_ref(),
            "{what}: the next cursor must name the page's last item"
        );
    }
}

/// Every chat, page by page of `size`, following the cursors.
async fn walk_chats(store: &DynChatIndexStore, size: u64, bound: usize) -> Vec<Chat> {
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..=bound {
        let page = store
            .list_chats(&request(size, after))
            .await
            .expect("list_chats");
        check_page(&page, size, Chat::cursor, "list_chats");
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(over_the_wire(&next)),
            None => return all,
        }
    }
    panic!("list_chats with page size {size}: more than {bound} pages, the walk does not end");
}

/// Every message of `chat`, page by page of `size`, following the cursors.
async fn walk_messages(
    store: &DynChatIndexStore,
    chat: &ChatId,
    size: u64,
    bound: usize,
) -> Vec<Message> {
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..=bound {
        let page = store
            .list_messages(chat, &request(size, after))
            .await
            .expect("list_messages");
        check_page(&page, size, Message::cursor, "list_messages");
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(over_the_wire(&next)),
            None => return all,
        }
    }
    panic!("list_messages with page size {size}: more than {bound} pages, the walk does not end");
}

/// The cursor as a client hands it back: encoded, then decoded.
fn over_the_wire(cursor: &Cursor) -> Cursor {
    let keys = CursorKeys::new(["the behavioural suite's cursor key"]).expect("a long key");
    let decoded = keys
        .decode(&keys.encode(cursor, "suite"), "suite")
        .expect("a cursor round-trips");
    assert_eq!(&decoded, cursor, "a cursor must survive its wire form");
    decoded
}

async fn all_chats(store: &DynChatIndexStore) -> Vec<Chat> {
    walk_chats(store, 200, 1000).await
}

async fn all_messages(store: &DynChatIndexStore, chat: &ChatId) -> Vec<Message> {
    walk_messages(store, chat, 200, 1000).await
}

async fn get(store: &DynChatIndexStore, id: &ChatId) -> Option<Chat> {
    store.get_chat(id).await.expect("get_chat")
}

async fn append(store: &DynChatIndexStore, new_chat: NewChat, exchange: &Exchange) -> Chat {
    store
        .append_exchange(new_chat, exchange)
        .await
        .expect("append_exchange")
}

/// A deterministic shuffle (xorshift64 and Fisher–Yates), so that insertion
/// order says nothing about the expected order, the same way every run.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).expect("index fits");
        items.swap(i, j);
    }
}

/// `n` message ids whose order is unrelated to the order they are handed
/// out in, so that a backend ordering by insertion is caught.
fn shuffled_ids(n: usize, seed: u64) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = (0..n).map(|_| MessageId::generate()).collect();
    shuffle(&mut ids, seed);
    ids
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

fn assert_backend_error(result: crate::Result<Chat>, what: &str) {
    match result {
        Err(ChatIndexError::Backend { .. }) => {}
        Err(other) => panic!("{what}: expected ChatIndexError::Backend, got {other:?}"),
        Ok(chat) => panic!("{what}: expected an error, the store accepted it: {chat:?}"),
    }
}

// ---------------------------------------------------------------------------
// Cases.

/// `check` succeeds on a working store.
pub async fn case_check_succeeds(store: &DynChatIndexStore) {
    store.check().await.expect("check on a working store");
}

/// A created chat is returned as created and read back equal, with and
/// without a title.
pub async fn case_create_then_get(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let titled = NewChat {
        id: chat_id("incident-42"),
        title: Some(ChatTitle::new("Інцидент №42 — диск 🔥").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(0),
    };
    let expected = Chat {
        id: titled.id.clone(),
        title: titled.title.clone(),
        node: fx.other_node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(0),
        message_count: 0,
    };
    let created = store.create_chat(titled).await.expect("create_chat");
    assert_eq!(created, expected, "create_chat returns the new chat");
    assert_eq!(get(store, &expected.id).await, Some(expected.clone()));

    let plain = fx.new_chat("ops:plain.chat_1", fx.at(5));
    let created = store.create_chat(plain.clone()).await.expect("create_chat");
    assert_eq!(created, plain.clone().into_chat());
    assert_eq!(get(store, &plain.id).await, Some(plain.into_chat()));
    assert_eq!(
        get(store, &expected.id).await,
        Some(expected),
        "creating another chat leaves the first as it was"
    );
}

/// Looking up an id nobody created gives `None`, including ids that are
/// prefixes or extensions of existing ones.
pub async fn case_get_missing_chat_is_none(store: &DynChatIndexStore) {
    let fx = Fx::new();
    assert_eq!(get(store, &chat_id("nobody")).await, None);
    store
        .create_chat(fx.new_chat("ops", fx.at(0)))
        .await
        .expect("create_chat");
    for id in ["op", "ops:1", "OPS", "ops-"] {
        assert_eq!(
            get(store, &chat_id(id)).await,
            None,
            "{id:?} was never created"
        );
    }
}

/// Creating an existing id fails with `Conflict` naming it and changes
/// nothing, whether the chat was created directly or by an append.
pub async fn case_create_existing_id_conflicts(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let first = NewChat {
        title: Some(ChatTitle::new("first").expect("valid title")),
        ..fx.new_chat("dup", fx.at(0))
    };
    let original = store.create_chat(first).await.expect("create_chat");
    let second = NewChat {
        id: chat_id("dup"),
        title: Some(ChatTitle::new("second").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(10),
    };
    match store.create_chat(second).await {
        Err(ChatIndexError::Conflict { id }) => assert_eq!(id.as_str(), "dup"),
        other => panic!("expected Conflict for an existing id, got {other:?}"),
    }
    assert_eq!(get(store, &chat_id("dup")).await, Some(original));

    let appended_id = chat_id("by-append");
    let chat = append(
        store,
        fx.new_chat("by-append", fx.at(0)),
        &fx.exchange(&appended_id, fx.at(1)),
    )
    .await;
    match store.create_chat(fx.new_chat("by-append", fx.at(20))).await {
        Err(ChatIndexError::Conflict { id }) => assert_eq!(id, appended_id),
        other => panic!("expected Conflict for a chat created by append, got {other:?}"),
    }
    assert_eq!(get(store, &appended_id).await, Some(chat));
    assert_eq!(all_chats(store).await.len(), 2);
}

/// Many simultaneous creates of one id: exactly one succeeds, every other
/// gets `Conflict`, and the stored chat is the winner's.
pub async fn case_concurrent_creates_of_one_id_admit_exactly_one(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let results = in_parallel(20, |i| {
        let new_chat = NewChat {
            title: Some(ChatTitle::new(format!("contender {i}")).expect("valid title")),
            ..fx.new_chat("contested", fx.at(i64::try_from(i).expect("small")))
        };
        store.create_chat(new_chat)
    });
    let mut winners = Vec::new();
    for result in results {
        match result {
            Ok(chat) => winners.push(chat),
            Err(ChatIndexError::Conflict { id }) => assert_eq!(id.as_str(), "contested"),
            Err(other) => panic!("a losing create must be Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one create may succeed: {winners:?}"
    );
    assert_eq!(
        get(store, &chat_id("contested")).await.as_ref(),
        winners.first()
    );
    assert_eq!(chat_ids(&all_chats(store).await), strs(&["contested"]));
}

/// An empty store lists no chats, and says so with no cursor.
pub async fn case_empty_store_lists_no_chats(store: &DynChatIndexStore) {
    for size in [1, 50, 200] {
        let page = store
            .list_chats(&request(size, None))
            .await
            .expect("list_chats");
        assert!(page.items.is_empty(), "no chats were created");
        assert_eq!(page.next, None);
    }
}

/// Chats come most recently active first; an append moves its chat to the
/// front, and the listed chats equal what `get_chat` returns.
pub async fn case_chats_are_listed_by_activity_and_append_moves_to_front(
    store: &DynChatIndexStore,
) {
    let fx = Fx::new();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let at = fx.at(i64::try_from(i).expect("small"));
        store
            .create_chat(fx.new_chat(id, at))
            .await
            .expect("create_chat");
    }
    assert_sequence(
        &chat_ids(&all_chats(store).await),
        &strs(&["c", "b", "a"]),
        "newest creation first",
    );

    let moved = append(
        store,
        fx.new_chat("a", fx.at(0)),
        &fx.exchange(&chat_id("a"), fx.at(10)),
    )
    .await;
    assert_eq!(moved.updated_at, fx.at(10));
    let listed = all_chats(store).await;
    assert_sequence(
        &chat_ids(&listed),
        &strs(&["a", "c", "b"]),
        "append moves a chat to the front",
    );
    assert_eq!(listed.first(), Some(&moved));

    append(
        store,
        fx.new_chat("b", fx.at(0)),
        &fx.exchange(&chat_id("b"), fx.at(20)),
    )
    .await;
    let listed = all_chats(store).await;
    assert_sequence(
        &chat_ids(&listed),
        &strs(&["b", "a", "c"]),
        "the latest append leads",
    );
    for chat in &listed {
        assert_eq!(
            get(store, &chat.id).await.as_ref(),
            Some(chat),
            "list and get agree"
        );
    }
}

/// An append to a missing chat creates it from `new_chat` in the same step.
pub async fn case_append_creates_missing_chat_from_new_chat(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let new_chat = NewChat {
        id: chat_id("fresh"),
        title: Some(ChatTitle::new("Fresh").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(0),
    };
    let exchange = fx.exchange_with(&new_chat.id, fresh_ids(), (fx.at(1), fx.at(2)));
    let chat = append(store, new_chat.clone(), &exchange).await;
    let expected = Chat {
        id: new_chat.id.clone(),
        title: new_chat.title.clone(),
        node: fx.other_node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(2),
        message_count: 2,
    };
    assert_eq!(chat, expected);
    assert_eq!(get(store, &new_chat.id).await, Some(expected));
    assert_eq!(
        all_messages(store, &new_chat.id).await,
        vec![exchange.agent.clone(), exchange.operator.clone()],
        "both messages, newest first, exactly as given"
    );
}

/// An append to an existing chat ignores `new_chat` entirely.
pub async fn case_append_ignores_new_chat_for_existing_chat(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let original = NewChat {
        title: Some(ChatTitle::new("Original").expect("valid title")),
        ..fx.new_chat("existing", fx.at(0))
    };
    store.create_chat(original).await.expect("create_chat");
    let other = NewChat {
        id: chat_id("existing"),
        title: Some(ChatTitle::new("Other").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(5),
    };
    let chat = append(store, other, &fx.exchange(&chat_id("existing"), fx.at(7))).await;
    let expected = Chat {
        id: chat_id("existing"),
        title: Some(ChatTitle::new("Original").expect("valid title")),
        node: fx.node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(7),
        message_count: 2,
    };
    assert_eq!(chat, expected);
    assert_eq!(get(store, &chat_id("existing")).await, Some(expected));
}

/// Each append adds two to the count; `updated_at` becomes the later of its
/// current value and the agent message's time, never going back.
pub async fn case_append_counts_and_updated_at_follows_max_rule(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("counted");
    store
        .create_chat(fx.new_chat("counted", fx.at(100)))
        .await
        .expect("create_chat");
    let mut stored = Vec::new();
    // (agent time, expected updated_at, expected count)
    let steps = [
        (200, 200, 2),
        (150, 200, 4),
        (200, 200, 6),
        (50, 200, 8),
        (201, 201, 10),
    ];
    for (agent_ms, updated_ms, count) in steps {
        let exchange = fx.exchange_with(&id, fresh_ids(), (fx.at(agent_ms - 1), fx.at(agent_ms)));
        let chat = append(store, fx.new_chat("counted", fx.at(100)), &exchange).await;
        assert_eq!(chat.updated_at, fx.at(updated_ms), "agent at +{agent_ms}ms");
        assert_eq!(chat.message_count, count, "agent at +{agent_ms}ms");
        assert_eq!(chat.created_at, fx.at(100));
        assert_eq!(get(store, &id).await, Some(chat));
        stored.extend([exchange.operator, exchange.agent]);
    }
    let expected = expected_order(stored.iter().map(|m| (m.ts, m.id.to_string())).collect());
    assert_sequence(
        &message_ids(&all_messages(store, &id).await),
        &expected,
        "messages of older times sort by their own time, not by arrival",
    );

    // A chat created by an append whose reply predates `created_at` keeps
    // `created_at` as its activity time.
    let late = chat_id("late");
    let exchange = fx.exchange_with(&late, fresh_ids(), (fx.at(300), fx.at(400)));
    let chat = append(store, fx.new_chat("late", fx.at(500)), &exchange).await;
    assert_eq!(chat.updated_at, fx.at(500));
    assert_eq!(chat.message_count, 2);
}

/// Appending an exchange whose operator message id is stored changes
/// nothing and returns the chat as it is.
pub async fn case_append_is_idempotent_on_operator_message_id(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("retried");
    let first = fx.exchange_with(&id, fresh_ids(), (fx.at(1), fx.at(2)));
    let after_first = append(store, fx.new_chat("retried", fx.at(0)), &first).await;
    let replayed = append(store, fx.new_chat("retried", fx.at(0)), &first).await;
    assert_eq!(replayed, after_first, "a replay returns the chat unchanged");
    assert_eq!(replayed.message_count, 2);
    assert_eq!(
        all_messages(store, &id).await,
        vec![first.agent.clone(), first.operator.clone()],
        "a replay stores no second copy"
    );

    let second = fx.exchange_with(&id, fresh_ids(), (fx.at(3), fx.at(4)));
    let after_second = append(store, fx.new_chat("retried", fx.at(0)), &second).await;
    assert_eq!(after_second.message_count, 4);
    let messages = all_messages(store, &id).await;

    // Same operator message id, everything else different: still a replay,
    // and it returns the chat as it is now.
    let mut variant = fx.exchange_with(
        &id,
        (first.operator.id, MessageId::generate()),
        (fx.at(9), fx.at(9)),
    );
    variant.agent.text = "a different reply".to_owned();
    let other_new_chat = NewChat {
        title: Some(ChatTitle::new("ignored").expect("valid title")),
        ..fx.new_chat("retried", fx.at(8))
    };
    let replayed = append(store, other_new_chat, &variant).await;
    assert_eq!(replayed, after_second);
    assert_eq!(get(store, &id).await, Some(after_second));
    assert_eq!(all_messages(store, &id).await, messages, "nothing changed");
}

/// Exchanges that cannot be right are refused with `Backend`, and nothing of
/// them is stored.
pub async fn case_append_rejects_inconsistent_exchange(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let (one, two) = (chat_id("one"), chat_id("two"));

    let mut split = fx.exchange(&one, fx.at(1));
    split.agent.chat_id = two.clone();
    let result = store
        .append_exchange(fx.new_chat("one", fx.at(0)), &split)
        .await;
    assert_backend_error(result, "messages in different chats");

    let result = store
        .append_exchange(fx.new_chat("two", fx.at(0)), &fx.exchange(&one, fx.at(1)))
        .await;
    assert_backend_error(result, "new_chat naming another chat");

    let mut swapped = fx.exchange(&one, fx.at(1));
    swapped.operator.role = Role::Agent;
    swapped.agent.role = Role::Operator;
    let result = store
        .append_exchange(fx.new_chat("one", fx.at(0)), &swapped)
        .await;
    assert_backend_error(result, "swapped roles");

    let shared = MessageId::generate();
    let same_id = fx.exchange_with(&one, (shared, shared), (fx.at(1), fx.at(1)));
    let result = store
        .append_exchange(fx.new_chat("one", fx.at(0)), &same_id)
        .await;
    assert_backend_error(result, "one id for both messages");

    assert_eq!(get(store, &one).await, None, "no chat was created");
    assert_eq!(get(store, &two).await, None, "no chat was created");
    assert!(all_chats(store).await.is_empty());
}

/// Message ids are unique across the store: an exchange that reuses a
/// stored id other than as a replay is refused with `Backend`, all or
/// nothing.
pub async fn case_append_rejects_reused_message_ids_atomically(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let a = chat_id("a");
    let stored = fx.exchange(&a, fx.at(1));
    let chat_a = append(store, fx.new_chat("a", fx.at(0)), &stored).await;
    let messages_a = all_messages(store, &a).await;

    // The operator id is stored, but in chat `a`: not a replay for `b`.
    let b = chat_id("b");
    let foreign = fx.exchange_with(
        &b,
        (stored.operator.id, MessageId::generate()),
        (fx.at(2), fx.at(2)),
    );
    let result = store
        .append_exchange(fx.new_chat("b", fx.at(0)), &foreign)
        .await;
    assert_backend_error(result, "operator id stored in another chat");
    assert_eq!(get(store, &b).await, None, "b must not be created");

    // A new operator id with a taken agent id: the operator message must not
    // be stored either.
    let new_operator = MessageId::generate();
    let taken = fx.exchange_with(&a, (new_operator, stored.agent.id), (fx.at(3), fx.at(3)));
    let result = store
        .append_exchange(fx.new_chat("a", fx.at(0)), &taken)
        .await;
    assert_backend_error(result, "agent id already stored");

    let c = chat_id("c");
    let taken = fx.exchange_with(
        &c,
        (MessageId::generate(), stored.operator.id),
        (fx.at(3), fx.at(3)),
    );
    let result = store
        .append_exchange(fx.new_chat("c", fx.at(0)), &taken)
        .await;
    assert_backend_error(result, "agent id stored as another chat's operator id");
    assert_eq!(get(store, &c).await, None, "c must not be created");

    assert_eq!(get(store, &a).await, Some(chat_a.clone()), "a is unchanged");
    assert_eq!(
        all_messages(store, &a).await,
        messages_a,
        "a's messages are unchanged"
    );
    assert_eq!(chat_ids(&all_chats(store).await), strs(&["a"]));

    // The refused operator id was not stored: it is accepted afterwards.
    let retry = fx.exchange_with(
        &a,
        (new_operator, MessageId::generate()),
        (fx.at(4), fx.at(4)),
    );
    let chat = append(store, fx.new_chat("a", fx.at(0)), &retry).await;
    assert_eq!(chat.message_count, chat_a.message_count + 2);
}

/// Listing the messages of a chat that does not exist is `NotFound`, with or
/// without a cursor.
pub async fn case_list_messages_of_missing_chat_is_not_found(store: &DynChatIndexStore) {
    let fx = Fx::new();
    store
        .create_chat(fx.new_chat("present", fx.at(0)))
        .await
        .expect("create_chat");
    let missing = chat_id("absent");
    for after in [
        None,
        Some(Cursor::new(fx.at(0), MessageId::generate().to_string())),
    ] {
        match store.list_messages(&missing, &request(10, after)).await {
            Err(ChatIndexError::NotFound { id }) => assert_eq!(id, missing),
            other => panic!("expected NotFound for a missing chat, got {other:?}"),
        }
    }
}

/// A chat without messages has an empty first page and no cursor; so has any
/// page after a cursor past the last message.
pub async fn case_list_messages_of_empty_chat_is_empty(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("quiet");
    store
        .create_chat(fx.new_chat("quiet", fx.at(0)))
        .await
        .expect("create_chat");
    for after in [
        None,
        Some(Cursor::new(fx.at(0), MessageId::generate().to_string())),
    ] {
        let page = store
            .list_messages(&id, &request(50, after))
            .await
            .expect("list_messages of an empty chat");
        assert!(page.items.is_empty());
        assert_eq!(page.next, None);
    }

    let exchange = fx.exchange(&id, fx.at(1));
    append(store, fx.new_chat("quiet", fx.at(0)), &exchange).await;
    let oldest = [&exchange.operator, &exchange.agent]
        .into_iter()
        .min_by_key(|m| (m.ts, m.id.to_string()))
        .map(Message::cursor);
    let page = store
        .list_messages(&id, &request(50, oldest))
        .await
        .expect("list_messages after the oldest message");
    assert!(
        page.items.is_empty(),
        "nothing is older than the oldest message"
    );
    assert_eq!(page.next, None);
}

/// A last page that happens to be full has no cursor: the store looks ahead
/// instead of sending the client to an empty page.
pub async fn case_full_last_page_has_no_cursor(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("four");
    for i in 0..2 {
        append(
            store,
            fx.new_chat("four", fx.at(0)),
            &fx.exchange(&id, fx.at(i)),
        )
        .await;
    }
    let page = store
        .list_messages(&id, &request(4, None))
        .await
        .expect("list");
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.next, None, "four messages fit a page of four exactly");

    let first = store
        .list_messages(&id, &request(2, None))
        .await
        .expect("list");
    assert_eq!(first.items.len(), 2);
    let next = first.next.clone().expect("a second page exists");
    let second = store
        .list_messages(&id, &request(2, Some(next)))
        .await
        .expect("list");
    assert_eq!(second.items.len(), 2);
    assert_eq!(second.next, None, "the full second page is the last");

    for name in ["w", "x", "y"] {
        store
            .create_chat(fx.new_chat(name, fx.at(-1)))
            .await
            .expect("create_chat");
    }
    let page = store
        .list_chats(&request(2, None))
        .await
        .expect("list_chats");
    let next = page.next.clone().expect("a second page of chats exists");
    let last = store
        .list_chats(&request(2, Some(next)))
        .await
        .expect("list_chats");
    assert_eq!(last.items.len(), 2);
    assert_eq!(last.next, None, "the full second page of chats is the last");
}

/// Every chat's list holds exactly its own messages, even when the chats
/// share timestamps and their ids are prefixes of each other.
pub async fn case_messages_of_different_chats_never_mix(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let names = ["ops", "ops:1", "ops-1", "op"];
    let mut expected: Vec<Vec<(Timestamp, String)>> = vec![Vec::new(); names.len()];
    for round in 0..6 {
        for (i, name) in names.iter().enumerate() {
            let id = chat_id(name);
            let exchange = fx.exchange(&id, fx.at(round % 3));
            append(store, fx.new_chat(name, fx.at(0)), &exchange).await;
            for m in [&exchange.operator, &exchange.agent] {
                expected[i].push((m.ts, m.id.to_string()));
            }
        }
    }
    for (name, keys) in names.iter().zip(expected) {
        let id = chat_id(name);
        let expected = expected_order(keys);
        for size in [1, 3, 200] {
            let messages = walk_messages(store, &id, size, 100).await;
            assert!(
                messages.iter().all(|m| m.chat_id == id),
                "chat {name:?} listed a message of another chat"
            );
            assert_sequence(
                &message_ids(&messages),
                &expected,
                &format!("messages of {name:?}"),
            );
        }
        let chat = get(store, &id).await.expect("chat exists");
        assert_eq!(chat.message_count, 12);
    }
}

/// Message text comes back byte for byte: any Unicode, line breaks, tabs,
/// surrounding whitespace, long text; the reply may even be empty or hold
/// control characters.
pub async fn case_text_round_trips_byte_for_byte(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("unicode");
    let texts = [
        ("plain", "ok"),
        ("two\nlines\r\nand\ttabs  ", "  leading and trailing  \n"),
        (
            "Привіт, світе! 你好 🌍 👩‍👩‍👧 مرحبا e\u{301} \u{200B}\u{FEFF}",
            "ç'est «ça» — ∑ ∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        ),
        ("quotes ' \" ` \\ and 100% _wild_ [cards]", ""),
        ("nul in the reply", "before\u{0}after \u{1b}[31m red"),
    ];
    let long = "й".repeat(16_000);
    let mut exchanges = Vec::new();
    for (i, (operator, agent)) in texts
        .iter()
        .copied()
        .chain([(long.as_str(), long.as_str())])
        .enumerate()
    {
        let mut exchange = fx.exchange(&id, fx.at(i64::try_from(i).expect("small")));
        exchange.operator.text = operator.to_owned();
        exchange.agent.text = agent.to_owned();
        append(store, fx.new_chat("unicode", fx.at(0)), &exchange).await;
        exchanges.push(exchange);
    }
    let listed = all_messages(store, &id).await;
    let mut expected: Vec<Message> = exchanges
        .into_iter()
        .flat_map(|e| [e.operator, e.agent])
        .collect();
    expected.sort_by_key(|m| std::cmp::Reverse((m.ts, m.id.to_string())));
    assert_eq!(listed.len(), expected.len());
    for (got, want) in listed.iter().zip(&expected) {
        assert_eq!(
            got.text.as_bytes(),
            want.text.as_bytes(),
            "text of message {}",
            want.id
        );
        assert_eq!(got, want, "every field of message {}", want.id);
    }
}

/// 300 chats with one timestamp: every page size walks them exactly once,
/// in id order (descending, bytewise).
pub async fn case_frozen_clock_chats_walk_exactly_once(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let now = fx.clock.now();
    // Mixed forms, so that byte order differs from numeric and from
    // case-insensitive order: '-' < '.' < digits < ':' < upper < '_' < lower.
    let mut ids: Vec<String> = (0..300)
        .map(|i| match i % 6 {
            0 => format!("c{i}"),
            1 => format!("C-{i}"),
            2 => format!("{i}"),
            3 => format!("c.{i}"),
            4 => format!("c:{i}"),
            _ => format!("c_{i}"),
        })
        .collect();
    shuffle(&mut ids, 0x5eed_c4a7);
    for id in &ids {
        store
            .create_chat(fx.new_chat(id, now))
            .await
            .expect("create_chat");
    }
    let expected = expected_order(ids.iter().map(|id| (now, id.clone())).collect());
    for size in WALK_SIZES {
        let chats = walk_chats(store, size, 400).await;
        assert!(chats.iter().all(|c| c.updated_at == now));
        assert_sequence(
            &chat_ids(&chats),
            &expected,
            &format!("chats, page size {size}"),
        );
    }
}

/// 600 messages in one chat with one timestamp: every page size walks them
/// exactly once, in id order, whatever order they were stored in.
pub async fn case_frozen_clock_messages_walk_exactly_once(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let now = fx.clock.now();
    let id = chat_id("frozen");
    let ids = shuffled_ids(600, 0xf00d);
    for pair in ids.chunks_exact(2) {
        let exchange = fx.exchange_with(&id, (pair[0], pair[1]), (now, now));
        append(store, fx.new_chat("frozen", now), &exchange).await;
    }
    let chat = get(store, &id).await.expect("chat exists");
    assert_eq!(chat.message_count, 600);
    let expected = expected_order(ids.iter().map(|m| (now, m.to_string())).collect());
    for size in WALK_SIZES {
        let messages = walk_messages(store, &id, size, 700).await;
        assert_sequence(
            &message_ids(&messages),
            &expected,
            &format!("messages, page size {size}"),
        );
    }
}

/// Several timestamps, each shared by several items, stored in shuffled
/// order (including the earliest and latest representable times): walks
/// follow `(ts, id)` descending.
pub async fn case_mixed_timestamps_walk_in_order(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let times = [
        Timestamp::MIN,
        fx.at(0),
        fx.at(1),
        fx.at(1000),
        Timestamp::MAX,
    ];
    let mut chats: Vec<(Timestamp, String)> = times
        .iter()
        .enumerate()
        .flat_map(|(t, &ts)| (0..7).map(move |i| (ts, format!("t{t}-{}", (b'a' + i) as char))))
        .collect();
    // Some ids recur under several times, so that a tie on id alone is wrong.
    chats.extend(
        times
            .iter()
            .map(|&ts| (ts, format!("same-{}", ts.as_unix_millis()))),
    );
    shuffle(&mut chats, 42);
    for (ts, id) in &chats {
        store
            .create_chat(fx.new_chat(id, *ts))
            .await
            .expect("create_chat");
    }
    // Two appends move chats between time groups.
    let mut model: Vec<(Timestamp, String)> = chats.clone();
    for (name, ts) in [("t0-c", fx.at(1)), ("t2-a", fx.at(1000))] {
        let id = chat_id(name);
        append(store, fx.new_chat(name, ts), &fx.exchange(&id, ts)).await;
        for entry in model.iter_mut().filter(|(_, n)| n == name) {
            entry.0 = entry.0.max(ts);
        }
    }
    let expected = expected_order(model);
    for size in WALK_SIZES {
        let listed = walk_chats(store, size, 100).await;
        assert_sequence(
            &chat_ids(&listed),
            &expected,
            &format!("chats, page size {size}"),
        );
    }

    let id = chat_id("mixed");
    let message_times = [fx.at(0), fx.at(1), fx.at(2), fx.at(1000)];
    let ids = shuffled_ids(80, 7);
    let mut keys = Vec::new();
    for (i, pair) in ids.chunks_exact(2).enumerate() {
        let operator_ts = message_times[i % message_times.len()];
        let agent_ts = message_times[(i / 3) % message_times.len()];
        let exchange = fx.exchange_with(&id, (pair[0], pair[1]), (operator_ts, agent_ts));
        append(store, fx.new_chat("mixed", fx.at(0)), &exchange).await;
        keys.push((operator_ts, pair[0].to_string()));
        keys.push((agent_ts, pair[1].to_string()));
    }
    let expected = expected_order(keys);
    for size in WALK_SIZES {
        let messages = walk_messages(store, &id, size, 100).await;
        assert_sequence(
            &message_ids(&messages),
            &expected,
            &format!("messages, page size {size}"),
        );
    }
}

/// A cursor is a position, not an item: one built by hand between items,
/// before all or after all, with an id no item has (or could have), starts
/// right after that position.
pub async fn case_cursor_between_items_starts_right_after_it(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let (t, t1) = (fx.at(0), fx.at(1));
    for (id, ts) in [("b", t), ("d", t), ("f", t), ("a", t1), ("c", t1)] {
        store
            .create_chat(fx.new_chat(id, ts))
            .await
            .expect("create_chat");
    }
    // Full order: (t1,c) (t1,a) (t,f) (t,d) (t,b).
    let cases: [(Timestamp, &str, &[&str]); 9] = [
        (t1, "b", &["a", "f", "d", "b"]),
        (t, "e", &["d", "b"]),
        (t, "d\u{e9}", &["d", "b"]),
        (t, "zzz", &["f", "d", "b"]),
        (t, "d", &["b"]),
        (t1, "", &["f", "d", "b"]),
        (fx.at(2), "a", &["c", "a", "f", "d", "b"]),
        (fx.at(-1), "zzz", &[]),
        (t, "b", &[]),
    ];
    for (ts, id, expected) in cases {
        let page = store
            .list_chats(&request(10, Some(Cursor::new(ts, id))))
            .await
            .expect("list_chats");
        assert_sequence(
            &chat_ids(&page.items),
            &strs(expected),
            &format!("chats after ({ts:?}, {id:?})"),
        );
        assert_eq!(page.next, None);
    }
    let page = store
        .list_chats(&request(1, Some(Cursor::new(t1, "b"))))
        .await
        .expect("list_chats");
    assert_sequence(
        &chat_ids(&page.items),
        &strs(&["a"]),
        "one chat after (t1, b)",
    );
    assert_eq!(page.next, Some(Cursor::new(t1, "a")));

    let id = chat_id("positions");
    let mut keys = Vec::new();
    for (ts, n) in [(t, 4), (t1, 2)] {
        for _ in 0..n {
            let exchange = fx.exchange(&id, ts);
            append(store, fx.new_chat("positions", t), &exchange).await;
            keys.extend([
                (ts, exchange.operator.id.to_string()),
                (ts, exchange.agent.id.to_string()),
            ]);
        }
    }
    let all = expected_order(keys);
    let older_than = |k: usize| all[k..].to_vec();
    let list_after = |ts: Timestamp, id_text: String| {
        let chat = id.clone();
        async move {
            let page = store
                .list_messages(&chat, &request(200, Some(Cursor::new(ts, id_text))))
                .await
                .expect("list_messages");
            message_ids(&page.items)
        }
    };
    // Ids are 36 characters; appending one makes a position just above an
    // item and still below the next larger id.
    for k in [2, 5, 7, 11] {
        let ts = if k < 4 { t1 } else { t };
        let got = list_after(ts, format!("{}0", all[k])).await;
        assert_sequence(
            &got,
            &older_than(k),
            &format!("messages after a point just above item {k}"),
        );
        let got = list_after(ts, all[k].clone()).await;
        assert_sequence(
            &got,
            &older_than(k + 1),
            &format!("messages after item {k}"),
        );
    }
    // 'g' sorts after every hexadecimal digit, '-' before all of them.
    assert_sequence(
        &list_after(t, "g".to_owned()).await,
        &older_than(4),
        "after (t, g)",
    );
    assert_sequence(
        &list_after(t1, String::new()).await,
        &older_than(4),
        "after (t1, \"\")",
    );
    assert_sequence(&list_after(t, "-".to_owned()).await, &[], "after (t, -)");
    assert_sequence(
        &list_after(fx.at(5), "-".to_owned()).await,
        &all,
        "after a later time",
    );
}

/// A chat that moves after its position was handed out as a cursor does not
/// invalidate the cursor: the next page holds the chats after that position
/// in the list as it is now.
pub async fn case_cursor_of_moved_chat_stays_valid(store: &DynChatIndexStore) {
    let fx = Fx::new();
    for (i, id) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
        let at = fx.at(i64::try_from(i).expect("small"));
        store
            .create_chat(fx.new_chat(id, at))
            .await
            .expect("create_chat");
    }
    let first = store
        .list_chats(&request(2, None))
        .await
        .expect("list_chats");
    assert_sequence(&chat_ids(&first.items), &strs(&["f", "e"]), "first page");
    let cursor = first.next.clone().expect("more pages");

    for name in ["e", "b"] {
        let id = chat_id(name);
        append(
            store,
            fx.new_chat(name, fx.at(0)),
            &fx.exchange(&id, fx.at(100)),
        )
        .await;
    }
    let rest = store
        .list_chats(&request(10, Some(cursor)))
        .await
        .expect("a cursor whose chat moved is still valid");
    assert_sequence(
        &chat_ids(&rest.items),
        &strs(&["d", "c", "a"]),
        "the rest, as it is now",
    );
    assert_sequence(
        &chat_ids(&all_chats(store).await),
        &strs(&["e", "b", "f", "d", "c", "a"]),
        "the whole list",
    );
}

/// 50 simultaneous appends of distinct exchanges to one chat that does not
/// exist yet: the chat is created once, every message is stored, and each
/// append saw its own count (2, 4, ... 100, each once).
pub async fn case_concurrent_appends_to_one_chat_are_all_stored(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("busy");
    let exchanges: Vec<Exchange> = (0..50).map(|i| fx.exchange(&id, fx.at(i % 5))).collect();
    let results = in_parallel(exchanges.len(), |i| {
        store.append_exchange(fx.new_chat("busy", fx.at(0)), &exchanges[i])
    });
    let mut counts: Vec<u64> = results
        .into_iter()
        .map(|r| r.expect("concurrent append_exchange").message_count)
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=50).map(|n| n * 2).collect::<Vec<u64>>(),
        "each append must see the count right after its own write"
    );
    let chat = get(store, &id).await.expect("chat exists");
    assert_eq!(chat.message_count, 100);
    assert_eq!(chat.created_at, fx.at(0));
    assert_eq!(chat.updated_at, fx.at(4));
    let expected = expected_order(
        exchanges
            .iter()
            .flat_map(|e| [&e.operator, &e.agent])
            .map(|m| (m.ts, m.id.to_string()))
            .collect(),
    );
    assert_sequence(
        &message_ids(&all_messages(store, &id).await),
        &expected,
        "all 100 messages",
    );
    assert_eq!(chat_ids(&all_chats(store).await), strs(&["busy"]));
}

/// 20 simultaneous appends of one exchange (a retried write racing itself):
/// one copy is stored and every call returns the chat with it.
pub async fn case_concurrent_replays_store_one_copy(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("raced");
    let exchange = fx.exchange_with(&id, fresh_ids(), (fx.at(1), fx.at(2)));
    let results = in_parallel(20, |_| {
        store.append_exchange(fx.new_chat("raced", fx.at(0)), &exchange)
    });
    for result in results {
        let chat = result.expect("concurrent replay");
        assert_eq!(chat.message_count, 2);
        assert_eq!(chat.updated_at, fx.at(2));
    }
    assert_eq!(
        all_messages(store, &id).await,
        vec![exchange.agent.clone(), exchange.operator.clone()]
    );
    assert_eq!(get(store, &id).await.map(|c| c.message_count), Some(2));
}

// ---------------------------------------------------------------------------
// Import.

/// `n` messages of `chat` with shuffled ids, both roles, and times spread
/// over four values (so many share one), as another store could hold them.
fn import_messages(fx: &Fx, chat: &ChatId, n: usize, seed: u64) -> Vec<Message> {
    shuffled_ids(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let role = if i % 3 == 0 {
                Role::Agent
            } else {
                Role::Operator
            };
            let offset = i64::try_from(i % 4).expect("small") * 10;
            let mut m = fx.message(chat, id, role, fx.at(offset), &format!("imported {i}\n✓"));
            if i % 5 == 0 {
                m.node = fx.other_node.clone();
                m.operator_id = OperatorId::new("bob.ops-2").expect("valid operator");
            }
            m
        })
        .collect()
}

async fn import(store: &DynChatIndexStore, chat: &Chat, messages: &[Message]) -> Imported {
    store
        .import_chat(chat, messages)
        .await
        .expect("import_chat")
}

/// Checks that the store holds `chat` exactly, with exactly `messages`,
/// walked with every page size.
async fn assert_chat_holds(store: &DynChatIndexStore, chat: &Chat, messages: &[Message]) {
    assert_eq!(
        get(store, &chat.id).await.as_ref(),
        Some(chat),
        "the chat record"
    );
    let mut expected = messages.to_vec();
    expected.sort_by_key(|m| std::cmp::Reverse((m.ts, m.id.to_string())));
    let expected_ids = message_ids(&expected);
    for size in WALK_SIZES {
        let walked = walk_messages(store, &chat.id, size, 1000).await;
        assert_sequence(
            &message_ids(&walked),
            &expected_ids,
            &format!("messages of {}, page size {size}", chat.id),
        );
    }
    assert_eq!(
        all_messages(store, &chat.id).await,
        expected,
        "every field of every message of {}",
        chat.id
    );
}

/// An import stores the chat with the given title, node and times, and
/// every message exactly as given; each batch adds its messages to the
/// count, so the whole chat ends with the source's count. An empty batch
/// creates the chat alone.
pub async fn case_import_stores_chats_and_messages_as_given(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("imported:chat.1");
    let messages = import_messages(&fx, &id, 60, 0x1234);
    let chat = Chat {
        id: id.clone(),
        title: Some(ChatTitle::new("Imported — from SQLite").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(-100),
        updated_at: fx.at(30),
        message_count: 60,
    };
    for (n, batch) in messages.chunks(25).enumerate() {
        let imported = import(store, &chat, batch).await;
        let so_far = u64::try_from(messages.len().min((n + 1) * 25)).expect("small");
        assert_eq!(imported.created, n == 0, "batch {n}");
        assert_eq!(imported.inserted, batch.len() as u64, "batch {n}");
        assert_eq!(imported.present, 0, "batch {n}");
        assert_eq!(
            imported.chat,
            Chat {
                message_count: so_far,
                ..chat.clone()
            },
            "batch {n}"
        );
    }
    assert_chat_holds(store, &chat, &messages).await;

    // No messages, an older activity time, no title.
    let empty = Chat {
        id: chat_id("imported-empty"),
        title: None,
        node: fx.node.clone(),
        created_at: fx.at(-500),
        updated_at: fx.at(-400),
        message_count: 0,
    };
    let imported = import(store, &empty, &[]).await;
    assert!(imported.created);
    assert_eq!((imported.inserted, imported.present), (0, 0));
    assert_eq!(imported.chat, empty);
    assert_chat_holds(store, &empty, &[]).await;
    assert_eq!(
        all_chats(store).await,
        vec![chat, empty],
        "listed by the imported activity times"
    );
}

/// Importing batches again, overlapping, in another order, or after a
/// stop half-way through a chat, never stores or counts a message twice:
/// the end state is the one of importing each message once.
pub async fn case_import_repeated_or_resumed_leaves_the_same_result(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("resumed");
    let messages = import_messages(&fx, &id, 60, 0xbeef);
    let chat = Chat {
        id: id.clone(),
        title: None,
        node: fx.node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(40),
        message_count: 60,
    };
    // (batch, expected inserted, expected present)
    let steps: [(&[Message], u64, u64); 6] = [
        (&messages[0..20], 20, 0),
        // A retry of a batch whose answer was lost.
        (&messages[0..20], 0, 20),
        // A resumed run re-reading part of what it had done.
        (&messages[10..40], 20, 10),
        // Later batches first.
        (&messages[50..60], 10, 0),
        (&messages[..], 10, 50),
        // The whole migration again.
        (&messages[..], 0, 60),
    ];
    let mut count = 0;
    for (n, (batch, inserted, present)) in steps.into_iter().enumerate() {
        let imported = import(store, &chat, batch).await;
        count += inserted;
        assert_eq!(
            (imported.inserted, imported.present),
            (inserted, present),
            "step {n}"
        );
        assert_eq!(imported.created, n == 0, "step {n}");
        assert_eq!(imported.chat.message_count, count, "step {n}");
    }
    assert_chat_holds(store, &chat, &messages).await;
    let before = all_messages(store, &id).await;
    import(store, &chat, &messages).await;
    assert_eq!(all_messages(store, &id).await, before, "nothing changed");
    assert_eq!(all_chats(store).await, vec![chat]);
}

/// An import into a chat that exists keeps its title, node and creation
/// time, and moves its activity time only forward.
pub async fn case_import_into_existing_chat_keeps_it_and_takes_the_later_time(
    store: &DynChatIndexStore,
) {
    let fx = Fx::new();
    let original = NewChat {
        title: Some(ChatTitle::new("live").expect("valid title")),
        ..fx.new_chat("existing", fx.at(10))
    };
    store
        .create_chat(original.clone())
        .await
        .expect("create_chat");
    let id = original.id.clone();
    let messages = import_messages(&fx, &id, 8, 3);
    let source = Chat {
        id: id.clone(),
        title: Some(ChatTitle::new("source").expect("valid title")),
        node: fx.other_node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(5),
        message_count: 8,
    };
    let imported = import(store, &source, &messages[..4]).await;
    assert!(!imported.created);
    let expected = Chat {
        message_count: 4,
        ..original.clone().into_chat()
    };
    assert_eq!(imported.chat, expected, "an earlier time changes nothing");

    let later = Chat {
        updated_at: fx.at(70),
        ..source
    };
    let imported = import(store, &later, &messages[4..]).await;
    let expected = Chat {
        updated_at: fx.at(70),
        message_count: 8,
        ..original.into_chat()
    };
    assert_eq!(imported.chat, expected, "a later time is taken");
    assert_chat_holds(store, &expected, &messages).await;
    assert_eq!(all_chats(store).await, vec![expected]);
}

/// An imported chat is a chat like any other: appends count on from the
/// imported count, an exchange whose operator message was imported is a
/// replay, and creating it again conflicts.
pub async fn case_imported_chats_take_appends_replays_and_conflicts(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("migrated");
    let first = fx.exchange_with(&id, fresh_ids(), (fx.at(1), fx.at(2)));
    let chat = Chat {
        id: id.clone(),
        title: None,
        node: fx.node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(2),
        message_count: 2,
    };
    let messages = [first.operator.clone(), first.agent.clone()];
    assert_eq!(import(store, &chat, &messages).await.chat, chat);

    let replayed = append(store, fx.new_chat("migrated", fx.at(0)), &first).await;
    assert_eq!(replayed, chat, "an imported send is not stored again");

    let next = fx.exchange_with(&id, fresh_ids(), (fx.at(3), fx.at(4)));
    let appended = append(store, fx.new_chat("migrated", fx.at(0)), &next).await;
    assert_eq!(appended.message_count, 4);
    assert_eq!(appended.updated_at, fx.at(4));
    match store.create_chat(fx.new_chat("migrated", fx.at(9))).await {
        Err(ChatIndexError::Conflict { id: conflict }) => assert_eq!(conflict, id),
        other => panic!("expected Conflict for an imported chat, got {other:?}"),
    }

    // Importing the appended messages too (a migration run after the
    // switch) changes nothing.
    let all = [
        first.operator.clone(),
        first.agent.clone(),
        next.operator.clone(),
        next.agent.clone(),
    ];
    let imported = import(store, &chat, &all).await;
    assert_eq!((imported.inserted, imported.present), (0, 4));
    assert_eq!(imported.chat, appended);
    assert_chat_holds(store, &appended, &all).await;
}

/// Batches that cannot be right are refused with `Backend`, and nothing of
/// them is stored.
pub async fn case_import_rejects_inconsistent_batches_atomically(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("target");
    let chat = Chat {
        id: id.clone(),
        title: None,
        node: fx.node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(9),
        message_count: 0,
    };
    let messages = import_messages(&fx, &id, 6, 11);
    let refused = |result: crate::Result<Imported>, what: &str| {
        assert_backend_error(result.map(|i| i.chat), what);
    };

    let mut foreign_chat = messages.clone();
    foreign_chat[3].chat_id = chat_id("elsewhere");
    refused(
        store.import_chat(&chat, &foreign_chat).await,
        "a message of another chat",
    );

    let mut twice = messages.clone();
    twice[4].id = twice[1].id;
    refused(store.import_chat(&chat, &twice).await, "one id twice");

    let backwards = Chat {
        updated_at: fx.at(-1),
        ..chat.clone()
    };
    refused(
        store.import_chat(&backwards, &messages).await,
        "updated_at before created_at",
    );

    // One id of the batch is stored in another chat.
    let other = fx.exchange(&chat_id("other"), fx.at(1));
    let other_chat = append(store, fx.new_chat("other", fx.at(0)), &other).await;
    let mut taken = messages.clone();
    taken[5].id = other.agent.id;
    refused(
        store.import_chat(&chat, &taken).await,
        "an id stored in another chat",
    );

    assert_eq!(get(store, &id).await, None, "the chat was not created");
    assert_eq!(get(store, &other_chat.id).await, Some(other_chat.clone()));
    assert_eq!(all_chats(store).await, vec![other_chat]);

    // None of the refused batches' new ids was kept.
    let imported = import(store, &chat, &messages).await;
    assert_eq!((imported.inserted, imported.present), (6, 0));
    assert_chat_holds(
        store,
        &Chat {
            message_count: 6,
            ..chat
        },
        &messages,
    )
    .await;
}

/// Eight simultaneous imports of overlapping batches of one new chat: the
/// chat is created once and each message stored and counted once.
pub async fn case_concurrent_imports_store_each_message_once(store: &DynChatIndexStore) {
    let fx = Fx::new();
    let id = chat_id("parallel");
    let messages = import_messages(&fx, &id, 80, 99);
    let chat = Chat {
        id: id.clone(),
        title: None,
        node: fx.node.clone(),
        created_at: fx.at(0),
        updated_at: fx.at(30),
        message_count: 80,
    };
    let results = in_parallel(8, |i| {
        // Batch i covers messages 10i .. 10i + 30, wrapping around.
        let batch: Vec<Message> = (0..30)
            .map(|k| messages[(i * 10 + k) % messages.len()].clone())
            .collect();
        let chat = chat.clone();
        async move { store.import_chat(&chat, &batch).await }
    });
    let mut created = 0;
    let mut inserted = 0;
    for result in results {
        let imported = result.expect("concurrent import_chat");
        assert_eq!(imported.inserted + imported.present, 30);
        created += u64::from(imported.created);
        inserted += imported.inserted;
    }
    assert_eq!(created, 1, "exactly one import creates the chat");
    assert_eq!(
        inserted, 80,
        "each message is inserted by exactly one import"
    );
    assert_chat_holds(store, &chat, &messages).await;
}

/// For the backends' own unit tests: a chat titled `kept` on node `NODA1`,
/// and an exchange in it from operator `alice` with fresh ids, everything
/// at the time of a fresh frozen clock.
#[cfg(test)]
pub(crate) fn exchange_fixture(
    chat: &str,
    operator_text: &str,
    agent_text: &str,
) -> (NewChat, Exchange) {
    let fx = Fx::new();
    let now = fx.at(0);
    let new_chat = NewChat {
        title: Some(ChatTitle::new("kept").expect("valid title")),
        ..fx.new_chat(chat, now)
    };
    let (operator, agent) = fresh_ids();
    let exchange = Exchange {
        operator: fx.message(&new_chat.id, operator, Role::Operator, now, operator_text),
        agent: fx.message(&new_chat.id, agent, Role::Agent, now, agent_text),
    };
    (new_chat, exchange)
}

#[cfg(test)]
mod tests {
    /// Every `case_*` function must be listed in the macro, or a backend
    /// would silently not run it.
    #[test]
    fn macro_lists_every_case() {
        let defined = sofiia_testkit::assert_every_case_listed(
            include_str!("testing.rs"),
            "chat_index_store_tests!",
        );
        assert!(defined >= 20, "found only {defined} cases");
    }
}
