//! Per-chat and per-operator quotas end to end, on one instance and across
//! two sharing Redis.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ALICE, Answer, BOB, ConsoleBuilder, stub};
use futures_util::future::join_all;
use serde_json::json;
use sofiia_testkit::RedisTestContext;

fn count(answers: &[Answer], status: u16) -> usize {
    answers
        .iter()
        .filter(|a| a.status.as_u16() == status)
        .count()
}

fn assert_limited(a: &Answer, scope: &str) {
    let p = a.problem(429);
    assert_eq!(p["type"], "urn:sofiia:problem:rate-limited");
    assert_eq!(p["scope"], scope, "{p}");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let policy = a.header("ratelimit-policy").unwrap();
    assert!(policy.contains(&format!("\"{scope}\";q=")), "{policy}");
    assert!(
        a.header("ratelimit")
            .unwrap()
            .contains(&format!("\"{scope}\";r=0"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rapid_sends_to_one_chat_allow_exactly_five() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_CHAT", "5/min")
        .start()
        .await;
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push(
            console
                .send_text("busy", &format!("chat-quota-{i:04}"), "x")
                .await,
        );
    }
    assert_eq!(count(&answers, 200), 5);
    assert_eq!(count(&answers, 429), 15);
    for a in answers.iter().filter(|a| a.status == 200) {
        assert!(
            a.header("ratelimit-policy")
                .unwrap()
                .contains("\"chat\";q=5;w=60")
        );
        assert!(a.header("ratelimit").unwrap().contains("\"chat\";r="));
    }
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_limited(a, "chat");
    }
    assert_eq!(node.call_count(), 5);
    assert_eq!(
        console.get("/api/chats/busy", ALICE).await.json()["message_count"],
        10
    );
    // Another chat has its own quota.
    assert_eq!(
        console
            .send_text("calm", "chat-quota-calm", "x")
            .await
            .status,
        200
    );
    assert!(console.logs.flows("ratelimit").len() >= 15);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_stops_at_eight_across_chats_and_others_are_unaffected() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_OPERATOR", "8/min")
        .start()
        .await;
    let mut answers = Vec::new();
    for i in 0..12 {
        answers.push(
            console
                .send_text(&format!("chat-{i}"), &format!("op-quota-{i:04}"), "x")
                .await,
        );
    }
    assert_eq!(count(&answers, 200), 8);
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_limited(a, "operator");
    }
    let bob = console
        .send(BOB, "chat-0", "bob-key-0001", &json!({"text": "x"}))
        .await;
    assert_eq!(bob.status, 200, "{}", bob.text);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_spends_nothing_holds_no_key_and_replays_still_answer() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_CHAT", "2/min")
        .start()
        .await;
    let first = console.send_text("c", "spend-key-01", "one").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        console.send_text("c", "spend-key-02", "two").await.status,
        200
    );

    // The quota is spent; a replay of a finished send still answers 200.
    let replay = console.send_text("c", "spend-key-01", "one").await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.text, first.text);

    // A refused send holds no key: the same key with another body is refused
    // for the quota again, not reported as a reused key.
    assert_limited(
        &console.send_text("c", "spend-key-03", "three").await,
        "chat",
    );
    assert_limited(
        &console.send_text("c", "spend-key-03", "other").await,
        "chat",
    );
    assert_eq!(node.call_count(), 2);
    assert_eq!(
        console.get("/api/chats/c", ALICE).await.json()["message_count"],
        4
    );

    // Refused sends charged nothing: the operator's own quota is untouched
    // by the chat refusals (only the two sends count).
    let elsewhere = console.send_text("d", "spend-key-04", "x").await;
    let remaining = elsewhere.header("ratelimit").unwrap().to_owned();
    assert!(remaining.contains("\"operator\";r=57"), "{remaining}");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_the_quota_exactly() {
    let Some(redis) = RedisTestContext::new("two_instances_share_the_quota").await else {
        return;
    };
    let node = stub("NODA1").await;
    let build = || {
        ConsoleBuilder::new()
            .nodes(&[&node])
            .redis(&redis)
            .var("SOFIIA_RATE_LIMIT_CHAT", "5/min")
    };
    let a = build().start().await;
    let b = build().start().await;
    let answers = join_all((0..20).map(|i| {
        let console = if i % 2 == 0 { &a } else { &b };
        async move {
            console
                .send_text("shared", &format!("shared-quota-{i:04}"), "x")
                .await
        }
    }))
    .await;
    assert_eq!(count(&answers, 200), 5, "the quota holds across instances");
    assert_eq!(count(&answers, 429), 15);
    assert_eq!(node.call_count(), 5);
    a.stop().await;
    b.stop().await;
}
