//! The operator web page in a real browser: Debian's Chromium over
//! WebDriver (chromedriver, driven by fantoccini), against the console
//! binary (`SOFIIA_CONSOLE_BIN`, the release build in CI; else this test's
//! own build) and `router-stub` nodes over HTTP.
//!
//! Without chromium and chromedriver the browser test is skipped with a
//! note, unless `SOFIIA_REQUIRE_BROWSER=1` (CI). It writes screenshots of
//! the main views to `target/screenshots`, or to `docs/screenshots` with
//! `SOFIIA_UPDATE_SCREENSHOTS=1`.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../common/mod.rs"]
mod common;
mod driver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use fantoccini::actions::{InputSource as _, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use serde_json::{Value, json};
use sofiia_router_stub::StreamConfig;

use common::process::{ConsoleProcess, clean_command};
use common::proxy::TcpProxy;
use common::{ALICE, AUDIT_KEY, stub};
use driver::Browser;

fn console_command(dir: &Path, nodes: &str) -> Command {
    let mut cmd = match std::env::var_os("SOFIIA_CONSOLE_BIN") {
        Some(bin) => {
            let mut cmd = Command::new(bin);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("SOFIIA_") {
                    cmd.env_remove(key);
                }
            }
            cmd
        }
        None => clean_command(),
    };
    cmd.env("SOFIIA_BIND", "127.0.0.1:0")
        .env("SOFIIA_DATA_DIR", dir)
        .env("SOFIIA_WORKERS", "2")
        .env("SOFIIA_OPERATOR_TOKENS", format!("alice:{ALICE}"))
        .env("SOFIIA_AUDIT_KEYS", AUDIT_KEY)
        .env("SOFIIA_NODES", nodes);
    cmd
}

fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = if std::env::var("SOFIIA_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root.join("docs/screenshots")
    } else {
        root.join("target/screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the API says: `GET path` with the operator token.
async fn api(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn api_send(base: &str, chat: &str, key: &str, text: &str) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/chats/{chat}/send"))
        .bearer_auth(ALICE)
        .header("idempotency-key", key)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "seeding {chat}: {}",
        res.text().await.unwrap()
    );
}

async fn sign_in(b: &Browser, base: &str) {
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.type_into("#token", ALICE).await;
    b.click(".signin button[type=submit]").await;
    b.text_of("#chats-heading").await;
}

/// Every request the browser made went to the console that served the page.
async fn only_the_console_was_asked(b: &Browser, base: &str) {
    let urls = b.requested_urls().await;
    assert!(!urls.is_empty(), "the performance log recorded no request");
    // `data:` URLs (Chromium's own icons of form controls) reach no host.
    for url in urls.iter().filter(|u| !u.starts_with("data:")) {
        assert!(
            url.starts_with(&format!("{base}/")),
            "the page asked another host: {url}"
        );
    }
    let problems: Vec<Value> = b
        .log("browser")
        .await
        .into_iter()
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or_default();
            m.contains("Content Security Policy") || m.contains("Uncaught")
        })
        .collect();
    assert!(problems.is_empty(), "the console logged: {problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_chats_through_the_page() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let shots = screenshot_dir();
    let node1 = stub("NODA1").await;
    let node2 = stub("NODA2").await;
    let nodes = format!("NODA1={},NODA2={}", node1.base_url(), node2.base_url());
    let dir = tempfile::tempdir().unwrap();
    let mut console = ConsoleProcess::spawn({
        let mut cmd = console_command(dir.path(), &nodes);
        cmd.env("SOFIIA_RATE_LIMIT_CHAT", "100000/min")
            .env("SOFIIA_RATE_LIMIT_OPERATOR", "100000/min");
        cmd
    });
    // The page reaches the console through a proxy the test can cut: a
    // network failure while a send is in flight.
    let direct = console.base.clone();
    let proxy = TcpProxy::start(direct.trim_start_matches("http://").parse().unwrap()).await;
    let base = format!("http://{}", proxy.addr);
    b.size(1280, 860).await;

    // Sign in: a wrong token is refused with a clear message.
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.type_into("#token", "not-the-token-0000").await;
    b.click(".signin button[type=submit]").await;
    let refused = b.text_of("#signin-error").await;
    assert!(refused.contains("401"), "{refused}");
    assert_eq!(
        b.js("return sessionStorage.length", vec![]).await,
        json!(0),
        "a refused token is not kept"
    );
    b.type_into("#token", ALICE).await;
    b.click(".signin button[type=submit]").await;
    b.text_of("#chats-heading").await;
    assert_eq!(
        b.js("return document.cookie", vec![]).await,
        json!(""),
        "no cookie"
    );
    assert!(
        !b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(ALICE),
        "the token is not in the URL"
    );

    // Create a chat on NODA1, whose replies stream in four slow pieces.
    let mut slow = StreamConfig::default();
    slow.chunks = 4;
    slow.chunk_delay = Duration::from_millis(400);
    node1.set_stream(slow).unwrap();
    b.click(".new-chat-toggle").await;
    b.type_into("#new-title", "Disk checks").await;
    b.until(
        "the node choices",
        "return [...document.querySelectorAll('#new-node option')].some(o => o.value === 'NODA1')",
        vec![],
    )
    .await;
    b.js(
        "const s = document.querySelector('#new-node'); s.value = 'NODA1'; return true;",
        vec![],
    )
    .await;
    b.click(".new-chat button[type=submit]").await;
    b.wait_text("#chat-heading", "Disk checks").await;
    let chat_id = b
        .until(
            "the chat's id in the URL",
            "const m = location.hash.match(/^#\\/chats\\/(.+)$/); return m && decodeURIComponent(m[1]);",
            vec![],
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // Send with the keyboard: the reply streams in, then settles.
    b.type_into("#message", "how are the disks?\n").await;
    let partial = b
        .until(
            "a part of the reply while it streams",
            "const p = document.querySelector('li.msg.agent.pending .text'); return p && p.textContent;",
            vec![],
        )
        .await;
    let reply = b.text_of("li.msg.agent:not(.pending) .text").await;
    assert_eq!(reply, "[NODA1] echo: how are the disks?");
    let partial = partial.as_str().unwrap();
    assert!(
        partial.len() < reply.len() && reply.starts_with(partial),
        "{partial:?} is a beginning of {reply:?}"
    );
    assert_eq!(
        b.text_of("li.msg.agent:not(.pending) .node").await,
        "NODA1",
        "the node that answered is shown"
    );
    assert_eq!(node1.call_count(), 1);
    node1.set_stream(StreamConfig::default()).unwrap();

    // A double click on Send: one exchange, one node call.
    b.type_into("#message", "double click me").await;
    let send = b.client.find(Locator::Css("#send")).await.unwrap();
    let mouse = MouseActions::new("mouse".to_owned())
        .then(PointerAction::MoveToElement {
            element: send,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    b.client.perform_actions(mouse).await.unwrap();
    b.until(
        "the double-clicked message answered",
        "return [...document.querySelectorAll('li.msg.agent:not(.pending) .text')].some(t => t.textContent === '[NODA1] echo: double click me')",
        vec![],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node1.call_count(), 2, "one node call for the double click");
    let stored = api(&direct, &format!("/api/chats/{chat_id}/messages")).await;
    let texts: Vec<&str> = stored["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts.iter().filter(|t| **t == "double click me").count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        b.js(
            "return [...document.querySelectorAll('li.msg.operator .text')].filter(t => t.textContent === 'double click me').length",
            vec![],
        )
        .await,
        json!(1)
    );

    // The network fails while the node is still answering: the page
    // retries with the same key and shows the first delivery's answer,
    // replayed; the node was called once.
    node1.set_delay(Duration::from_millis(1500));
    b.type_into("#message", "are you there?\n").await;
    b.text_of("li.msg.agent.pending").await;
    proxy.cut();
    b.text_of("li.msg.agent.pending .badge.warn").await;
    proxy.heal();
    b.until(
        "the replayed answer",
        "const r = [...document.querySelectorAll('li.msg.agent:not(.pending)')].pop(); \
         return r && r.querySelector('.text').textContent === '[NODA1] echo: are you there?' && r.querySelector('.badge')?.textContent;",
        vec![],
    )
    .await;
    assert_eq!(node1.call_count(), 3, "one node call through the retries");

    // A reload while a send is in flight: the page sends it again under its
    // key when the chat opens; one message, one node call.
    b.type_into("#message", "survive a reload\n").await;
    b.text_of("li.msg.agent.pending").await;
    b.client.refresh().await.unwrap();
    b.until(
        "the message answered after the reload",
        "return [...document.querySelectorAll('li.msg.agent:not(.pending) .text')] \
           .some(t => t.textContent === '[NODA1] echo: survive a reload') \
           && !document.querySelector('li.msg.pending');",
        vec![],
    )
    .await;
    node1.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.js(
            "return [...document.querySelectorAll('li.msg.operator .text')].filter(t => t.textContent === 'survive a reload').length",
            vec![],
        )
        .await,
        json!(1)
    );
    assert_eq!(node1.call_count(), 4, "one node call across the reload");
    assert_eq!(
        b.js("return sessionStorage.getItem('sofiia.outbox')", vec![])
            .await,
        Value::Null,
        "nothing left to send"
    );

    // A node that breaks off mid-reply: its key keeps the failure, so the
    // page offers the message again under a new key.
    let mut breaking = StreamConfig::default();
    breaking.fail_after_chunks = Some(1);
    node1.set_stream(breaking).unwrap();
    b.type_into("#message", "break please\n").await;
    b.wait_text("li.msg.agent.failed .badge.error", "reply broken off")
        .await;
    node1.set_stream(StreamConfig::default()).unwrap();
    b.wait_text("li.msg.agent.failed .resend", "Send as a new message")
        .await;
    b.click("li.msg.agent.failed .resend").await;
    b.until(
        "the message answered under a new key",
        "return [...document.querySelectorAll('li.msg.agent:not(.pending) .text')] \
           .some(t => t.textContent === '[NODA1] echo: break please');",
        vec![],
    )
    .await;
    assert_eq!(node1.call_count(), 6, "the broken call and the new one");
    b.screenshot(&shots.join("chat-desktop.png")).await;

    // A reload keeps the session (this tab) and shows the history.
    b.client.refresh().await.unwrap();
    b.wait_text("#chat-heading", "Disk checks").await;
    let history = b
        .until(
            "the history after a reload",
            "const t = [...document.querySelectorAll('ol.messages li .text')].map(e => e.textContent); return t.length === 10 && t;",
            vec![],
        )
        .await;
    assert_eq!(
        history,
        json!([
            "how are the disks?",
            "[NODA1] echo: how are the disks?",
            "double click me",
            "[NODA1] echo: double click me",
            "are you there?",
            "[NODA1] echo: are you there?",
            "survive a reload",
            "[NODA1] echo: survive a reload",
            "break please",
            "[NODA1] echo: break please"
        ])
    );

    // 120 messages: the newest page first, older pages as the operator
    // scrolls up, each message once and in order.
    for i in 1..=60 {
        api_send(
            &base,
            "long-chat",
            &format!("seed-long-{i:03}"),
            &format!("message {i:03}"),
        )
        .await;
    }
    // And enough chats for the list to page too.
    for i in 1..=32 {
        api_send(
            &base,
            &format!("busy-{i:02}"),
            &format!("seed-chat-{i:02}"),
            "hello",
        )
        .await;
    }
    b.client
        .goto(&format!("{base}/#/chats/long-chat"))
        .await
        .unwrap();
    b.text_of("#chat-heading").await;
    b.until(
        "the newest page",
        "return document.querySelectorAll('ol.messages li').length >= 50",
        vec![],
    )
    .await;
    let all = b
        .until(
            "every page of the chat",
            "const h = document.querySelector('.history'); h.scrollTop = 0; \
             const t = [...document.querySelectorAll('ol.messages li .text')].map(e => e.textContent); \
             return t.length >= 120 && document.querySelector('.history .list-status').textContent.includes('beginning') && t;",
            vec![],
        )
        .await;
    let expected: Vec<String> = (1..=60)
        .flat_map(|i| {
            [
                format!("message {i:03}"),
                format!("[NODA1] echo: message {i:03}"),
            ]
        })
        .collect();
    assert_eq!(all, json!(expected));

    // The chat list pages as it scrolls: 30 at first, all 34 after.
    b.client.goto(&format!("{base}/#/chats")).await.unwrap();
    b.until(
        "the first page of chats",
        "return document.querySelectorAll('.chat-items li').length === 30",
        vec![],
    )
    .await;
    let titles = b
        .until(
            "every chat",
            "const s = document.querySelector('.chats .scroll'); s.scrollTop = s.scrollHeight; \
             const t = [...document.querySelectorAll('.chat-items .chat-title')].map(e => e.textContent); \
             return t.length === 34 && t;",
            vec![],
        )
        .await;
    assert_eq!(titles[0], "busy-32", "most recently active first");
    assert_eq!(titles[33], "Disk checks");
    b.screenshot(&shots.join("chats-desktop.png")).await;

    // The audit view: a wrong key is refused; the right one reads, filters
    // and pages.
    b.click("nav a[data-view=audit]").await;
    b.type_into("#audit-key", "wrong-key-000000").await;
    b.click(".audit-filters button[type=submit]").await;
    let refused = b.text_of(".audit-filters .error").await;
    assert!(refused.contains("401"), "{refused}");
    b.type_into("#audit-key", AUDIT_KEY).await;
    b.click(".audit-filters button[type=submit]").await;
    b.until(
        "a page of events, then more on scrolling",
        "const s = document.querySelector('.audit-view'); s.scrollTop = s.scrollHeight; \
         return document.querySelectorAll('table.audit tbody tr').length > 50;",
        vec![],
    )
    .await;
    b.type_into("#audit-action", "chat.create").await;
    b.click(".audit-filters button[type=submit]").await;
    let actions = b
        .until(
            "the chat.create events",
            "const a = [...document.querySelectorAll('table.audit tbody tr td:nth-child(3)')].map(e => e.textContent); \
             return a.length > 0 && a;",
            vec![],
        )
        .await;
    assert!(
        actions
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a == "chat.create"),
        "{actions}"
    );
    b.type_into("#audit-action", "").await;
    b.click(".audit-filters button[type=submit]").await;
    b.until(
        "every action again",
        "return document.querySelectorAll('table.audit tbody tr').length >= 50",
        vec![],
    )
    .await;
    b.screenshot(&shots.join("audit-desktop.png")).await;
    assert_eq!(
        b.js("return sessionStorage.length", vec![]).await,
        json!(1),
        "only the operator token is kept, never the audit key"
    );

    // Narrow screens, and the dark scheme.
    b.size(320, 700).await;
    b.client.goto(&format!("{base}/#/chats")).await.unwrap();
    b.text_of(".chat-items .chat-title").await;
    let wide = b
        .js(
            "return [...document.querySelectorAll('body *')] \
               .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5) \
               .map(e => e.tagName + '.' + e.className);",
            vec![],
        )
        .await;
    assert_eq!(wide, json!([]), "nothing runs off a 320 px screen");
    b.screenshot(&shots.join("chats-narrow.png")).await;
    b.client
        .goto(&format!("{base}/#/chats/{chat_id}"))
        .await
        .unwrap();
    b.until(
        "the chat alone on a narrow screen",
        "return document.querySelectorAll('ol.messages li').length === 10 && getComputedStyle(document.querySelector('.chats')).display === 'none'",
        vec![],
    )
    .await;
    b.screenshot(&shots.join("chat-narrow.png")).await;
    b.click("nav a[data-view=audit]").await;
    b.type_into("#audit-key", AUDIT_KEY).await;
    b.type_into("#audit-action", "chat.send").await;
    b.click(".audit-filters button[type=submit]").await;
    b.until(
        "audit rows on a narrow screen",
        "return document.querySelectorAll('table.audit tbody tr').length > 0",
        vec![],
    )
    .await;
    b.js(
        "const v = document.querySelector('.audit-view'); \
         const t = document.querySelector('.audit-filters .actions'); \
         v.scrollTop += t.getBoundingClientRect().top - v.getBoundingClientRect().top; \
         return window.scrollY === 0;",
        vec![],
    )
    .await;
    b.screenshot(&shots.join("audit-narrow.png")).await;
    b.client
        .goto(&format!("{base}/#/chats/{chat_id}"))
        .await
        .unwrap();
    b.wait_text("#chat-heading", "Disk checks").await;
    b.color_scheme("dark").await;
    b.size(1280, 860).await;
    b.until(
        "the dark scheme",
        "return getComputedStyle(document.body).backgroundColor !== 'rgb(246, 247, 249)'",
        vec![],
    )
    .await;
    b.screenshot(&shots.join("chat-desktop-dark.png")).await;
    b.color_scheme("light").await;
    only_the_console_was_asked(&b, &base).await;

    // With a quota of one send a minute per chat, the second send is a 429
    // shown as a countdown.
    console.terminate(Duration::from_secs(30));
    drop(console);
    let console = ConsoleProcess::spawn({
        let mut cmd = console_command(dir.path(), &nodes);
        cmd.env("SOFIIA_RATE_LIMIT_CHAT", "1/min");
        cmd
    });
    let base = console.base.clone();
    sign_in(&b, &base).await;
    b.client
        .goto(&format!("{base}/#/chats/quota-chat"))
        .await
        .unwrap();
    b.type_into("#message", "first of the minute\n").await;
    b.text_of("li.msg.agent:not(.pending) .text").await;
    b.until(
        "the composer free again",
        "return !document.querySelector('#send').disabled",
        vec![],
    )
    .await;
    b.type_into("#message", "one too many\n").await;
    let first = b.text_of("li.msg.agent.failed .countdown").await;
    let seconds = |s: &str| s.trim_end_matches(" s").parse::<u32>().unwrap();
    let first = seconds(&first);
    assert!((1..=60).contains(&first), "{first}");
    assert_eq!(
        b.js(
            "return document.querySelector('li.msg.agent.failed .resend').disabled",
            vec![]
        )
        .await,
        json!(true),
        "no resend before the quota allows it"
    );
    let later = b
        .until(
            "the countdown going down",
            "const c = document.querySelector('li.msg.agent.failed .countdown'); \
             const n = parseInt(c.textContent, 10); return n < arguments[0] && n;",
            vec![json!(first)],
        )
        .await;
    assert!(later.as_u64().unwrap() < u64::from(first));
    b.size(320, 700).await;
    b.screenshot(&shots.join("rate-limited-narrow.png")).await;
    only_the_console_was_asked(&b, &base).await;
    assert_eq!(
        node1.call_count(),
        6 + 60 + 32 + 1,
        "every send called the node once"
    );
}

/// The page and its assets carry the security headers, and nothing of the
/// page lets a request past the API's authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_strict_headers() {
    let console = common::ConsoleBuilder::new().start().await;
    let http = reqwest::Client::new();
    for path in ["/", "/ui/app.css", "/ui/js/main.js", "/ui/icon.svg"] {
        let res = http
            .get(format!("{}{path}", console.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let etag = h["etag"].to_str().unwrap().to_owned();
        let again = http
            .get(format!("{}{path}", console.base))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}: revalidated by its ETag");
    }
    let page = http.get(format!("{}/", console.base)).send().await.unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no other host"
    );
    for missing in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/index.html"] {
        let res = http
            .get(format!("{}{missing}", console.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{missing}");
    }
    // The page grants nothing: the API still wants its credentials.
    let res = http
        .get(format!("{}/api/chats", console.base))
        .header("referer", format!("{}/", console.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    console.stop().await;
}
