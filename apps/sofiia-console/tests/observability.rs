//! Health, readiness, metrics, request ids and JSON logs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ALICE, ConsoleBuilder, stub};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_need_no_token() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let health = console
        .request(Method::GET, "/api/health", None, &[], None)
        .await;
    assert_eq!(health.status, 200);
    let h = health.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["git_sha"].as_str().is_some_and(|s| !s.is_empty()));

    let ready = console
        .request(Method::GET, "/api/ready", None, &[], None)
        .await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let r = ready.json();
    assert_eq!(r["status"], "ready");
    assert_eq!(r["checks"]["chat_index"]["status"], "ok");
    // The embedded defaults, named as the configuration names them.
    assert_eq!(r["checks"]["chat_index"]["backend"], "sqlite");
    assert_eq!(r["checks"]["idempotency"]["backend"], "sqlite");
    assert_eq!(r["checks"]["rate_limiter"]["backend"], "inmemory");
    assert_eq!(r["checks"]["audit"]["backend"], "sqlite");
    assert_eq!(r["nodes"]["NODA1"]["status"], "ok");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_contract_names_with_bounded_labels() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    for i in 0..3 {
        let res = console
            .send_text(&format!("chat-{i}"), &format!("key-000000{i}"), "x")
            .await;
        assert_eq!(res.status, 200);
    }
    console.get("/api/chats/chat-0/messages", ALICE).await;
    console.get("/api/chats/nope", ALICE).await;
    console
        .request(Method::GET, "/no/such/path", None, &[], None)
        .await;

    let metrics = console
        .request(Method::GET, "/metrics", None, &[], None)
        .await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text;
    for name in [
        "sofiia_http_requests_total{",
        "sofiia_http_request_duration_seconds_bucket{",
        "sofiia_infer_total{",
        "sofiia_infer_duration_seconds_bucket{",
        "sofiia_build_info{",
        "sofiia_audit_write_failures_total ",
        "sofiia_idempotency_evictions_total ",
        "sofiia_idempotency_total{",
        "sofiia_ratelimit_total{",
        "sofiia_audit_events_total{",
        "sofiia_backend_up{",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("sofiia_http_requests_total{")
                && l.contains(r#"route="/api/chats/{chat_id}/send""#)
                && l.contains(r#"status="200""#)
                && l.contains(r#"method="POST""#)),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("sofiia_infer_total{")
            && l.contains(r#"node="NODA1""#)
            && l.contains(r#"outcome="ok""#)),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    // Route templates, never raw paths: no chat id appears in any label.
    assert!(
        !text.contains("chat-1"),
        "a raw path leaked into a label:\n{text}"
    );
    assert!(!text.contains("/no/such/path"), "{text}");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_sane_and_made_otherwise() {
    let console = ConsoleBuilder::new().start().await;
    let kept = console
        .request(
            Method::GET,
            "/api/health",
            None,
            &[("x-request-id", "abc-123:x.y_z")],
            None,
        )
        .await;
    assert_eq!(kept.header("x-request-id"), Some("abc-123:x.y_z"));
    let long = "r".repeat(200);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let res = console
            .request(
                Method::GET,
                "/api/health",
                None,
                &[("x-request-id", bad)],
                None,
            )
            .await;
        let id = res.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert!(!id.is_empty());
    }
    let made = console
        .request(Method::GET, "/api/health", None, &[], None)
        .await;
    let a = made.header("x-request-id").unwrap().to_owned();
    let again = console
        .request(Method::GET, "/api/health", None, &[], None)
        .await;
    assert_ne!(Some(a.as_str()), again.header("x-request-id"));
    // Errors carry the same id in the body.
    let p = console
        .request(
            Method::GET,
            "/api/chats",
            None,
            &[("x-request-id", "trace-42")],
            None,
        )
        .await
        .problem(401);
    assert_eq!(p["request_id"], "trace-42");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_is_json_with_flow_fields_and_no_secrets() {
    let console = ConsoleBuilder::new().start().await;
    let secret_text = "the launch code is 0000";
    let res = console
        .request(
            Method::POST,
            "/api/chats/logged/send",
            Some(ALICE),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "key-logged-1"),
                ("x-request-id", "req-send-1"),
            ],
            Some(serde_json::to_vec(&json!({ "text": secret_text })).unwrap()),
        )
        .await;
    assert_eq!(res.status, 200);
    console
        .get("/api/chats/logged/messages?limit=1", ALICE)
        .await;

    let lines = console.logs.lines();
    let send = lines
        .iter()
        .find(|l| l["flow"] == "send" && l["request_id"] == "req-send-1")
        .unwrap_or_else(|| panic!("no send flow line in {lines:?}"));
    assert_eq!(send["operator"], "alice");
    assert_eq!(send["chat_id"], "logged");
    assert_eq!(send["status"], 200);
    assert!(send["latency_ms"].is_u64());
    let request = lines
        .iter()
        .find(|l| l["flow"] == "request" && l["request_id"] == "req-send-1")
        .unwrap();
    assert_eq!(request["route"], "/api/chats/{chat_id}/send");
    assert_eq!(request["status"], 200);
    assert_eq!(request["operator"], "alice");
    assert!(request["latency_ms"].is_u64());
    assert!(
        lines
            .iter()
            .any(|l| l["flow"] == "pagination" && l["list"] == "messages")
    );

    let all = console.logs.text();
    assert!(!all.contains(secret_text), "message text reached the log");
    assert!(
        !all.contains("echo: the launch"),
        "reply text reached the log"
    );
    assert!(!all.contains(ALICE), "a token reached the log");
    console.stop().await;
}

/// Readiness is cached for a second and probed by one caller at a time: any
/// rate of `/api/ready` makes at most one probe per node per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readiness_calls_make_a_handful_of_node_probes() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let before = node.health_check_count();
    let calls = (0..200).map(|_| console.request(Method::GET, "/api/ready", None, &[], None));
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let probes = node.health_check_count() - before;
    // At most one round, or two if the calls straddle the second the cache
    // lasts, plus one of the background prober (whose round may also serve
    // them all).
    assert!(probes <= 3, "200 readiness calls made {probes} node probes");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_token_and_names_the_nodes() {
    let noda1 = stub("NODA1").await;
    let noda2 = stub("NODA2").await;
    let console = ConsoleBuilder::new().nodes(&[&noda1, &noda2]).start().await;
    let res = console
        .request(Method::GET, "/api/openapi.json", None, &[], None)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert!(res.header("x-request-id").is_some());
    let doc = res.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["schemas"]["ConfiguredNode"]["enum"],
        json!(["NODA1", "NODA2"])
    );
    // The send documents its headers: the key it needs, the quota it reports.
    let send = &doc["paths"]["/api/chats/{chat_id}/send"]["post"];
    let headers: Vec<&str> = send["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(headers.contains(&"Idempotency-Key"), "{headers:?}");
    let ok = &send["responses"]["200"]["headers"];
    for header in ["RateLimit-Policy", "RateLimit", "X-Request-Id"] {
        assert!(ok[header].is_object(), "200 lacks {header}: {ok}");
    }
    assert!(send["responses"]["429"]["headers"]["Retry-After"].is_object());
    // Every error is a problem document.
    for (status, response) in send["responses"].as_object().unwrap() {
        if status.starts_with('4') || status.starts_with('5') {
            assert!(
                response["content"]["application/problem+json"].is_object(),
                "{status} is not a problem"
            );
        }
    }
    // Served twice, byte for byte the same document.
    let again = console
        .request(Method::GET, "/api/openapi.json", Some(ALICE), &[], None)
        .await;
    assert_eq!(again.text, res.text);
    console.stop().await;
}
