//! Keyset pagination over HTTP with many rows sharing one timestamp.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ALICE, ConsoleBuilder};
use serde_json::{Value, json};
use sofiia_core_domain::{Cursor, CursorKeys, ManualClock, Timestamp};

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_size_walks_each_item_exactly_once_with_one_timestamp() {
    let clock = Arc::new(ManualClock::default());
    let console = ConsoleBuilder::new()
        .var("SOFIIA_CHAT_INDEX_BACKEND", "sqlite")
        // The clock is frozen, so quotas never refill: allow every send.
        .var("SOFIIA_RATE_LIMIT_CHAT", "1000/min")
        .var("SOFIIA_RATE_LIMIT_OPERATOR", "1000/min")
        .clock(clock.clone())
        .start()
        .await;

    // 210 chats and 220 messages, all at the same millisecond.
    let mut chat_ids: Vec<String> = (0..209).map(|i| format!("chat-{i:03}")).collect();
    for id in &chat_ids {
        let res = console
            .post_json("/api/chats", ALICE, &json!({ "id": id }))
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
    let mut message_ids = Vec::new();
    for i in 0..110 {
        let res = console
            .send_text("big", &format!("key-{i:08}"), &format!("message {i}"))
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
        let body = res.json();
        message_ids.push(body["message"]["id"].as_str().unwrap().to_owned());
        message_ids.push(body["reply"]["id"].as_str().unwrap().to_owned());
    }
    chat_ids.push("big".into());

    // Expected orders, computed independently: equal timestamps, so by id
    // descending; message ids are generated in send order.
    chat_ids.sort();
    chat_ids.reverse();
    message_ids.reverse();

    for limit in (1..=7).chain([200]) {
        let chats = console.walk("/api/chats", limit).await;
        assert_eq!(ids(&chats), chat_ids, "chats, limit {limit}");
        let messages = console.walk("/api/chats/big/messages", limit).await;
        assert_eq!(ids(&messages), message_ids, "messages, limit {limit}");
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_are_listed_most_recently_active_first() {
    let clock = Arc::new(ManualClock::new(
        Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
    ));
    let console = ConsoleBuilder::new().clock(clock.clone()).start().await;
    for id in ["a", "b", "c"] {
        console
            .post_json("/api/chats", ALICE, &json!({ "id": id }))
            .await;
        clock.advance(std::time::Duration::from_secs(1));
    }
    assert_eq!(ids(&console.walk("/api/chats", 2).await), ["c", "b", "a"]);
    let res = console.send_text("a", "key-0000001", "bump").await;
    assert_eq!(res.status, 200);
    let listed = console.walk("/api/chats", 2).await;
    assert_eq!(ids(&listed), ["a", "c", "b"]);
    assert_eq!(listed[0]["updated_at"], "2026-01-01T00:00:03.000Z");
    assert_eq!(listed[0]["created_at"], "2026-01-01T00:00:00.000Z");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_bound_to_their_list() {
    let console = ConsoleBuilder::new().start().await;
    for (chat, key) in [
        ("x", "key-0000001"),
        ("x", "key-0000002"),
        ("y", "key-0000003"),
    ] {
        assert_eq!(console.send_text(chat, key, "m").await.status, 200);
    }
    let page = console
        .get("/api/chats/x/messages?limit=1", ALICE)
        .await
        .json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    // Valid on its own list...
    let res = console
        .get(
            &format!("/api/chats/x/messages?limit=1&cursor={cursor}"),
            ALICE,
        )
        .await;
    assert_eq!(res.status, 200);
    // ...refused by another chat's list and by the chat list.
    for path in [
        format!("/api/chats/y/messages?cursor={cursor}"),
        format!("/api/chats?cursor={cursor}"),
    ] {
        let p = console.get(&path, ALICE).await.problem(400);
        assert_eq!(p["field"], "cursor");
    }
    // A cursor the console did not issue, even a well-formed one for the
    // right list, is refused: anyone can build one, but not sign it.
    let keys = CursorKeys::new(["a key this console does not have, 32+"]).unwrap();
    let forged = keys.encode(&Cursor::new(Timestamp::MIN, "x"), "messages:x");
    let p = console
        .get(&format!("/api/chats/x/messages?cursor={forged}"), ALICE)
        .await
        .problem(400);
    assert_eq!(p["field"], "cursor");
    console.stop().await;
}

/// Instances that share `SOFIIA_CURSOR_SECRET` accept each other's cursors
/// (the first key signs, every key verifies, for rotation); others do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cursor_secret_lets_instances_page_each_others_lists() {
    let old = "an-old-cursor-secret-of-at-least-32-chars";
    let new = "a-new-cursor-secret-of-at-least-32-chars!";
    let a = ConsoleBuilder::new()
        .var("SOFIIA_CURSOR_SECRET", old)
        .start()
        .await;
    for n in 0..3 {
        let res = a.send_text("paged", &format!("page-key-{n:03}"), "m").await;
        assert_eq!(res.status, 200);
    }
    let page = a
        .get("/api/chats/paged/messages?limit=2", ALICE)
        .await
        .json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let path = format!("/api/chats/paged/messages?limit=2&cursor={cursor}");

    // Instances on the same chat index (here A's SQLite file).
    let shared = a.dir.path().to_str().unwrap().to_owned();
    let b = ConsoleBuilder::new()
        .var("SOFIIA_DATA_DIR", &shared)
        .var("SOFIIA_CURSOR_SECRET", &format!("{new},{old}"))
        .start()
        .await;
    let res = b.get(&path, ALICE).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        res.json()["items"].as_array().unwrap().len(),
        2,
        "the second page"
    );
    let c = ConsoleBuilder::new()
        .var("SOFIIA_DATA_DIR", &shared)
        .var("SOFIIA_CURSOR_SECRET", new)
        .start()
        .await;
    c.get(&path, ALICE).await.problem(400);
    // Without a shared secret a console signs with a key of its own.
    let d = ConsoleBuilder::new()
        .var("SOFIIA_DATA_DIR", &shared)
        .start()
        .await;
    d.get(&path, ALICE).await.problem(400);
    for console in [a, b, c, d] {
        console.stop().await;
    }
}
