//! Every bad input of the contract gets a 4xx problem+json and stores nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ALICE, Console, ConsoleBuilder, stub};
use reqwest::Method;
use serde_json::json;

type Headers<'a> = Vec<(&'a str, &'a str)>;
/// name, expected status, path, headers, body
type SendCase<'a> = (&'a str, u16, String, Headers<'a>, Vec<u8>);

async fn assert_untouched(console: &Console, chats_before: &serde_json::Value) {
    let after = console.get("/api/chats?limit=200", ALICE).await.json();
    assert_eq!(
        &after, chats_before,
        "a rejected request changed the chat index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_send_inputs_are_4xx_problems_and_store_nothing() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    // One good send so "nothing changed" has something to compare.
    assert_eq!(
        console.send_text("c1", "key-0000000", "seed").await.status,
        200
    );
    let before = console.get("/api/chats?limit=200", ALICE).await.json();
    let calls_before = node.call_count();

    let json_ct = ("content-type", "application/json");
    let key = ("idempotency-key", "key-0000001");
    let good = br#"{"text":"hello"}"#.to_vec();
    let long_key = "k".repeat(256);
    let cases: Vec<SendCase<'_>> = vec![
        (
            "bad chat id",
            400,
            "/api/chats/-bad/send".into(),
            vec![json_ct, key],
            good.clone(),
        ),
        (
            "space in chat id",
            400,
            "/api/chats/a%20b/send".into(),
            vec![json_ct, key],
            good.clone(),
        ),
        (
            "long chat id",
            400,
            format!("/api/chats/{}/send", "x".repeat(129)),
            vec![json_ct, key],
            good.clone(),
        ),
        (
            "no key",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct],
            good.clone(),
        ),
        (
            "short key",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, ("idempotency-key", "short")],
            good.clone(),
        ),
        (
            "long key",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, ("idempotency-key", long_key.as_str())],
            good.clone(),
        ),
        (
            "key with space",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, ("idempotency-key", "key with space")],
            good.clone(),
        ),
        (
            "broken json",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            b"{\"text\":".to_vec(),
        ),
        (
            "not an object",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            b"[1,2]".to_vec(),
        ),
        (
            "empty body",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            Vec::new(),
        ),
        (
            "wrong type",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":5}"#.to_vec(),
        ),
        (
            "missing text",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"node":"NODA1"}"#.to_vec(),
        ),
        (
            "unknown field",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":"x","nodes":"NODA1"}"#.to_vec(),
        ),
        (
            "empty text",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":""}"#.to_vec(),
        ),
        (
            "control char",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":"a\u0000b"}"#.to_vec(),
        ),
        (
            "text too long",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            serde_json::to_vec(&json!({"text": "x".repeat(16_001)})).unwrap(),
        ),
        (
            "bad node name",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":"x","node":"NO DA"}"#.to_vec(),
        ),
        (
            "unknown node",
            400,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            br#"{"text":"x","node":"NODA7"}"#.to_vec(),
        ),
        (
            "text/plain",
            415,
            "/api/chats/c1/send".into(),
            vec![("content-type", "text/plain"), key],
            good.clone(),
        ),
        (
            "no content type",
            415,
            "/api/chats/c1/send".into(),
            vec![key],
            good.clone(),
        ),
        (
            "body over 64 KiB",
            413,
            "/api/chats/c1/send".into(),
            vec![json_ct, key],
            serde_json::to_vec(&json!({"text": "x".repeat(70_000)})).unwrap(),
        ),
    ];
    for (name, status, path, headers, body) in cases {
        let res = console
            .request(Method::POST, &path, Some(ALICE), &headers, Some(body))
            .await;
        let p = res.problem(status);
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:sofiia:problem:"),
            "{name}: {p}"
        );
    }
    assert_eq!(
        node.call_count(),
        calls_before,
        "a rejected send reached a node"
    );
    assert_untouched(&console, &before).await;
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_are_401_with_bearer_challenge() {
    let console = ConsoleBuilder::new().start().await;
    let body = Some(br#"{"text":"x"}"#.to_vec());
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", "key-0000001"),
    ];
    let cases: Vec<(Method, &str, Headers<'_>)> = vec![
        (Method::GET, "/api/chats", vec![]),
        (
            Method::GET,
            "/api/chats",
            vec![("authorization", "Bearer wrong-token")],
        ),
        (
            Method::GET,
            "/api/chats",
            vec![("authorization", "Basic YWxpY2U6eA==")],
        ),
        (Method::GET, "/api/chats", vec![("authorization", "Bearer")]),
        (
            Method::GET,
            "/api/chats/c1",
            vec![("authorization", "alice-token-0001")],
        ),
        (
            Method::GET,
            "/api/chats/c1/messages",
            vec![("authorization", "Bearer alice-token-000")],
        ),
        (Method::POST, "/api/chats/c1/send", headers.to_vec()),
        (
            Method::POST,
            "/api/chats",
            vec![("content-type", "application/json")],
        ),
    ];
    for (method, path, headers) in cases {
        let res = console
            .request(method.clone(), path, None, &headers, body.clone())
            .await;
        let p = res.problem(401);
        assert_eq!(
            res.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
        assert_eq!(p["type"], "urn:sofiia:problem:unauthorized");
    }
    // The token decides the operator, case-insensitively on the scheme.
    let res = console
        .request(
            Method::GET,
            "/api/chats",
            None,
            &[("authorization", "bearer alice-token-0001")],
            None,
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        console.get("/api/chats", ALICE).await.json()["items"],
        json!([])
    );
    // The first refusal of each reason from an address is logged (the rest
    // are counted into the trail's aggregate events), and every one is
    // counted by reason.
    let denied = console.logs.flows("auth");
    let mut reasons: Vec<&str> = denied.iter().filter_map(|l| l["reason"].as_str()).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons, ["malformed", "missing", "unknown"], "{denied:?}");
    let counted = console.metric("sofiia_auth_denied_total", &[]).await;
    assert!(counted >= 8.0, "{counted} denials counted");
    assert!(
        !console.logs.text().contains("wrong-token"),
        "tokens never reach the log"
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_queries_are_400() {
    let console = ConsoleBuilder::new().start().await;
    assert_eq!(
        console.send_text("c1", "key-0000001", "x").await.status,
        200
    );
    for query in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "limit=1&limit=2",
        "cursor=",
        "cursor=not-a-cursor",
        "cursor=%FF%FE",
        "limt=5",
    ] {
        for list in ["/api/chats", "/api/chats/c1/messages"] {
            let res = console.get(&format!("{list}?{query}"), ALICE).await;
            res.problem(400);
        }
    }
    // A real cursor with one character changed.
    let page = console
        .get("/api/chats/c1/messages?limit=1", ALICE)
        .await
        .json();
    let mut cursor = page["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned()
        .into_bytes();
    let last = cursor.len() - 3;
    cursor[last] = if cursor[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(cursor).unwrap();
    let p = console
        .get(&format!("/api/chats/c1/messages?cursor={tampered}"), ALICE)
        .await
        .problem(400);
    assert_eq!(p["field"], "cursor");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chat_creation_and_lookups() {
    let console = ConsoleBuilder::new().start().await;
    let created = console
        .post_json("/api/chats", ALICE, &json!({"id": "c1"}))
        .await;
    assert_eq!(created.status, 201);
    let before = console.get("/api/chats?limit=200", ALICE).await.json();

    let p = console
        .post_json("/api/chats", ALICE, &json!({"id": "c1", "title": "again"}))
        .await
        .problem(409);
    assert_eq!(p["type"], "urn:sofiia:problem:chat-exists");
    for body in [
        json!({"id": "bad id"}),
        json!({"id": ""}),
        json!({"title": "two\nlines"}),
        json!({"title": "t".repeat(201)}),
        json!({"node": "NODA1"}),
        json!({"id": 5}),
        json!({"extra": true}),
    ] {
        console
            .post_json("/api/chats", ALICE, &body)
            .await
            .problem(400);
    }
    console.get("/api/chats/nope", ALICE).await.problem(404);
    console
        .get("/api/chats/nope/messages", ALICE)
        .await
        .problem(404);
    console.get("/api/chats/-bad", ALICE).await.problem(400);
    console.get("/api/nowhere", ALICE).await.problem(404);
    let res = console
        .request(Method::DELETE, "/api/chats", Some(ALICE), &[], None)
        .await;
    res.problem(405);
    assert_untouched(&console, &before).await;
    console.stop().await;
}
