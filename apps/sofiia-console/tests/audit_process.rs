//! The audit trail across processes: the prune and verify commands (and the
//! ops wrapper) on a real file, and durability when the console is killed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sofiia_audit_store::{AuditQuery, AuditStore, NewEvent, Outcome, SqliteAuditStore};
use sofiia_core_domain::{Clock, PageLimit, SystemClock};
use sofiia_router_stub::{StubConfig, StubNode};

const BIN: &str = env!("CARGO_BIN_EXE_sofiia-console");

fn console(data: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOFIIA_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SOFIIA_DATA_DIR", data);
    cmd
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

fn event(days_ago: u64, n: usize) -> NewEvent {
    NewEvent {
        ts: SystemClock
            .now()
            .saturating_sub(Duration::from_secs(days_ago * 86_400)),
        actor: "alice".into(),
        action: "chat.send".into(),
        target: format!("chat-{n}"),
        outcome: Outcome::Ok,
        status: Some(200),
        request_id: Some(format!("req-{n}")),
        node: Some("NODA1".into()),
        source_ip: Some("127.0.0.1".into()),
        user_agent: None,
        details: Map::new(),
    }
}

async fn all_events(path: &Path) -> Vec<Value> {
    let store = SqliteAuditStore::open(path).await.unwrap();
    let page = store
        .read(&AuditQuery {
            limit: PageLimit::new(200).unwrap(),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    page.items
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_dry_run_prune_and_verify_through_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sofiia.db");
    {
        let store = SqliteAuditStore::open(&db).await.unwrap();
        for n in 0..10 {
            store.append(event(100, n)).await.unwrap();
        }
        for n in 10..15 {
            store.append(event(10, n)).await.unwrap();
        }
    }

    let (code, out) =
        run(console(dir.path()).args(["prune-audit", "--dry-run", "--retention-days", "30"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run: 10 audit events older than"), "{out}");
    let (code, out) = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../ops/prune_audit_db.py"
        ))
        .args(["--dry-run", "--retention-days", "30"])
        .env("SOFIIA_CONSOLE_BIN", BIN)
        .env("SOFIIA_DATA_DIR", dir.path()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run: 10 audit events"), "{out}");

    // Laid out as a release tarball (bin/ beside ops/), the script finds
    // the binary it was shipped with, without SOFIIA_CONSOLE_BIN or PATH.
    let release = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(release.path().join("ops")).unwrap();
    std::fs::create_dir_all(release.path().join("bin")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../ops/prune_audit_db.py"),
        release.path().join("ops/prune_audit_db.py"),
    )
    .unwrap();
    std::os::unix::fs::symlink(BIN, release.path().join("bin/sofiia-console")).unwrap();
    let (code, out) = run(Command::new("python3")
        .arg(release.path().join("ops/prune_audit_db.py"))
        .args(["--dry-run", "--retention-days", "30"])
        .env_remove("SOFIIA_CONSOLE_BIN")
        .env("PATH", "/usr/bin:/bin")
        .env("SOFIIA_DATA_DIR", dir.path()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run: 10 audit events"), "{out}");

    let events = all_events(&db).await;
    assert_eq!(
        events.len(),
        18,
        "a dry run deletes nothing and records itself"
    );
    let runs: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "audit.prune")
        .collect();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["actor"], "system");
    assert_eq!(runs[0]["details"]["dry_run"], true);
    assert_eq!(runs[0]["details"]["events"], 10);

    let (code, out) = run(console(dir.path()).args([
        "prune-audit",
        "--retention-days",
        "30",
        "--batch-size",
        "3",
        "--vacuum",
    ]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted 10 audit events"), "{out}");
    assert!(out.contains("vacuumed"), "{out}");
    let events = all_events(&db).await;
    let targets: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "chat.send")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        ["chat-14", "chat-13", "chat-12", "chat-11", "chat-10"]
    );
    let last = events
        .iter()
        .find(|e| e["action"] == "audit.prune")
        .unwrap();
    assert_eq!(last["details"]["dry_run"], false);
    assert_eq!(last["details"]["events"], 10);

    let (code, out) = run(console(dir.path()).arg("audit-verify"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    // An edited event is named.
    let edited = events.iter().find(|e| e["target"] == "chat-12").unwrap()["id"]
        .as_u64()
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE events SET actor = 'mallory' WHERE id = ?1",
            [i64::try_from(edited).unwrap()],
        )
        .unwrap();
    }
    let (code, out) = run(console(dir.path()).arg("audit-verify"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("event {edited}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_breaks_the_chain_at_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sofiia.db");
    let ids: Vec<u64> = {
        let store = SqliteAuditStore::open(&db).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(store.append(event(1, n)).await.unwrap().id);
        }
        ids
    };
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "DELETE FROM events WHERE id = ?1",
            [i64::try_from(ids[2]).unwrap()],
        )
        .unwrap();
    }
    let (code, out) = run(console(dir.path()).arg("audit-verify"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("event {}", ids[3])), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_answered_200_is_in_the_trail_after_sigkill() {
    let node = StubNode::spawn(
        "127.0.0.1:0".parse().unwrap(),
        StubConfig::new("NODA1".parse().unwrap()).with_delay(Duration::from_millis(30)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = console(dir.path())
        .env("SOFIIA_BIND", "127.0.0.1:0")
        .env("SOFIIA_NODES", format!("NODA1={}", node.base_url()))
        .env("SOFIIA_OPERATOR_TOKENS", "alice:alice-token-0001")
        .env("SOFIIA_RATE_LIMIT_CHAT", "1000/s")
        .env("SOFIIA_RATE_LIMIT_OPERATOR", "1000/s")
        .env("SOFIIA_WORKERS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["msg"] == "listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let client = reqwest::Client::new();
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let client = client.clone();
            let answered = answered.clone();
            let url = format!("http://{addr}/api/chats/c{}/send", i % 7);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                let res = client
                    .post(url)
                    .bearer_auth("alice-token-0001")
                    .header("idempotency-key", format!("kill-key-{i:06}"))
                    .json(&json!({"text": "x"}))
                    .send()
                    .await;
                if let Ok(res) = res
                    && res.status() == 200
                {
                    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
                    answered.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    // Kill while sends are in flight: after some have been answered.
    while answered.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 20 && answered.len() < 120,
        "{}",
        answered.len()
    );

    let store = SqliteAuditStore::open(dir.path().join("sofiia.db"))
        .await
        .unwrap();
    let mut recorded = std::collections::HashSet::new();
    let mut query = AuditQuery {
        action: Some("chat.send".into()),
        limit: PageLimit::new(200).unwrap(),
        ..AuditQuery::default()
    };
    loop {
        let page = store.read(&query).await.unwrap();
        for e in &page.items {
            if e.event.outcome == Outcome::Ok {
                recorded.insert(e.event.request_id.clone().unwrap());
            }
        }
        match page.next {
            Some(c) => query.before_id = Some(c.id().parse().unwrap()),
            None => break,
        }
    }
    for id in &answered {
        assert!(
            recorded.contains(id),
            "send {id} was answered 200 but has no audit event"
        );
    }
    drop(store);
    let (code, out) = run(console(dir.path()).arg("audit-verify"));
    assert_eq!(code, 0, "the chain survives a crash: {out}");
}

/// `migrate-audit --from sqlite --to postgres`: the pruned SQLite trail is
/// copied with its ids and hashes, verifies there (through `audit-verify`
/// on PostgreSQL too), a rerun does nothing, and a broken source is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_trail_moves_to_postgres_whole_and_once() {
    let Some(pg) = sofiia_testkit::PostgresTestDatabase::new("the_sqlite_trail_moves").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sofiia.db");
    {
        let store = SqliteAuditStore::open(&db).await.unwrap();
        for n in 0..300 {
            store.append(event(100 - (n as u64) / 10, n)).await.unwrap();
        }
        store.close();
    }
    // Pruned first, so the chain starts from an anchor.
    let (code, out) = run(console(dir.path()).arg("prune-audit"));
    assert_eq!(code, 0, "{out}");
    let source = all_events(&db).await;
    let migrate = || {
        let mut cmd = console(dir.path());
        cmd.env("SOFIIA_POSTGRES_URL", &pg.url).args([
            "migrate-audit",
            "--from",
            "sqlite",
            "--to",
            "postgres",
        ]);
        cmd
    };
    let (code, out) = run(&mut migrate());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("copied {} events", source.len())),
        "{out}"
    );
    let total = source.len() + 1; // and its audit.migrate event
    assert!(
        out.contains(&format!(
            "postgres: audit chain intact: {total} events verified"
        )),
        "{out}"
    );
    let (code, out) = run(&mut migrate());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");

    let on_postgres = || {
        let mut cmd = console(dir.path());
        cmd.env("SOFIIA_POSTGRES_URL", &pg.url)
            .env("SOFIIA_AUDIT_BACKEND", "postgres");
        cmd
    };
    let (code, out) = run(on_postgres().arg("audit-verify"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{total} events verified")), "{out}");
    // Event for event what SQLite held, ids and hashes included.
    let pool = sofiia_postgres_support::PostgresPool::open(&pg.url, Default::default()).unwrap();
    let copied = sofiia_audit_store::PostgresAuditStore::open(pool)
        .await
        .unwrap();
    let page = copied
        .read(&AuditQuery {
            limit: PageLimit::new(200).unwrap(),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let newest_copied = serde_json::to_value(&page.items[1]).unwrap();
    assert_eq!(newest_copied, source[0]);
    assert_eq!(page.items[0].event.action, "audit.migrate");

    // A source that does not verify is not copied.
    let other = sofiia_testkit::PostgresTestDatabase::new("the_sqlite_trail_moves")
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE events SET actor = 'mallory' WHERE id = (SELECT max(id) FROM events)",
            [],
        )
        .unwrap();
    }
    let (code, out) = run(console(dir.path())
        .env("SOFIIA_POSTGRES_URL", &other.url)
        .args(["migrate-audit", "--from", "sqlite", "--to", "postgres"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify"), "{out}");
}

/// A fresh data dir: the daily prune has nothing to do and succeeds (it
/// records its run), while a verification of a trail that is not there
/// fails, naming the file: verifying nothing proves nothing.
#[test]
fn prune_on_a_fresh_data_dir_succeeds_and_verify_names_the_missing_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run(console(dir.path()).args(["prune-audit", "--dry-run"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 audit events"), "{out}");
    let fresh = tempfile::tempdir().unwrap();
    let (code, out) = run(console(fresh.path()).arg("audit-verify"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no audit store at"), "{out}");
}
