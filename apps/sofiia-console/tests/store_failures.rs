//! A chat index that fails mid-send: retried writes, a kept reply, and no
//! duplicated send.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use common::{ALICE, ConsoleBuilder, stub};
use sofiia_chat_index::{
    ChatIndexError, ChatIndexStore, Imported, MemoryChatIndex, Result as IndexResult,
};
use sofiia_core_domain::{Chat, ChatId, Exchange, Message, NewChat, Page, PageRequest};

/// A chat index whose next `failures` appends fail as unavailable: a test
/// double behind the trait, standing in for a Redis that times out.
#[derive(Debug)]
struct Flaky {
    inner: MemoryChatIndex,
    failures: Arc<AtomicUsize>,
    appends: Arc<AtomicUsize>,
}

#[async_trait]
impl ChatIndexStore for Flaky {
    async fn create_chat(&self, chat: NewChat) -> IndexResult<Chat> {
        self.inner.create_chat(chat).await
    }
    async fn get_chat(&self, id: &ChatId) -> IndexResult<Option<Chat>> {
        self.inner.get_chat(id).await
    }
    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> IndexResult<Chat> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(ChatIndexError::Unavailable {
                source: "timed out (simulated)".into(),
            });
        }
        self.inner.append_exchange(new_chat, exchange).await
    }
    async fn list_chats(&self, page: &PageRequest) -> IndexResult<Page<Chat>> {
        self.inner.list_chats(page).await
    }
    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> IndexResult<Page<Message>> {
        self.inner.list_messages(chat, page).await
    }
    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> IndexResult<Imported> {
        self.inner.import_chat(chat, messages).await
    }
    async fn check(&self) -> IndexResult<()> {
        self.inner.check().await
    }
}

fn flaky(failures: usize) -> (Arc<Flaky>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let failures = Arc::new(AtomicUsize::new(failures));
    let appends = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(Flaky {
        inner: MemoryChatIndex::new(),
        failures: failures.clone(),
        appends: appends.clone(),
    });
    (store, failures, appends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_briefly_unavailable_chat_index_is_retried_and_the_send_succeeds() {
    let node = stub("NODA1").await;
    let (store, _, appends) = flaky(2);
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .chat_index(store)
        .start()
        .await;
    let res = console.send_text("c", "flaky-key-01", "x").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        appends.load(Ordering::SeqCst),
        3,
        "two failed attempts, then one that worked"
    );
    assert_eq!(node.call_count(), 1);
    assert_eq!(
        console.get("/api/chats/c", ALICE).await.json()["message_count"],
        2
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_index_that_stays_down_is_503_and_keeps_the_reply_for_the_retry() {
    let node = stub("NODA1").await;
    let (store, failures, appends) = flaky(usize::MAX);
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .chat_index(store)
        .start()
        .await;
    let first = console.send_text("c", "flaky-key-02", "x").await;
    let p = first.problem(503);
    assert_eq!(p["type"], "urn:sofiia:problem:send-not-stored-yet");
    assert!(first.header("retry-after").is_some());
    console.get("/api/chats/c", ALICE).await.problem(404);

    // The node answered: retries meanwhile are 503 too, and never call it
    // again, however often they come.
    for _ in 0..5 {
        let p = console
            .send_text("c", "flaky-key-02", "x")
            .await
            .problem(503);
        assert_eq!(p["type"], "urn:sofiia:problem:send-not-stored-yet");
    }
    assert_eq!(node.call_count(), 1);
    assert!(appends.load(Ordering::SeqCst) >= 3, "the store is retried");

    // Once the index is back, the kept reply is stored, and the retry gets
    // the original answer.
    failures.store(0, Ordering::SeqCst);
    let res = console
        .send_until_stored(
            ALICE,
            "c",
            "flaky-key-02",
            &serde_json::json!({"text": "x"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.header("idempotent-replayed"), Some("true"));
    assert_eq!(res.json()["reply"]["text"], "[NODA1] echo: x");
    assert_eq!(node.call_count(), 1);
    assert_eq!(
        console.get("/api/chats/c", ALICE).await.json()["message_count"],
        2
    );
    console.stop().await;
}

/// PostgreSQL (the audit trail and the chat index) made unreachable in the
/// middle of a run, by cutting the only way to it: sends are refused with
/// 503 and `Retry-After` and reach no node, and once the way is back the
/// console serves again by itself, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_mid_run_is_503_without_a_node_call_then_recovers() {
    let Some(db) = sofiia_testkit::PostgresTestDatabase::new("postgres_cut_mid_run").await else {
        return;
    };
    let node = stub("NODA1").await;
    let proxy = common::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    // The test database, through the proxy.
    let config = sofiia_postgres_support::parse_url(&db.url).unwrap();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let url = format!(
        "postgres://{user}@127.0.0.1:{}/{}",
        proxy.addr.port(),
        db.name
    );
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_AUDIT_BACKEND", "postgres")
        .var("SOFIIA_CHAT_INDEX_BACKEND", "postgres")
        .var("SOFIIA_POSTGRES_URL", &url)
        .start()
        .await;
    assert_eq!(
        console
            .send_text("pg-cut", "before-cut-001", "hi")
            .await
            .status,
        200
    );
    assert_eq!(node.call_count(), 1);

    proxy.cut();
    for i in 0..3 {
        let answer = console
            .send_text("pg-cut", &format!("during-cut-{i:03}"), "hi")
            .await;
        answer.problem(503);
        assert!(answer.header("retry-after").is_some(), "{}", answer.text);
    }
    assert_eq!(node.call_count(), 1, "nothing reached the node");
    // Readiness is probed in the background, at most once a second.
    let cut_at = std::time::Instant::now();
    loop {
        let ready = console.get("/api/ready", ALICE).await;
        if ready.status == 503 {
            assert_eq!(
                ready.json()["checks"]["audit"]["status"],
                "error",
                "{}",
                ready.text
            );
            break;
        }
        assert!(
            cut_at.elapsed() < std::time::Duration::from_secs(5),
            "{}",
            ready.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    proxy.heal();
    let healed = std::time::Instant::now();
    let recovered = loop {
        let answer = console.send_text("pg-cut", "after-heal-001", "hi").await;
        if answer.status == 200 {
            break healed.elapsed();
        }
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert!(
            healed.elapsed() < std::time::Duration::from_secs(5),
            "not serving 5 s after PostgreSQL came back: {}",
            answer.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(node.call_count(), 2, "recovered after {recovered:?}");
    let messages = console.walk("/api/chats/pg-cut/messages", 50).await;
    assert_eq!(messages.len(), 4);
    console.stop().await;
}
