//! Streamed sends (`Accept: text/event-stream`) end to end, with the console
//! and `router-stub` nodes over real HTTP: pieces as the node writes them,
//! one node call per key, retries that attach to a running send, replays,
//! failures before and after the first event, keep-alive comments.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::{Stream, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sofiia_router_stub::{StreamBreak, StreamConfig, StubHandle};

use common::{ALICE, Console, ConsoleBuilder, stub};

/// A send asking for an event stream.
async fn open(console: &Console, chat: &str, key: &str, text: &str) -> reqwest::Response {
    console
        .client
        .post(format!("{}/api/chats/{chat}/send", console.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("idempotency-key", key)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap()
}

#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
}

fn events(res: reqwest::Response) -> impl Stream<Item = Event> + Unpin {
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Box::pin(res.bytes_stream().eventsource().map(|e| {
        let e = e.expect("a well-formed event stream");
        Event {
            name: e.event,
            data: serde_json::from_str(&e.data).expect("JSON data"),
        }
    }))
}

/// Every event until the stream ends.
async fn all(stream: impl Stream<Item = Event> + Unpin) -> Vec<Event> {
    tokio::time::timeout(Duration::from_secs(20), stream.collect())
        .await
        .expect("the stream ends")
}

/// The deltas joined, and the final event.
fn joined(events: &[Event]) -> (String, &Event) {
    let (last, deltas) = events.split_last().expect("at least one event");
    assert!(deltas.iter().all(|e| e.name == "delta"), "{events:?}");
    let text = deltas
        .iter()
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    (text, last)
}

fn streaming(chunks: usize, delay_ms: u64) -> StreamConfig {
    let mut config = StreamConfig::default();
    config.chunks = chunks;
    config.chunk_delay = Duration::from_millis(delay_ms);
    config
}

async fn node(config: StreamConfig) -> StubHandle {
    let node = stub("NODA1").await;
    node.set_stream(config).unwrap();
    node
}

async fn messages(console: &Console, chat: &str) -> Vec<Value> {
    let page = console
        .get(&format!("/api/chats/{chat}/messages"), ALICE)
        .await;
    page.json()["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_sends_deltas_join_to_the_stored_reply_with_one_node_call() {
    let node = node(streaming(5, 20)).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let res = open(&console, "s1", "stream-key-0001", "how are the disks?").await;
    assert_eq!(res.headers().get("idempotent-replayed"), None);
    // What the quotas left, as on a JSON answer.
    for field in ["ratelimit-policy", "ratelimit"] {
        assert!(
            res.headers().contains_key(field),
            "{field}: {:?}",
            res.headers()
        );
    }
    let events = all(events(res)).await;
    assert_eq!(events.len(), 6, "five deltas and done: {events:?}");
    let (text, done) = joined(&events);
    assert_eq!(done.name, "done");
    assert_eq!(done.data["reply"]["text"], text);
    assert_eq!(text, "[NODA1] echo: how are the disks?");
    assert_eq!(node.call_count(), 1);
    let stored = messages(&console, "s1").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["text"], text, "newest first: the reply");
    assert_eq!(stored[0]["id"], done.data["reply"]["id"]);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_key_stream_retry_mid_stream_gets_the_whole_text_once() {
    let node = node(streaming(6, 150)).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let mut first = events(open(&console, "s2", "stream-key-0002", "tell me everything").await);
    let opening = first.next().await.unwrap();
    assert_eq!(opening.name, "delta");
    // Attach while the node is still writing.
    let retry = open(&console, "s2", "stream-key-0002", "tell me everything").await;
    assert_eq!(
        retry.headers()["idempotent-replayed"].to_str().unwrap(),
        "true"
    );
    assert!(
        !retry.headers().contains_key("ratelimit"),
        "an attached retry spent no quota"
    );
    let attached = all(events(retry)).await;
    let rest = all(first).await;
    let (retry_text, retry_done) = joined(&attached);
    assert_eq!(retry_text, "[NODA1] echo: tell me everything");
    assert_eq!(retry_done.name, "done");
    let mut original = vec![opening];
    original.extend(rest);
    let (first_text, first_done) = joined(&original);
    assert_eq!(first_text, retry_text);
    assert_eq!(first_done.data, retry_done.data);
    assert_eq!(node.call_count(), 1);
    assert_eq!(messages(&console, "s2").await.len(), 2);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_retry_waits_for_the_running_send_and_replays_it() {
    let node = node(streaming(4, 100)).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let mut first = events(open(&console, "s3", "stream-key-0003", "status?").await);
    first.next().await.unwrap();
    let retry = console.send_text("s3", "stream-key-0003", "status?").await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let rest = all(first).await;
    assert_eq!(retry.json(), rest.last().unwrap().data);
    assert_eq!(node.call_count(), 1);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_after_the_first_chunk_cancels_nothing() {
    let node = node(streaming(4, 150)).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let mut stream = events(open(&console, "s4", "stream-key-0004", "long one").await);
    assert_eq!(stream.next().await.unwrap().name, "delta");
    drop(stream);
    // The send goes on without its client; a JSON retry gets its answer.
    let retry = console
        .send_until_stored(ALICE, "s4", "stream-key-0004", &json!({"text": "long one"}))
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["reply"]["text"], "[NODA1] echo: long one");
    assert_eq!(node.call_count(), 1);
    assert_eq!(messages(&console, "s4").await.len(), 2);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replay_after_completion_streams_the_whole_reply() {
    let node = node(streaming(3, 0)).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let sent = console
        .send_text("s5", "stream-key-0005", "done yet?")
        .await;
    assert_eq!(sent.status, 200);
    let res = open(&console, "s5", "stream-key-0005", "done yet?").await;
    assert_eq!(
        res.headers()["idempotent-replayed"].to_str().unwrap(),
        "true"
    );
    let events = all(events(res)).await;
    let (text, done) = joined(&events);
    assert_eq!(text, "[NODA1] echo: done yet?");
    assert_eq!(done.name, "done");
    assert_eq!(done.data, sent.json());
    assert_eq!(node.call_count(), 1);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_stream_still_answers_a_stream() {
    let mut config = streaming(4, 0);
    config.enabled = false;
    let node = node(config).await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let events = all(events(
        open(&console, "s6", "stream-key-0006", "plain").await,
    ))
    .await;
    assert_eq!(events.len(), 2, "one delta, then done: {events:?}");
    let (text, done) = joined(&events);
    assert_eq!(text, "[NODA1] echo: plain");
    assert_eq!(done.data["reply"]["text"], text);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_mid_stream_is_an_error_event_and_the_key_keeps_it() {
    for (i, how) in [StreamBreak::ErrorEvent, StreamBreak::Disconnect]
        .into_iter()
        .enumerate()
    {
        let mut config = streaming(4, 20);
        config.fail_after_chunks = Some(2);
        config.break_with = how;
        let node = node(config).await;
        let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
        let key = format!("broken-key-000{i}");
        let events = all(events(open(&console, "s7", &key, "break please").await)).await;
        assert_eq!(events.len(), 3, "{how:?}: {events:?}");
        let error = &events[2];
        assert_eq!(error.name, "error");
        assert_eq!(error.data["type"], "urn:sofiia:problem:node-interrupted");
        assert_eq!(error.data["status"], 502);
        assert!(error.data["request_id"].is_string());
        // Nothing of it is stored as a reply.
        assert!(messages(&console, "s7").await.is_empty());
        // The node was reached: a retry gets the same failure, replayed,
        // and the node is not called again.
        let retry = console.send_text("s7", &key, "break please").await;
        assert_eq!(retry.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            retry.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        // The kept answer, byte for byte: it names the request that ran.
        assert_eq!(retry.json(), error.data);
        let streamed_retry = open(&console, "s7", &key, "break please").await;
        assert_eq!(streamed_retry.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(node.call_count(), 1, "{how:?}");
        let failed = console.audit_events("&action=chat.send").await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["outcome"], "error");
        assert_eq!(failed[0]["details"]["error"], "node-interrupted");
        console.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_first_event_keep_their_status_and_free_the_key() {
    let node = node(streaming(3, 0)).await;
    node.set_fail_status(Some(500)).unwrap();
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_CHAT", "2/min")
        .start()
        .await;
    let res = open(&console, "s8", "early-key-0001", "hello").await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    // Released: the retry runs again, and streams.
    node.set_fail_status(None).unwrap();
    let events = all(events(
        open(&console, "s8", "early-key-0001", "hello").await,
    ))
    .await;
    assert_eq!(joined(&events).0, "[NODA1] echo: hello");
    assert_eq!(node.call_count(), 2);
    // The chat's quota (2/min) is spent by the two sends that ran.
    let res = open(&console, "s8", "early-key-0002", "again").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(node.call_count(), 2);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pauses_carry_keep_alive_comments() {
    let node = node(streaming(2, 700)).await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_SSE_KEEP_ALIVE_MS", "200")
        .start()
        .await;
    let res = open(&console, "s9", "quiet-key-0001", "take your time").await;
    assert_eq!(res.status(), StatusCode::OK);
    let raw = res.text().await.unwrap();
    // The first piece comes after 700 ms: comments fill the silence, and
    // more than the one sent as the stream opens.
    let comments = raw.matches(": keep-alive").count();
    assert!(comments >= 2, "{raw}");
    assert!(raw.contains("event: done"), "{raw}");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_echo_node_streams_word_by_word() {
    let console = ConsoleBuilder::new().start().await;
    let events = all(events(
        open(&console, "s10", "echo-key-0001", "one two three").await,
    ))
    .await;
    let (text, done) = joined(&events);
    assert_eq!(text, "echo: one two three");
    assert_eq!(events.len(), 5, "four words, then done: {events:?}");
    assert_eq!(done.data["node"], "echo");
    console.stop().await;
}
