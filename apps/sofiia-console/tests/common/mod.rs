//! Shared harness of the end-to-end tests: real router-stub nodes over HTTP,
//! the real app composed by `build_state`, served on a loopback port, and a
//! real HTTP client.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

pub mod faults;
pub mod process;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sofiia_console::config::Settings;
use sofiia_console::server::{self, RunningServer};
use sofiia_console::state::AppState;
use sofiia_console::telemetry::json_logger_sync;
use sofiia_core_domain::{DynClock, NodeId};
use sofiia_router_stub::{StubConfig, StubHandle, StubNode};
use tempfile::TempDir;

pub const ALICE: &str = "alice-token-0001";
pub const BOB: &str = "bob-token-00002";
pub const AUDIT_KEY: &str = "audit-key-new-0001";
pub const AUDIT_KEY_OLD: &str = "audit-key-old-0002";

/// Log lines written by a console under test.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, parsed; panics on a line that is not a JSON object.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
                assert!(v.is_object(), "log line is not an object: {l}");
                v
            })
            .collect()
    }

    pub fn flows(&self, flow: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["flow"] == flow)
            .collect()
    }
}

pub async fn stub(name: &str) -> StubHandle {
    stub_with(name, Duration::ZERO, None).await
}

pub async fn stub_with(name: &str, delay: Duration, fail_status: Option<u16>) -> StubHandle {
    StubNode::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        StubConfig::new(NodeId::new(name).unwrap())
            .with_delay(delay)
            .with_fail_status(fail_status),
    )
    .unwrap()
}

/// Builds a console for one test.
pub struct ConsoleBuilder {
    vars: BTreeMap<String, String>,
    clock: Option<Arc<DynClock>>,
    audit: Option<Arc<sofiia_audit_store::DynAuditStore>>,
    chat_index: Option<Arc<sofiia_chat_index::DynChatIndexStore>>,
    dir: TempDir,
}

impl ConsoleBuilder {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("SOFIIA_BIND".into(), "127.0.0.1:0".into());
        vars.insert(
            "SOFIIA_DATA_DIR".into(),
            dir.path().to_str().unwrap().to_owned(),
        );
        vars.insert(
            "SOFIIA_OPERATOR_TOKENS".into(),
            format!("alice:{ALICE},bob:{BOB}"),
        );
        vars.insert("SOFIIA_WORKERS".into(), "2".into());
        vars.insert(
            "SOFIIA_AUDIT_KEYS".into(),
            format!("{AUDIT_KEY},{AUDIT_KEY_OLD}"),
        );
        // Short timeouts, so that a test of a slow node or a stalled store
        // ends quickly, and a stop waits at most a few seconds.
        vars.insert("SOFIIA_INFER_TIMEOUT_MS".into(), "5000".into());
        vars.insert("SOFIIA_STORE_TIMEOUT_MS".into(), "500".into());
        Self {
            vars,
            clock: None,
            audit: None,
            chat_index: None,
            dir,
        }
    }

    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }

    pub fn without(mut self, k: &str) -> Self {
        self.vars.remove(k);
        self
    }

    pub fn nodes(self, nodes: &[&StubHandle]) -> Self {
        let list = nodes
            .iter()
            .map(|n| format!("{}={}", n.name(), n.base_url()))
            .collect::<Vec<_>>()
            .join(",");
        self.var("SOFIIA_NODES", &list)
    }

    /// Replaces the chat index (for failure injection).
    pub fn chat_index(mut self, index: Arc<sofiia_chat_index::DynChatIndexStore>) -> Self {
        self.chat_index = Some(index);
        self
    }

    /// Replaces the audit store (for failure injection).
    pub fn audit(mut self, audit: Arc<sofiia_audit_store::DynAuditStore>) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn clock(mut self, clock: Arc<DynClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Every backend that can use Redis uses the test Redis, under the
    /// context's prefix.
    pub fn redis(self, ctx: &sofiia_testkit::RedisTestContext) -> Self {
        if ctx.cluster {
            self.redis_cluster_at(&ctx.url, &ctx.prefix)
        } else {
            self.redis_at(&ctx.url, &ctx.prefix)
        }
    }

    /// Idempotency and rate limits on the Redis Cluster of `nodes`.
    pub fn redis_cluster_at(self, nodes: &str, prefix: &str) -> Self {
        self.redis_at("redis://127.0.0.1:1", prefix)
            .var("SOFIIA_REDIS_CLUSTER_NODES", nodes)
    }

    /// Every backend that can use Redis, the chat index included, uses the
    /// test Redis under the context's prefix: consoles built so with one
    /// context behave as one console.
    pub fn redis_everywhere(self, ctx: &sofiia_testkit::RedisTestContext) -> Self {
        // One cursor secret too, as instances that page each other's lists
        // must share it.
        let secret = format!("cursor-secret-{}", ctx.prefix).replace(':', "-");
        self.redis(ctx)
            .var("SOFIIA_CHAT_INDEX_BACKEND", "redis")
            .var("SOFIIA_CURSOR_SECRET", &format!("{secret:-<32}"))
    }

    pub fn redis_at(self, url: &str, prefix: &str) -> Self {
        self.var("SOFIIA_REDIS_URL", url)
            .var("SOFIIA_REDIS_PREFIX", prefix)
            .var("SOFIIA_IDEMPOTENCY_BACKEND", "redis")
            .var("SOFIIA_RATE_LIMIT_BACKEND", "redis")
    }

    /// The data dir, to share it with a second console.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().to_owned()
    }

    pub async fn start(self) -> Console {
        let settings = Settings::from_vars(&self.vars).unwrap();
        let logs = LogBuf::default();
        let logger = json_logger_sync(logs.clone());
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(sofiia_core_domain::SystemClock));
        let mut stores = server::open_stores(&settings, clock, &logger)
            .await
            .unwrap();
        // A replaced store is not in the data dir's file: every write is
        // synced on its own again.
        if let Some(audit) = self.audit {
            stores.audit = audit;
            stores.one_sqlite_file = false;
        }
        if let Some(index) = self.chat_index {
            stores.chat_index = index;
            stores.one_sqlite_file = false;
        }
        let state = server::compose(&settings, stores, logger);
        let server = server::start(&settings, state.clone()).unwrap();
        Console {
            base: server.base_url(),
            server: Some(server),
            client: reqwest::Client::new(),
            logs,
            state,
            dir: self.dir,
        }
    }
}

