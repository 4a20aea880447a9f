//! The audit trail end to end: strict key protection, an event for every
//! operator action, cursor walks and filters, and fail-closed writes.
#![allow(clippy::unwrap_used)]

mod common;

use common::faults::FaultyAudit;
use common::{ALICE, AUDIT_KEY, AUDIT_KEY_OLD, BOB, ConsoleBuilder, stub_with};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_needs_a_configured_key_and_nothing_else_will_do() {
    let console = ConsoleBuilder::new().start().await;
    let bearer_alice = format!("Bearer {ALICE}");
    let bearer_key = format!("Bearer {AUDIT_KEY}");
    let key_prefix = &AUDIT_KEY[..AUDIT_KEY.len() - 1];
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-audit-key", "wrong-key")],
        vec![("x-audit-key", key_prefix)],
        vec![("x-audit-key", "")],
        vec![("authorization", bearer_alice.as_str())],
        vec![("authorization", bearer_key.as_str())],
        vec![("x-forwarded-for", "127.0.0.1")],
        vec![("x-real-ip", "127.0.0.1")],
        vec![("forwarded", "for=127.0.0.1")],
        vec![
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "::1"),
            ("forwarded", "for=\"[::1]\""),
        ],
    ];
    for headers in &refused {
        let res = console
            .request(Method::GET, "/api/audit", None, headers, None)
            .await;
        let p = res.problem(401);
        assert_eq!(p["type"], "urn:sofiia:problem:unauthorized", "{headers:?}");
        assert!(res.json()["items"].is_null(), "no data on a refusal");
    }
    for key in [AUDIT_KEY, AUDIT_KEY_OLD] {
        let res = console
            .request(
                Method::GET,
                "/api/audit",
                None,
                &[("x-audit-key", key)],
                None,
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert!(res.json()["items"].is_array());
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_key_configured_audit_refuses_everyone() {
    let console = ConsoleBuilder::new()
        .without("SOFIIA_AUDIT_KEYS")
        .start()
        .await;
    for headers in [
        vec![],
        vec![("x-audit-key", AUDIT_KEY)],
        vec![("x-audit-key", "")],
    ] {
        console
            .request(Method::GET, "/api/audit", None, &headers, None)
            .await
            .problem(401);
    }
    assert!(console.logs.lines().iter().any(|l| {
        l["level"] == "WARN"
            && l["msg"]
                .as_str()
                .unwrap()
                .contains("SOFIIA_AUDIT_KEYS is unset")
    }));
    console.stop().await;
}

fn find<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_action_is_an_event_with_actor_and_target() {
    let node = stub_with("NODA1", std::time::Duration::from_millis(400), None).await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_CHAT", "2/min")
        // A duplicate is answered 409 at once instead of waiting for the
        // first send's answer (tests/streaming.rs covers the wait).
        .var("SOFIIA_SEND_ATTACH_WAIT_MS", "0")
        .start()
        .await;
    let secret = "top secret operator text";
    assert_eq!(
        console
            .post_json("/api/chats", ALICE, &json!({"id": "made"}))
            .await
            .status,
        201
    );
    let sent = console.send_text("talk", "audit-key-0001", secret).await;
    assert_eq!(sent.status, 200);
    assert_eq!(
        console
            .send_text("talk", "audit-key-0001", secret)
            .await
            .status,
        200
    );
    console
        .send_text("talk", "audit-key-0001", "different")
        .await
        .problem(422);
    // A duplicate while the first is still at the (slow) node.
    let (slow, dup) = tokio::join!(console.send_text("talk", "audit-key-0002", secret), async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        console.send_text("talk", "audit-key-0002", secret).await
    });
    assert_eq!(slow.status, 200);
    dup.problem(409);
    console
        .send_text("talk", "audit-key-0003", secret)
        .await
        .problem(429);
    console.get("/api/chats", "not-a-token").await.problem(401);

    let events = console.audit_events("").await;
    let create = find(&events, "chat.create");
    assert_eq!(create.len(), 1);
    assert_eq!(create[0]["actor"], "alice");
    assert_eq!(create[0]["target"], "made");
    assert_eq!(create[0]["outcome"], "ok");
    let sends = find(&events, "chat.send");
    assert_eq!(sends.len(), 2);
    for s in &sends {
        assert_eq!(s["actor"], "alice");
        assert_eq!(s["target"], "talk");
        assert_eq!(s["outcome"], "ok");
        assert_eq!(s["status"], 200);
        assert_eq!(s["node"], "NODA1");
    }
    assert!(
        sends
            .iter()
            .any(|s| s["request_id"] == sent.header("x-request-id").unwrap())
    );
    for (action, status) in [
        ("chat.send.replay", 200),
        ("chat.send.mismatch", 422),
        ("chat.send.conflict", 409),
        ("chat.send.rate_limited", 429),
    ] {
        let found = find(&events, action);
        assert_eq!(found.len(), 1, "{action}: {events:?}");
        assert_eq!(found[0]["actor"], "alice");
        assert_eq!(found[0]["target"], "talk");
        assert_eq!(found[0]["status"], status);
        let outcome = if status == 200 { "ok" } else { "denied" };
        assert_eq!(found[0]["outcome"], outcome);
    }
    let denied = find(&events, "auth.denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["actor"], "anonymous");
    assert_eq!(denied[0]["target"], "/api/chats");
    assert!(
        find(&events, "audit.read")
            .iter()
            .all(|e| e["actor"] == "audit-key:1")
    );

    // Every field of the contract, a verifiable chain, and no secrets.
    for e in &events {
        for field in [
            "id",
            "ts",
            "actor",
            "action",
            "target",
            "outcome",
            "status",
            "request_id",
            "node",
            "source_ip",
            "user_agent",
            "details",
            "prev_hash",
            "hash",
        ] {
            assert!(e.get(field).is_some(), "event lacks {field}: {e}");
        }
    }
    let all = serde_json::to_string(&events).unwrap();
    for forbidden in [secret, ALICE, BOB, AUDIT_KEY, AUDIT_KEY_OLD, "echo:"] {
        assert!(
            !all.contains(forbidden),
            "the audit trail holds {forbidden:?}"
        );
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_pages_filters_and_cursors() {
    let console = ConsoleBuilder::new().start().await;
    for i in 0..12 {
        let res = console
            .send_text(&format!("c{}", i % 3), &format!("walk-key-{i:04}"), "x")
            .await;
        assert_eq!(res.status, 200);
    }
    console
        .send(BOB, "c0", "walk-key-bob1", &json!({"text": "x"}))
        .await;

    let all = console.audit_events("&action=chat.send").await;
    assert_eq!(all.len(), 13);
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for limit in 1..=7 {
        let mut walked = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("/api/audit?action=chat.send&limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = console
                .request(Method::GET, &url, None, &[("x-audit-key", AUDIT_KEY)], None)
                .await
                .json();
            walked.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_u64().unwrap()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(walked, ids, "limit {limit}");
    }
    let bob = console.audit_events("&actor=bob").await;
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0]["target"], "c0");
    let future = console.audit_events("&since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let past = console.audit_events("&until=2000-01-01T00:00:00Z").await;
    assert!(past.is_empty());
    let window = console
        .audit_events(
            "&action=chat.send&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00%2B02:00",
        )
        .await;
    assert_eq!(window.len(), 13);

    let key = [("x-audit-key", AUDIT_KEY)];
    let page = console
        .request(
            Method::GET,
            "/api/audit?action=chat.send&limit=2",
            None,
            &key,
            None,
        )
        .await
        .json();
    let cursor = page["next_cursor"].as_str().unwrap();
    for bad in [
        "since=yesterday".to_owned(),
        "until=2026-13-01T00:00:00Z".to_owned(),
        "limit=0".to_owned(),
        "limit=500".to_owned(),
        "cursor=garbage".to_owned(),
        // A cursor is bound to its filters.
        format!("action=chat.create&cursor={cursor}"),
        format!("cursor={cursor}"),
        "actor=".to_owned(),
        "bogus=1".to_owned(),
    ] {
        console
            .request(Method::GET, &format!("/api/audit?{bad}"), None, &key, None)
            .await
            .problem(400);
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_trail_fails_actions_closed_and_a_retry_replays() {
    let node = stub_with("NODA1", std::time::Duration::ZERO, None).await;
    let (audit, fault) = FaultyAudit::new();
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .audit(audit)
        .start()
        .await;
    let failures_before = console
        .metric("sofiia_audit_write_failures_total", &[])
        .await;

    fault.fail();
    let p = console
        .send_text("c", "fail-key-0001", "x")
        .await
        .problem(503);
    // The node answered, so the send's own event is part of storing it: the
    // key keeps the reply until the event is written.
    assert_eq!(p["type"], "urn:sofiia:problem:send-not-stored-yet");
    console
        .post_json("/api/chats", ALICE, &json!({"id": "x"}))
        .await
        .problem(503);
    console
        .request(
            Method::GET,
            "/api/audit",
            None,
            &[("x-audit-key", AUDIT_KEY)],
            None,
        )
        .await
        .problem(503);
    console.get("/api/chats", "wrong-token").await.problem(503);
    assert!(
        console
            .metric("sofiia_audit_write_failures_total", &[])
            .await
            >= failures_before + 4.0
    );

    // A retry once the trail is back gets the kept answer instead of
    // sending twice.
    assert_eq!(node.call_count(), 1);
    fault.heal();
    let retry = console
        .send_until_stored(ALICE, "c", "fail-key-0001", &json!({"text": "x"}))
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(node.call_count(), 1);
    let events = console.audit_events("").await;
    let sends = find(&events, "chat.send");
    assert_eq!(sends.len(), 1, "one send, one event: {sends:?}");
    assert_eq!(sends[0]["outcome"], "ok");
    assert_eq!(find(&events, "chat.send.replay").len(), 1);
    console.stop().await;
}
