//! Traffic that is not an operator's: floods of bad credentials, readiness
//! storms and slow clients cost the console a bounded amount, and operators
//! keep being served.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{ALICE, ConsoleBuilder};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use sofiia_audit_store::{AuditQuery, AuditStore, SqliteAuditStore};
use sofiia_core_domain::PageLimit;

/// Bytes of the data dir's SQLite file in use, as a reader sees it (what the
/// WAL holds included): pages less free pages. File sizes would not do: the
/// WAL and shared-memory files go when the console stops, and they may
/// outweigh what the flood added.
fn audit_bytes(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("sofiia.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_grows_the_trail_by_little_and_locks_out_no_operator() {
    let console = ConsoleBuilder::new().start().await;
    // Warm up: the trail's file exists and holds one event.
    assert_eq!(console.get("/api/chats", ALICE).await.status, 200);
    let before = audit_bytes(console.dir.path());

    let user_agent = "u".repeat(256);
    let path = format!("/api/chats/{}", "p".repeat(120));
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..3_000)
        .map(|n| {
            let client = console.client.clone();
            let url = format!("{}{path}", console.base);
            let user_agent = user_agent.clone();
            async move {
                client
                    .get(url)
                    .bearer_auth(format!("wrong-token-{n}"))
                    .header("user-agent", user_agent)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthorized + throttled, 3_000);
    assert!(throttled > 2_900, "{unauthorized} x 401, {throttled} x 429");

    // An operator from the same address is not locked out.
    let res = console.get("/api/chats", ALICE).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // A throttled refusal is a problem with Retry-After.
    let refused = console.get("/api/chats", "still-wrong").await;
    let p = refused.problem(429);
    assert_eq!(p["type"], "urn:sofiia:problem:auth-throttled");
    assert!(refused.header("retry-after").is_some());

    // Stopping writes the window's aggregate event.
    let dir = console.stop_keeping_dir().await;
    let grown = audit_bytes(dir.path()) - before;
    eprintln!(
        "3 000 bad tokens: {unauthorized} x 401, {throttled} x 429; the trail grew by {grown} bytes"
    );
    assert!(grown <= 256 * 1024, "the trail grew by {grown} bytes");

    // The refusals are visible, with their count.
    let store = SqliteAuditStore::open(dir.path().join("sofiia.db"))
        .await
        .unwrap();
    let page = store
        .read(&AuditQuery {
            action: Some("auth.denied".into()),
            limit: PageLimit::new(200).unwrap(),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let counted: u64 = page
        .items
        .iter()
        .map(|e| {
            e.event
                .details
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(counted, 3_001, "3 000 in the flood, one after it: {page:?}");
    assert!(page.items.len() <= 4, "{} events", page.items.len());
    assert!(
        page.items
            .iter()
            .any(|e| e.event.details.get("aggregated") == Some(&Value::Bool(true)))
    );
}

/// Slow-loris: hundreds of clients that send their request head a byte at a
/// time hold no worker; an operator is answered meanwhile, and each slow
/// client is cut off (408) once the request timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hold_no_worker_and_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const SLOW: usize = 300;
    let console = ConsoleBuilder::new()
        .var("SOFIIA_WORKERS", "2")
        .var("SOFIIA_CLIENT_REQUEST_TIMEOUT_MS", "1000")
        .start()
        .await;
    let addr = console.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream
                .write_all(b"GET /api/health HTTP/1.1\r\nHost: console\r\nX-Slow: ")
                .await
                .unwrap();
            // One byte every 100 ms, never ending the head, until the
            // console closes the connection.
            let started = std::time::Instant::now();
            let mut answer = Vec::new();
            loop {
                tokio::select! {
                    read = stream.read_to_end(&mut answer) => {
                        let _ = read;
                        return (started.elapsed(), String::from_utf8_lossy(&answer).into_owned());
                    }
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                        if stream.write_all(b"x").await.is_err() {
                            return (started.elapsed(), String::new());
                        }
                    }
                }
            }
        }));
    }
    // Every slow client is connected and dribbling; an operator is served.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let res = console.get("/api/chats", ALICE).await;
    assert_eq!(res.status, 200, "{}", res.text);

    let mut timed_out = 0;
    for task in slow {
        let (held, answer) = tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .expect("a slow client was never cut off")
            .unwrap();
        assert!(
            held < std::time::Duration::from_secs(10),
            "held for {held:?}"
        );
        if answer.starts_with("HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    assert!(timed_out > SLOW / 2, "{timed_out} of {SLOW} answered 408");
    console.stop().await;
}