pub struct Console {
    pub base: String,
    server: Option<RunningServer>,
    pub client: reqwest::Client,
    pub logs: LogBuf,
    pub state: AppState,
    pub dir: TempDir,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem with `status` and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        let p = self.json();
        for field in ["type", "title", "detail", "request_id"] {
            assert!(p[field].is_string(), "problem lacks {field}: {p}");
        }
        assert_eq!(p["status"], status);
        assert_eq!(
            Some(p["request_id"].as_str().unwrap()),
            self.header("x-request-id"),
            "the problem's request_id must be the X-Request-Id header"
        );
        p
    }
}

impl Console {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let res = req.send().await.unwrap();
        Answer {
            status: res.status(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request(Method::GET, path, Some(token), &[], None)
            .await
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.request(
            Method::POST,
            path,
            Some(token),
            &[("content-type", "application/json")],
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    pub async fn send(&self, token: &str, chat: &str, key: &str, body: &Value) -> Answer {
        self.request(
            Method::POST,
            &format!("/api/chats/{chat}/send"),
            Some(token),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// Retries a send while it answers 503 `send-not-stored-yet` (its node
    /// answered, its exchange is being stored), a bounded number of times;
    /// the first other answer.
    pub async fn send_until_stored(
        &self,
        token: &str,
        chat: &str,
        key: &str,
        body: &Value,
    ) -> Answer {
        for _ in 0..200 {
            let res = self.send(token, chat, key, body).await;
            let storing = res.status == StatusCode::SERVICE_UNAVAILABLE
                && res.text.contains("send-not-stored-yet");
            if !storing {
                return res;
            }
            assert!(res.header("retry-after").is_some(), "{}", res.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the send of key {key} was never stored");
    }

    pub async fn send_text(&self, chat: &str, key: &str, text: &str) -> Answer {
        self.send(ALICE, chat, key, &json!({ "text": text })).await
    }

    /// Every item of a list endpoint, walking `next_cursor` with `limit`.
    pub async fn walk(&self, path: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let mut url = format!("{path}{sep}limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&url, ALICE).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            let page = page.json();
            let got = page["items"].as_array().unwrap();
            assert!(got.len() <= limit);
            items.extend(got.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert!(
                        !got.is_empty(),
                        "a page with a next cursor must not be empty"
                    );
                    cursor = Some(c.to_owned());
                }
                None => break,
            }
        }
        items
    }

    /// The audit trail as `/api/audit` returns it, newest first, every page.
    pub async fn audit_events(&self, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("/api/audit?limit=200{query}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self
                .request(Method::GET, &url, None, &[("x-audit-key", AUDIT_KEY)], None)
                .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            let page = page.json();
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        items
    }

    /// The value of a counter or gauge line of `/metrics`, or 0.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .request(Method::GET, "/metrics", None, &[], None)
            .await
            .text;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
    }

    /// Stops the console and hands its data dir over, to read its files.
    pub async fn stop_keeping_dir(mut self) -> TempDir {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        self.dir
    }
}
