//! Two `sofiia-console` processes on one Redis, with every backend there
//! (idempotency, rate limits and the chat index), behave as one console:
//! what is written through one is read through the other, a send is
//! replayed by the other, quotas hold across both, and one key reaches the
//! node once however the sends are spread. Each runs twice: on one Redis
//! server and on a three-primary Redis Cluster. The recommended shape, the
//! audit trail and the chat index on PostgreSQL with keys and quotas on a
//! Redis Cluster, is checked the same way at the end.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sofiia_router_stub::StubHandle;
use sofiia_testkit::{PostgresTestDatabase, RedisTestContext};
use tempfile::TempDir;

mod common;

use common::process::{ConsoleProcess, clean_command};
use common::{ALICE, AUDIT_KEY, BOB, stub, stub_with};

/// A console process of its own, with a data dir of its own (its audit
/// trail is per instance) and every Redis backend on the context's Redis
/// (server or cluster) under its prefix, with the cursor secret the
/// instances share.
/// Killed on drop.
struct Instance {
    _process: ConsoleProcess,
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Instance {
    fn start(redis: &RedisTestContext, node: &StubHandle, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = clean_command();
        cmd.env("SOFIIA_BIND", "127.0.0.1:0")
            .env("SOFIIA_DATA_DIR", dir.path())
            .env("SOFIIA_WORKERS", "2")
            .env("SOFIIA_OPERATOR_TOKENS", format!("alice:{ALICE},bob:{BOB}"))
            .env("SOFIIA_AUDIT_KEYS", AUDIT_KEY)
            .env(
                "SOFIIA_NODES",
                format!("{}={}", node.name(), node.base_url()),
            )
            .env(
                if redis.cluster {
                    "SOFIIA_REDIS_CLUSTER_NODES"
                } else {
                    "SOFIIA_REDIS_URL"
                },
                &redis.url,
            )
            .env("SOFIIA_REDIS_PREFIX", &redis.prefix)
            .env("SOFIIA_CHAT_INDEX_BACKEND", "redis")
            .env("SOFIIA_IDEMPOTENCY_BACKEND", "redis")
            .env("SOFIIA_RATE_LIMIT_BACKEND", "redis")
            .env(
                "SOFIIA_CURSOR_SECRET",
                "the-cursor-secret-these-instances-share",
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let process = ConsoleProcess::spawn(cmd);
        Self {
            base: process.base.clone(),
            _process: process,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ALICE)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap())
    }

    /// A send; the answer's status, `Idempotent-Replayed` header and body text.
    async fn send(&self, chat: &str, key: &str, text: &str) -> (StatusCode, bool, String) {
        let res = self
            .client
            .post(format!("{}/api/chats/{chat}/send", self.base))
            .bearer_auth(ALICE)
            .header("idempotency-key", key)
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let replayed = res.headers().get("idempotent-replayed").is_some();
        (status, replayed, res.text().await.unwrap())
    }

    /// Every page of a list, each page as returned.
    async fn pages(&self, path: &str, limit: usize) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let mut url = format!("{path}{sep}limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(&url).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            pages.push(page);
            if cursor.is_none() {
                return pages;
            }
        }
    }
}

fn items(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().clone())
        .collect()
}

/// Runs each case on one Redis server and on the process's Redis Cluster.
macro_rules! on_redis_and_cluster {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_one_server() {
                    if let Some(redis) = RedisTestContext::new(stringify!($case)).await {
                        super::$case(redis).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_a_cluster() {
                    if let Some(redis) = RedisTestContext::cluster(stringify!($case)).await {
                        super::$case(redis).await;
                    }
                }
            }
        )*
    };
}

on_redis_and_cluster!(
    a_chat_written_through_a_is_listed_paged_and_read_through_b,
    a_send_to_a_is_replayed_by_b,
    quotas_hold_across_both_processes,
    concurrent_same_key_sends_across_both_reach_the_node_once,
);

