//! The stub's own HTTP interface, spoken to directly: protocol validation and
//! the `/_stub` endpoints ops scripts use.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sofiia_core_domain::NodeId;
use sofiia_router_stub::{StubConfig, StubHandle, StubNode};

fn stub() -> StubHandle {
    let name = NodeId::new("NODA1").expect("valid node name");
    StubNode::spawn_loopback(StubConfig::new(name)).expect("the stub starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("the client builds")
}

fn infer_body() -> Value {
    json!({
        "chat_id": "incident-42",
        "message_id": "0190a5b8-7c3e-7d4f-8a1b-2c3d4e5f6a7b",
        "operator_id": "alice",
        "node": "NODA1",
        "text": "status?",
    })
}

async fn post_infer(
    stub: &StubHandle,
    body: &Value,
    key: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = client()
        .post(format!("{}/v1/infer", stub.base_url()))
        .header("content-type", "application/json")
        .header("x-request-id", "req-1")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let resp = req.send().await.expect("the stub answers");
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.expect("the answer is JSON");
    (status, request_id, body)
}

async fn get(stub: &StubHandle, path: &str) -> (StatusCode, Value) {
    let resp = client()
        .get(format!("{}{path}", stub.base_url()))
        .send()
        .await
        .expect("the stub answers");
    let status = resp.status();
    (status, resp.json().await.expect("the answer is JSON"))
}

async fn post_behaviour(stub: &StubHandle, body: &str) -> (StatusCode, Value) {
    let resp = client()
        .post(format!("{}/_stub/behaviour", stub.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the stub answers");
    let status = resp.status();
    (status, resp.json().await.expect("the answer is JSON"))
}

#[tokio::test]
async fn answers_the_protocol_and_echoes_the_request_id() {
    let stub = stub();
    let (status, request_id, body) = post_infer(&stub, &infer_body(), Some("key-00000001")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request_id.as_deref(), Some("req-1"));
    assert_eq!(
        body,
        json!({"text": "[NODA1] echo: status?", "node": "NODA1"})
    );
}

#[tokio::test]
async fn rejects_malformed_requests_with_json_errors() {
    let stub = stub();
    let mut missing = infer_body();
    missing.as_object_mut().unwrap().remove("operator_id");
    let mut bad_id = infer_body();
    bad_id["chat_id"] = json!("not a chat id");
    let mut empty_text = infer_body();
    empty_text["text"] = json!("");
    for body in [missing, bad_id, empty_text, json!([1, 2]), json!("text")] {
        let (status, _, answer) = post_infer(&stub, &body, Some("key-00000001")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], "invalid_body", "{body}");
        assert_eq!(answer["node"], "NODA1");
    }
    let (status, _, answer) = post_infer(&stub, &infer_body(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "missing_idempotency_key");

    let resp = client()
        .post(format!("{}/v1/infer", stub.base_url()))
        .header("idempotency-key", "key-00000001")
        .body(infer_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(stub.call_count(), 0, "rejected requests are not recorded");
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let stub = stub();
    assert_eq!(
        get(&stub, "/v1/health").await,
        (StatusCode::OK, json!({"status": "ok", "node": "NODA1"}))
    );
    let (status, body) = get(&stub, "/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn calls_are_listed_without_text_and_can_be_cleared() {
    let stub = stub();
    post_infer(&stub, &infer_body(), Some("key-00000001")).await;
    let (status, body) = get(&stub, "/_stub/calls").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    let call = &body["calls"][0];
    assert_eq!(call["idempotency_key"], "key-00000001");
    assert_eq!(call["request_id"], "req-1");
    assert_eq!(call["chat_id"], "incident-42");
    assert_eq!(call["text_chars"], 7);
    assert!(!body.to_string().contains("status?"), "{body}");

    let resp = client()
        .delete(format!("{}/_stub/calls", stub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"cleared": 1}));
    assert_eq!(stub.call_count(), 0);
}

#[tokio::test]
async fn behaviour_can_be_flipped_over_http() {
    let stub = stub();
    let (status, body) = post_behaviour(&stub, r#"{"fail_status": 502, "delay_ms": 0}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"node": "NODA1", "delay_ms": 0, "fail_status": 502, "reply": "echo",
            "stream": true, "chunks": 4, "chunk_delay_ms": 0, "fail_after_chunks": null,
            "break_with": "error_event"})
    );
    let (status, _, answer) = post_infer(&stub, &infer_body(), Some("key-00000001")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer["error"], "injected_failure");

    // Absent keeps, null clears.
    let (_, body) = post_behaviour(&stub, r#"{"reply": "not_json"}"#).await;
    assert_eq!(body["fail_status"], 502);
    let (_, body) = post_behaviour(&stub, r#"{"fail_status": null, "reply": "echo"}"#).await;
    assert_eq!(body["fail_status"], Value::Null);
    let (status, _, _) = post_infer(&stub, &infer_body(), Some("key-00000002")).await;
    assert_eq!(status, StatusCode::OK);

    // The stream settings, likewise.
    let (_, body) = post_behaviour(
        &stub,
        r#"{"chunks": 7, "chunk_delay_ms": 5, "fail_after_chunks": 3, "break_with": "disconnect", "stream": false}"#,
    )
    .await;
    assert_eq!(body["chunks"], 7);
    assert_eq!(body["chunk_delay_ms"], 5);
    assert_eq!(body["fail_after_chunks"], 3);
    assert_eq!(body["break_with"], "disconnect");
    assert_eq!(body["stream"], false);
    let (_, body) = post_behaviour(&stub, r#"{"fail_after_chunks": null}"#).await;
    assert_eq!(body["fail_after_chunks"], Value::Null);
    assert_eq!(body["chunks"], 7);

    for bad in [
        r#"{"fail_status": 99}"#,
        r#"{"delay": 5}"#,
        r#"{"chunks": 0}"#,
        r#"{"break_with": "explode"}"#,
        "not json",
    ] {
        let (status, body) = post_behaviour(&stub, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}");
    }
    assert_eq!(
        get(&stub, "/_stub/behaviour").await.1["fail_status"],
        Value::Null
    );
}
