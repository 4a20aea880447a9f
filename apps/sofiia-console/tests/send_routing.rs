//! The send path end to end: real router-stub nodes, the real server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ALICE, ConsoleBuilder, stub, stub_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_created_on_noda2_is_answered_by_noda2_only() {
    let noda1 = stub("NODA1").await;
    let noda2 = stub("NODA2").await;
    let console = ConsoleBuilder::new().nodes(&[&noda1, &noda2]).start().await;

    let created = console
        .post_json(
            "/api/chats",
            ALICE,
            &json!({"id": "ops-1", "title": "Ops", "node": "NODA2"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("location"), Some("/api/chats/ops-1"));
    let chat = created.json();
    assert_eq!(chat["node"], "NODA2");
    assert_eq!(chat["message_count"], 0);

    let sent = console
        .send_text("ops-1", "key-0000001", "status report")
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let body = sent.json();
    assert_eq!(body["chat_id"], "ops-1");
    assert_eq!(body["node"], "NODA2");
    assert_eq!(body["message"]["role"], "operator");
    assert_eq!(body["message"]["text"], "status report");
    assert_eq!(body["message"]["operator_id"], "alice");
    assert_eq!(body["message"]["node"], "NODA2");
    assert_eq!(body["reply"]["role"], "agent");
    assert_eq!(body["reply"]["text"], "[NODA2] echo: status report");
    assert_eq!(body["reply"]["chat_id"], "ops-1");

    assert_eq!(noda2.call_count(), 1);
    assert_eq!(noda1.call_count(), 0, "NODA1 must never see a NODA2 chat");
    let call = &noda2.calls()[0];
    assert_eq!(call.chat_id.as_str(), "ops-1");
    assert_eq!(call.operator_id.as_str(), "alice");
    // The node-side key is derived from the operator and the client's key.
    let derived = sofiia_idempotency::ScopedKey::new(
        "alice",
        sofiia_idempotency::IdempotencyKey::new("key-0000001").unwrap(),
    )
    .upstream_key();
    assert_eq!(call.idempotency_key, derived);
    assert_eq!(
        call.message_id.to_string(),
        body["message"]["id"].as_str().unwrap()
    );
    assert_eq!(call.request_id.as_deref(), sent.header("x-request-id"));

    let chat = console.get("/api/chats/ops-1", ALICE).await.json();
    assert_eq!(chat["message_count"], 2);
    assert_eq!(chat["updated_at"], body["reply"]["ts"]);
    let messages = console.walk("/api/chats/ops-1/messages", 50).await;
    assert_eq!(
        messages,
        vec![body["reply"].clone(), body["message"].clone()]
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_node_overrides_the_chat_node_and_first_send_creates_the_chat() {
    let noda1 = stub("NODA1").await;
    let noda2 = stub("NODA2").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&noda1, &noda2])
        .var("SOFIIA_DEFAULT_NODE", "NODA2")
        .start()
        .await;

    // First send creates the chat on the default node.
    let first = console.send_text("fresh", "key-0000001", "hello").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json()["node"], "NODA2");
    let chat = console.get("/api/chats/fresh", ALICE).await.json();
    assert_eq!(chat["node"], "NODA2");
    assert_eq!(chat["message_count"], 2);

    // An explicit node wins for that send, and the chat keeps its own.
    let over = console
        .send(
            ALICE,
            "fresh",
            "key-0000002",
            &json!({"text": "to one", "node": "NODA1"}),
        )
        .await;
    assert_eq!(over.status, 200, "{}", over.text);
    assert_eq!(over.json()["node"], "NODA1");
    assert_eq!(over.json()["reply"]["text"], "[NODA1] echo: to one");
    assert_eq!((noda1.call_count(), noda2.call_count()), (1, 1));
    let chat = console.get("/api/chats/fresh", ALICE).await.json();
    assert_eq!(chat["node"], "NODA2");
    assert_eq!(chat["message_count"], 4);

    // A first send naming a node creates the chat on that node.
    let named = console
        .send(
            ALICE,
            "named",
            "key-0000003",
            &json!({"text": "x", "node": "NODA1"}),
        )
        .await;
    assert_eq!(named.status, 200);
    assert_eq!(
        console.get("/api/chats/named", ALICE).await.json()["node"],
        "NODA1"
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_is_400_and_nothing_is_stored_or_sent() {
    let noda1 = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&noda1]).start().await;
    let res = console
        .send(
            ALICE,
            "c1",
            "key-0000001",
            &json!({"text": "x", "node": "NODA9"}),
        )
        .await;
    let p = res.problem(400);
    assert_eq!(p["type"], "urn:sofiia:problem:unknown-node");
    let res = console
        .post_json("/api/chats", ALICE, &json!({"id": "c2", "node": "NODA9"}))
        .await;
    res.problem(400);
    assert_eq!(noda1.call_count(), 0);
    assert_eq!(
        console.get("/api/chats", ALICE).await.json()["items"],
        json!([])
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_failures_map_to_502_and_504_and_store_nothing() {
    let failing = stub_with("NODA1", Duration::ZERO, Some(500)).await;
    let slow = stub_with("NODA2", Duration::from_secs(5), None).await;
    // A port that was free a moment ago: nothing listens there.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let console = ConsoleBuilder::new()
        .var(
            "SOFIIA_NODES",
            &format!(
                "NODA1={},NODA2={},NODA3=http://{gone}",
                failing.base_url(),
                slow.base_url()
            ),
        )
        .var("SOFIIA_INFER_TIMEOUT_MS", "300")
        .start()
        .await;

    let p = console
        .send(
            ALICE,
            "c",
            "key-0000001",
            &json!({"text": "x", "node": "NODA1"}),
        )
        .await
        .problem(502);
    assert_eq!(p["type"], "urn:sofiia:problem:node-failed");
    assert_eq!(p["node"], "NODA1");
    let p = console
        .send(
            ALICE,
            "c",
            "key-0000002",
            &json!({"text": "x", "node": "NODA2"}),
        )
        .await
        .problem(504);
    assert_eq!(p["type"], "urn:sofiia:problem:node-timeout");
    let p = console
        .send(
            ALICE,
            "c",
            "key-0000003",
            &json!({"text": "x", "node": "NODA3"}),
        )
        .await
        .problem(502);
    assert_eq!(p["type"], "urn:sofiia:problem:node-unreachable");

    assert_eq!(failing.call_count(), 1);
    assert_eq!(slow.call_count(), 1);
    // A failed first send does not leave an empty chat behind.
    console.get("/api/chats/c", ALICE).await.problem(404);
    assert_eq!(
        console.get("/api/chats", ALICE).await.json()["items"],
        json!([])
    );

    // The node recovers: the same send now works.
    failing.set_fail_status(None).unwrap();
    let ok = console
        .send(
            ALICE,
            "c",
            "key-0000004",
            &json!({"text": "x", "node": "NODA1"}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_echo_node_answers_when_no_nodes_are_configured() {
    let console = ConsoleBuilder::new().start().await;
    let res = console.send_text("demo", "key-0000001", "ping").await;
    assert_eq!(res.status, 200, "{}", res.text);
    let body = res.json();
    assert_eq!(body["node"], "echo");
    assert_eq!(body["reply"]["text"], "echo: ping");
    let warned = console.logs.lines().into_iter().any(|l| {
        l["level"] == "WARN" && l["msg"].as_str().unwrap().contains("SOFIIA_NODES is unset")
    });
    assert!(
        warned,
        "the echo node must be announced loudly: {}",
        console.logs.text()
    );
    console.stop().await;
}

/// `SOFIIA_NODES` with replicas: sends pass over a dead replica and one
/// answering 500 (with the same node-side key), that replica rests, and
/// `/api/ready` shows it; with every replica down a send is 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_over_between_a_nodes_replicas() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let live = stub("NODA1").await;
    let failing = stub_with("NODA1", Duration::ZERO, Some(500)).await;
    let console = ConsoleBuilder::new()
        .var(
            "SOFIIA_NODES",
            &format!("NODA1={dead}|{}|{}", failing.base_url(), live.base_url()),
        )
        .start()
        .await;
    for i in 0..10 {
        let res = console
            .send_text("replicated", &format!("replica-key-{i:02}"), "hi")
            .await;
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert_eq!(
        live.call_count(),
        10,
        "every send answered by the live replica"
    );
    let tried = failing.calls();
    assert!(
        !tried.is_empty() && tried.len() < 10,
        "rested: {} tries",
        tried.len()
    );
    for call in &tried {
        assert_eq!(
            live.calls()
                .iter()
                .filter(|c| c.idempotency_key == call.idempotency_key)
                .count(),
            1,
            "the send it failed went on with the same node-side key"
        );
    }
    // The first send's event records the replicas it tried, by index.
    let events = console.audit_events("&action=chat.send").await;
    let first = events
        .iter()
        .find(|e| e["details"]["attempts"][0]["replica"] == 0)
        .expect("an event of a send that began at the dead replica");
    let attempts = first["details"]["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "unreachable", "{first}");
    assert_eq!(attempts.last().unwrap()["outcome"], "ok", "{first}");
    assert!(events.iter().all(|e| {
        e["details"]["attempts"]
            .as_array()
            .is_some_and(|a| a.last().unwrap()["replica"] == 2)
    }));
    // Readiness is probed at most once a second: wait for a probe after
    // the sends.
    let mut ready = console.get("/api/ready", ALICE).await;
    for _ in 0..30 {
        if ready.json()["nodes"]["NODA1"]["replicas"][0]["status"] == "resting" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = console.get("/api/ready", ALICE).await;
    }
    let replicas = &ready.json()["nodes"]["NODA1"]["replicas"];
    assert_eq!(
        ready.json()["nodes"]["NODA1"]["status"],
        "ok",
        "{}",
        ready.text
    );
    assert_eq!(replicas[0]["status"], "resting", "{}", ready.text);
    assert_eq!(replicas[1]["status"], "resting", "{}", ready.text);
    assert_eq!(replicas[2]["status"], "ok", "{}", ready.text);
    let metrics = console.get("/metrics", ALICE).await.text;
    assert!(
        metrics.contains(r#"sofiia_node_replica_up{node="NODA1",replica="2"} 1"#),
        "{metrics}"
    );
    console.stop().await;

    let console = ConsoleBuilder::new()
        .var("SOFIIA_NODES", &format!("NODA1={dead}|{dead}/other"))
        .start()
        .await;
    let res = console
        .send_text("replicated", "replica-key-down", "hi")
        .await;
    res.problem(502);
    console.stop().await;
}