async fn a_chat_written_through_a_is_listed_paged_and_read_through_b(redis: RedisTestContext) {
    let node = stub("NODA1").await;
    let quota = [
        ("SOFIIA_RATE_LIMIT_CHAT", "1000/min"),
        ("SOFIIA_RATE_LIMIT_OPERATOR", "1000/min"),
    ];
    let a = Instance::start(&redis, &node, &quota);
    let b = Instance::start(&redis, &node, &quota);

    for instance in [&a, &b] {
        let (status, ready) = instance.get("/api/ready").await;
        assert_eq!(status, StatusCode::OK, "{ready}");
        assert_eq!(ready["checks"]["chat_index"]["status"], "ok", "{ready}");
        for store in ["chat_index", "idempotency", "rate_limiter"] {
            assert_eq!(ready["checks"][store]["backend"], "redis", "{ready}");
        }
    }

    let (status, created) = a
        .post(
            "/api/chats",
            &json!({"id": "ops:shared.1", "title": "Shared"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, again) = b.post("/api/chats", &json!({"id": "ops:shared.1"})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "B sees the chat A created: {again}"
    );

    // Sends through both, to several chats; one chat gets most of them.
    for i in 0..24 {
        let (via, chat) = match i % 4 {
            0 => (&b, "side-b"),
            1 => (&b, "ops:shared.1"),
            _ => (&a, "ops:shared.1"),
        };
        let (status, _, body) = via
            .send(chat, &format!("write-key-{i:04}"), &format!("m{i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (_, chat_a) = a.get("/api/chats/ops:shared.1").await;
    let (_, chat_b) = b.get("/api/chats/ops:shared.1").await;
    assert_eq!(chat_a, chat_b);
    assert_eq!(chat_b["message_count"], 36);
    assert_eq!(chat_b["title"], "Shared");

    for limit in [1, 2, 50] {
        let through_a = a.pages("/api/chats", limit).await;
        let through_b = b.pages("/api/chats", limit).await;
        assert_eq!(
            through_a, through_b,
            "chat pages of {limit}, cursors included"
        );
        let ids: Vec<Value> = items(&through_b).iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids.len(), 2);
    }
    for limit in [1, 7, 200] {
        let path = "/api/chats/ops:shared.1/messages";
        let through_a = a.pages(path, limit).await;
        let through_b = b.pages(path, limit).await;
        assert_eq!(
            through_a, through_b,
            "message pages of {limit}, cursors included"
        );
        assert_eq!(items(&through_b).len(), 36);
    }

    // A cursor handed out by A is good on B.
    let (_, first) = a.get("/api/chats/ops:shared.1/messages?limit=10").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, from_a) = a
        .get(&format!(
            "/api/chats/ops:shared.1/messages?limit=10&cursor={cursor}"
        ))
        .await;
    let (status_b, from_b) = b
        .get(&format!(
            "/api/chats/ops:shared.1/messages?limit=10&cursor={cursor}"
        ))
        .await;
    assert_eq!((status, status_b), (StatusCode::OK, StatusCode::OK));
    assert_eq!(from_a, from_b);
}

async fn a_send_to_a_is_replayed_by_b(redis: RedisTestContext) {
    let node = stub("NODA1").await;
    let a = Instance::start(&redis, &node, &[]);
    let b = Instance::start(&redis, &node, &[]);

    let (status, replayed, first) = a.send("replayed", "replay-key-0001", "hello").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(!replayed);
    let (status, replayed, again) = b.send("replayed", "replay-key-0001", "hello").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(replayed, "B replays A's answer");
    assert_eq!(again, first, "byte for byte");
    assert_eq!(node.call_count(), 1);
    for instance in [&a, &b] {
        let (_, chat) = instance.get("/api/chats/replayed").await;
        assert_eq!(chat["message_count"], 2, "a replay stores nothing");
    }
}

async fn quotas_hold_across_both_processes(redis: RedisTestContext) {
    let node = stub("NODA1").await;
    let quota = [
        ("SOFIIA_RATE_LIMIT_CHAT", "5/min"),
        ("SOFIIA_RATE_LIMIT_OPERATOR", "1000/min"),
    ];
    let a = Instance::start(&redis, &node, &quota);
    let b = Instance::start(&redis, &node, &quota);

    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..20 {
        let via = if i % 2 == 0 { &a } else { &b };
        let (status, _, body) = via
            .send("limited", &format!("quota-key-{i:04}"), "hi")
            .await;
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        (allowed, refused),
        (5, 15),
        "5/min holds across A and B together"
    );
    assert_eq!(node.call_count(), 5);
    let (_, chat) = b.get("/api/chats/limited").await;
    assert_eq!(chat["message_count"], 10);
}

async fn concurrent_same_key_sends_across_both_reach_the_node_once(redis: RedisTestContext) {
    // Slow enough that the sends overlap the first one in flight.
    let node = stub_with("NODA1", Duration::from_millis(300), None).await;
    let a = Instance::start(&redis, &node, &[]);
    let b = Instance::start(&redis, &node, &[]);

    let answers = join_all((0..100).map(|i| {
        let via = if i % 2 == 0 { &a } else { &b };
        via.send("raced", "raced-key-0001", "once")
    }))
    .await;
    let mut executed = Vec::new();
    for (status, replayed, body) in &answers {
        match *status {
            StatusCode::OK if !replayed => executed.push(body.clone()),
            StatusCode::OK | StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(executed.len(), 1, "exactly one send executed");
    for (status, replayed, body) in &answers {
        if *status == StatusCode::OK && *replayed {
            assert_eq!(body, &executed[0], "a replay is the executed answer");
        }
    }
    assert_eq!(node.call_count(), 1, "one key reaches the node once");
    for instance in [&a, &b] {
        let (_, chat) = instance.get("/api/chats/raced").await;
        assert_eq!(chat["message_count"], 2);
    }
}

// ---------------------------------------------------------------------------
// The recommended shape: the audit trail and the chat index on PostgreSQL,
// idempotency keys and quotas on a Redis Cluster.

/// The variables that put the audit trail and the chat index on `db`.
fn on_postgres<'a>(
    db: &'a PostgresTestDatabase,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![
        ("SOFIIA_AUDIT_BACKEND", "postgres"),
        ("SOFIIA_CHAT_INDEX_BACKEND", "postgres"),
        ("SOFIIA_POSTGRES_URL", db.url.as_str()),
    ];
    vars.extend_from_slice(more);
    vars
}

impl Instance {
    /// Every audit event, walking `/api/audit` pages newest first.
    async fn audit(&self, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/api/audit?limit=200{query}", self.base);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let res = self
                .client
                .get(url)
                .header("x-audit-key", AUDIT_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let page: Value = res.json().await.unwrap();
            events.extend(page["items"].as_array().unwrap().iter().cloned());
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                return events;
            }
        }
    }
}

/// `sofiia-console audit-verify` on the trail in `db`: its exit code and output.
fn audit_verify(db: &PostgresTestDatabase) -> (i32, String) {
    let out = clean_command()
        .arg("audit-verify")
        .env("SOFIIA_AUDIT_BACKEND", "postgres")
        .env("SOFIIA_POSTGRES_URL", &db.url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_two_instances_keep_one_trail_one_index_and_one_node_call_per_key() {
    let test = "on_postgres_two_instances_keep_one_trail";
    let Some(redis) = RedisTestContext::cluster(test).await else {
        return;
    };
    let Some(db) = PostgresTestDatabase::new(test).await else {
        return;
    };
    let node = stub("NODA1").await;
    let vars = on_postgres(
        &db,
        &[
            ("SOFIIA_RATE_LIMIT_CHAT", "100000/min"),
            ("SOFIIA_RATE_LIMIT_OPERATOR", "100000/min"),
        ],
    );
    let a = Instance::start(&redis, &node, &vars);
    let b = Instance::start(&redis, &node, &vars);
    for instance in [&a, &b] {
        let (status, ready) = instance.get("/api/ready").await;
        assert_eq!(status, StatusCode::OK, "{ready}");
        assert_eq!(ready["checks"]["audit"]["backend"], "postgres", "{ready}");
        assert_eq!(
            ready["checks"]["chat_index"]["backend"], "postgres",
            "{ready}"
        );
    }

    // 100 sends of one key, through both at once: one node call.
    let same_key = join_all((0..100).map(|i| {
        let via = if i % 2 == 0 { &a } else { &b };
        via.send("one-key-chat", "the-one-key-0001", "once")
    }))
    .await;
    let mut first = None;
    for (status, _, body) in &same_key {
        match *status {
            StatusCode::OK => {
                let body: Value = serde_json::from_str(body).unwrap();
                let reply = body["reply"]["id"].clone();
                assert_eq!(first.get_or_insert(reply.clone()), &reply, "one answer");
            }
            // Still waiting for its node, or its node answered and the
            // exchange is being stored: retry later, nothing was run again.
            StatusCode::CONFLICT => {}
            StatusCode::SERVICE_UNAVAILABLE if body.contains("send-not-stored-yet") => {}
            other => panic!("{other}: {body}"),
        }
    }
    assert!(first.is_some(), "at least one send was answered 200");
    assert_eq!(node.call_count(), 1, "one key, one node call");

    // 1 000 sends through both, 100 at a time, to 10 chats.
    for wave in 0..10 {
        let answers = join_all((0..100).map(|i| {
            let n = wave * 100 + i;
            let via = if n % 2 == 0 { &a } else { &b };
            let chat = format!("pg-chat-{}", n % 10);
            async move {
                via.send(&chat, &format!("pg-send-{n:05}"), &format!("m{n}"))
                    .await
            }
        }))
        .await;
        for (status, _, body) in answers {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    assert_eq!(node.call_count(), 1001);
    // The keys and buckets are on the cluster, spread over its primaries.
    let held = redis.keys_per_node();
    assert!(held.iter().all(|&n| n > 0), "{held:?}");
    assert!(held.iter().sum::<usize>() >= 1001, "{held:?}");

    // One index: the chats' counts as both see them.
    for chat in 0..10 {
        let (_, via_a) = a.get(&format!("/api/chats/pg-chat-{chat}")).await;
        let (_, via_b) = b.get(&format!("/api/chats/pg-chat-{chat}")).await;
        assert_eq!(via_a, via_b);
        assert_eq!(via_a["message_count"], 200, "{via_a}");
    }

    // One trail: every send, in one chain, whichever instance is asked.
    let trail = a.audit("").await;
    let mut ids: Vec<u64> = trail.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), trail.len(), "no event twice");
    for pair in trail.windows(2) {
        // Newest first: each event chains from the one after it.
        assert_eq!(
            pair[0]["prev_hash"], pair[1]["hash"],
            "{} follows {}",
            pair[0]["id"], pair[1]["id"]
        );
    }
    for instance in [&a, &b] {
        let sends = instance.audit("&action=chat.send").await;
        assert_eq!(sends.len(), 1001);
    }
    let (code, out) = audit_verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    // A tampered row is found, and named.
    let forged = &trail[trail.len() / 2];
    let pool = sofiia_postgres_support::PostgresPool::open(&db.url, Default::default()).unwrap();
    let client = pool.get().await.unwrap();
    let id = i64::try_from(forged["id"].as_u64().unwrap()).unwrap();
    client
        .execute(
            "UPDATE audit_events SET target = 'forged' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (code, out) = audit_verify(&db);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&format!("BROKEN at event {id}")), "{out}");
    // And a deleted one: the event after it no longer chains.
    client
        .execute(
            "UPDATE audit_events SET target = $2 WHERE id = $1",
            &[&id, &forged["target"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(audit_verify(&db).0, 0);
    client
        .execute("DELETE FROM audit_events WHERE id = $1", &[&id])
        .await
        .unwrap();
    let (code, out) = audit_verify(&db);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("PrevHashMismatch"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_chat_quota_holds_across_both_instances() {
    let test = "on_postgres_a_chat_quota_holds";
    let Some(redis) = RedisTestContext::cluster(test).await else {
        return;
    };
    let Some(db) = PostgresTestDatabase::new(test).await else {
        return;
    };
    let node = stub("NODA1").await;
    let vars = on_postgres(&db, &[("SOFIIA_RATE_LIMIT_CHAT", "6/min")]);
    let a = Instance::start(&redis, &node, &vars);
    let b = Instance::start(&redis, &node, &vars);
    let answers = join_all((0..12).map(|i| {
        let via = if i % 2 == 0 { &a } else { &b };
        async move {
            via.send("quota-chat", &format!("quota-key-{i:04}"), "hi")
                .await
        }
    }))
    .await;
    let ok = answers
        .iter()
        .filter(|(s, ..)| *s == StatusCode::OK)
        .count();
    let limited = answers
        .iter()
        .filter(|(s, ..)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (6, 6), "{answers:?}");
    assert_eq!(node.call_count(), 6);
}
