//! Idempotent sends end to end: replays, conflicts, mismatches, retries after
//! node failures, many instances on one Redis, and a Redis outage.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ALICE, Answer, BOB, Console, ConsoleBuilder, stub, stub_with};
use futures_util::future::join_all;
use serde_json::json;
use sofiia_testkit::{RedisServer, RedisTestContext};

fn assert_replay_of(first: &Answer, again: &Answer) {
    assert_eq!(again.status, first.status, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.text, first.text,
        "a replay must be byte for byte the first answer"
    );
    assert_eq!(first.header("idempotent-replayed"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_send_replays_without_a_second_node_call() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let first = console.send_text("c1", "key-replay-1", "hello").await;
    assert_eq!(first.status, 200, "{}", first.text);
    // The quoted structured-field form names the same key.
    let again = console.send_text("c1", "\"key-replay-1\"", "hello").await;
    assert_replay_of(&first, &again);
    // Key order and whitespace in the JSON body do not make another request.
    let reordered = console
        .request(
            reqwest::Method::POST,
            "/api/chats/c1/send",
            Some(ALICE),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "key-replay-1"),
            ],
            Some(br#"{ "text" : "hello" }"#.to_vec()),
        )
        .await;
    assert_replay_of(&first, &reordered);
    assert_eq!(node.call_count(), 1);
    let chat = console.get("/api/chats/c1", ALICE).await.json();
    assert_eq!(chat["message_count"], 2, "a replay stores nothing");
    assert!(
        console
            .logs
            .flows("replay")
            .iter()
            .any(|l| l["chat_id"] == "c1" && l["operator"] == "alice"),
        "{}",
        console.logs.text()
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_422() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    assert_eq!(
        console
            .send_text("c1", "key-reuse-01", "hello")
            .await
            .status,
        200
    );
    for (chat, body) in [
        ("c1", json!({"text": "something else"})),
        ("c2", json!({"text": "hello"})),
        ("c1", json!({"text": "hello", "node": "NODA1"})),
    ] {
        let p = console
            .send(ALICE, chat, "key-reuse-01", &body)
            .await
            .problem(422);
        assert_eq!(p["type"], "urn:sofiia:problem:idempotency-key-reused");
    }
    assert_eq!(node.call_count(), 1);
    console.get("/api/chats/c2", ALICE).await.problem(404);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_different_operators_never_interact() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let a = console
        .send(ALICE, "shared", "same-key-0001", &json!({"text": "x"}))
        .await;
    let b = console
        .send(BOB, "shared", "same-key-0001", &json!({"text": "x"}))
        .await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_eq!(b.header("idempotent-replayed"), None);
    assert_ne!(a.json()["message"]["id"], b.json()["message"]["id"]);
    // Bob reusing the key for another body is his own business: a mismatch
    // against his own request, not Alice's.
    let p = console
        .send(BOB, "shared", "same-key-0001", &json!({"text": "y"}))
        .await
        .problem(422);
    assert_eq!(p["status"], 422);
    assert_eq!(node.call_count(), 2);
    console.stop().await;
}

async fn concurrent_same_key(consoles: &[&Console], n: usize) -> Vec<Answer> {
    join_all((0..n).map(|i| {
        let console = consoles[i % consoles.len()];
        async move {
            console
                .send_text("race", "race-key-0001", "only once")
                .await
        }
    }))
    .await
}

fn assert_exactly_one_execution(answers: &[Answer]) {
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(!ok.is_empty(), "no send succeeded");
    for a in &ok {
        assert_eq!(a.text, ok[0].text, "every 200 must carry the same answer");
    }
    for a in answers.iter().filter(|a| a.status != 200) {
        let p = a.problem(409);
        assert_eq!(p["type"], "urn:sofiia:problem:idempotency-key-in-flight");
        assert!(a.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_reach_the_node_once() {
    let node = stub_with("NODA1", Duration::from_millis(300), None).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let answers = concurrent_same_key(&[&console], 30).await;
    assert_exactly_one_execution(&answers);
    assert_eq!(node.call_count(), 1);
    assert_eq!(
        console.get("/api/chats/race", ALICE).await.json()["message_count"],
        2
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_502_or_504_runs_again() {
    let node = stub_with("NODA1", Duration::ZERO, Some(500)).await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_INFER_TIMEOUT_MS", "200")
        .start()
        .await;
    console
        .send_text("c", "retry-key-01", "x")
        .await
        .problem(502);
    node.set_fail_status(None).unwrap();
    node.set_delay(Duration::from_secs(2));
    console
        .send_text("c", "retry-key-01", "x")
        .await
        .problem(504);
    node.set_delay(Duration::ZERO);
    let ok = console.send_text("c", "retry-key-01", "x").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.header("idempotent-replayed"), None);
    assert_eq!(node.call_count(), 3);
    let again = console.send_text("c", "retry-key-01", "x").await;
    assert_replay_of(&ok, &again);
    assert_eq!(node.call_count(), 3);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_execute_a_key_once() {
    let Some(redis) = RedisTestContext::new("two_instances_on_one_redis_execute_a_key_once").await
    else {
        return;
    };
    let node = stub_with("NODA1", Duration::from_millis(300), None).await;
    let a = ConsoleBuilder::new()
        .nodes(&[&node])
        .redis(&redis)
        .start()
        .await;
    let b = ConsoleBuilder::new()
        .nodes(&[&node])
        .redis(&redis)
        .start()
        .await;
    let answers = concurrent_same_key(&[&a, &b], 100).await;
    assert_exactly_one_execution(&answers);
    assert_eq!(
        node.call_count(),
        1,
        "one key must reach the node once across instances"
    );

    // Sent to A, replayed by B byte for byte.
    let first = a.send_text("ab", "ab-key-00001", "hello").await;
    assert_eq!(first.status, 200);
    let again = b.send_text("ab", "ab-key-00001", "hello").await;
    assert_replay_of(&first, &again);
    assert_eq!(node.call_count(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_503_without_node_calls_and_recovers_without_restart() {
    let Some(mut redis) = RedisServer::start("a_redis_outage_is_503") else {
        return;
    };
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .redis_at(&redis.url(), "outage:")
        .start()
        .await;
    assert_eq!(
        console
            .send_text("c", "outage-key-1", "before")
            .await
            .status,
        200
    );

    redis.stop();
    for i in 0..3 {
        let res = console
            .send_text("c", &format!("outage-key-during-{i}"), "during")
            .await;
        let p = res.problem(503);
        assert_eq!(p["type"], "urn:sofiia:problem:store-unavailable");
        assert!(res.header("retry-after").is_some());
    }
    assert_eq!(
        node.call_count(),
        1,
        "nothing may reach a node while Redis is down"
    );
    // Readiness is cached for a second: it says so once that has passed.
    let mut ready = None;
    for _ in 0..50 {
        let res = console
            .request(reqwest::Method::GET, "/api/ready", None, &[], None)
            .await;
        if res.status == 503 {
            ready = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready.is_some(), "readiness never reported the outage");

    redis.restart();
    let mut recovered = None;
    for _ in 0..50 {
        let res = console.send_text("c", "outage-key-after", "after").await;
        if res.status == 200 {
            recovered = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered.is_some(),
        "the console did not recover after Redis returned"
    );
    assert_eq!(node.call_count(), 2);
    console.stop().await;
}

/// The in-memory backend is bounded: past its capacity it evicts the
/// answer that expires first, counts it, and a retry of that key runs again,
/// as its documentation says. (The default, SQLite, never evicts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inmemory_backend_counts_what_it_evicts() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_IDEMPOTENCY_BACKEND", "inmemory")
        .var("SOFIIA_IDEMPOTENCY_CAPACITY", "2")
        .start()
        .await;
    let before = console
        .metric("sofiia_idempotency_evictions_total", &[])
        .await;
    for n in 0..3 {
        let res = console
            .send_text("bounded", &format!("bounded-key-{n}"), "x")
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert!(
        console
            .metric("sofiia_idempotency_evictions_total", &[])
            .await
            >= before + 1.0
    );
    // The newest keys replay; the evicted first one runs again.
    let newest = console.send_text("bounded", "bounded-key-2", "x").await;
    assert_eq!(newest.header("idempotent-replayed"), Some("true"));
    let evicted = console.send_text("bounded", "bounded-key-0", "x").await;
    assert_eq!(evicted.status, 200);
    assert_eq!(evicted.header("idempotent-replayed"), None);
    assert_eq!(node.call_count(), 4);
    console.stop().await;
}

/// A Redis Cluster primary stopped while the console runs: a send whose
/// key or buckets live on it is 503 with `Retry-After` and reaches no node
/// (the others may still be served); once the primary is back the console
/// serves every send again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_primary_down_is_503_without_node_calls_and_recovers() {
    let Some(cluster) = sofiia_testkit::RedisCluster::start("a_redis_cluster_primary_down") else {
        return;
    };
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .redis_cluster_at(&cluster.nodes(), "outage:")
        .start()
        .await;
    assert_eq!(
        console
            .send_text("c", "cluster-key-1", "before")
            .await
            .status,
        200
    );

    tokio::task::block_in_place(|| cluster.stop_node(0));
    let mut served = 1;
    let mut refused = 0;
    for i in 0..40 {
        let res = console
            .send_text(
                &format!("c{i}"),
                &format!("cluster-key-during-{i}"),
                "during",
            )
            .await;
        if res.status == 200 {
            served += 1;
            continue;
        }
        let p = res.problem(503);
        assert_eq!(p["type"], "urn:sofiia:problem:store-unavailable");
        assert!(res.header("retry-after").is_some());
        refused += 1;
        if refused == 5 {
            break;
        }
    }
    assert_eq!(refused, 5, "sends on the stopped primary are refused");
    assert_eq!(node.call_count(), served, "no refused send reached a node");

    tokio::task::block_in_place(|| cluster.restart_node(0));
    let back = std::time::Instant::now();
    for i in 0..10 {
        loop {
            let res = console
                .send_text(
                    &format!("after{i}"),
                    &format!("cluster-key-after-{i}"),
                    "after",
                )
                .await;
            if res.status == 200 {
                break;
            }
            res.problem(503);
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "not serving 20 s after the primary came back: {}",
                res.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(node.call_count(), served + 10);
    console.stop().await;
}
