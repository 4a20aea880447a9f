//! A send reaches its node at most once per key through the failures
//! production meets: restarts (SIGTERM) and crashes (SIGKILL) of the real
//! binary, a full disk under its data dir, a shutdown while a send whose
//! client went away still waits on its node, and a stalled audit store.
//! Each test counts the calls a real router-stub node received.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::faults::FaultyAudit;
use common::process::{ConsoleProcess, clean_command};
use common::{ALICE, AUDIT_KEY, BOB, ConsoleBuilder, stub, stub_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sofiia_idempotency::{IdempotencyKey, ScopedKey};
use sofiia_router_stub::StubHandle;

/// A console process on `data` answered by `node`, with short timeouts.
fn console_process(data: &Path, node: &StubHandle) -> ConsoleProcess {
    console_process_with(data, node, &[])
}

fn console_process_with(data: &Path, node: &StubHandle, vars: &[(&str, &str)]) -> ConsoleProcess {
    let mut cmd = clean_command();
    cmd.env("SOFIIA_BIND", "127.0.0.1:0")
        .env("SOFIIA_DATA_DIR", data)
        .env("SOFIIA_NODES", format!("NODA1={}", node.base_url()))
        .env("SOFIIA_OPERATOR_TOKENS", format!("alice:{ALICE},bob:{BOB}"))
        .env("SOFIIA_AUDIT_KEYS", AUDIT_KEY)
        .env("SOFIIA_WORKERS", "2")
        .env("SOFIIA_INFER_TIMEOUT_MS", "10000")
        .env("SOFIIA_STORE_TIMEOUT_MS", "1000")
        .env("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "30")
        .envs(vars.iter().copied());
    ConsoleProcess::spawn(cmd)
}

async fn send(client: &reqwest::Client, base: &str, key: &str, text: &str) -> reqwest::Response {
    client
        .post(format!("{base}/api/chats/c1/send"))
        .bearer_auth(ALICE)
        .header("idempotency-key", key)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap()
}

async fn message_count(client: &reqwest::Client, base: &str, chat: &str) -> u64 {
    let chat: Value = client
        .get(format!("{base}/api/chats/{chat}"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    chat["message_count"].as_u64().unwrap()
}

fn replayed(res: &reqwest::Response) -> bool {
    res.headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// A send answered 200, a restart of the console (by `stop`), and a retry
/// with the key: replayed byte for byte, one node call, one exchange.
async fn replayed_after(stop: impl FnOnce(&mut ConsoleProcess)) {
    let node = stub("NODA1").await;
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    let mut console = console_process(data.path(), &node);
    let first = send(
        &client,
        &console.base,
        "restart-key-01",
        "before the restart",
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first_body = first.text().await.unwrap();
    stop(&mut console);
    drop(console);

    let console = console_process(data.path(), &node);
    let retry = send(
        &client,
        &console.base,
        "restart-key-01",
        "before the restart",
    )
    .await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.unwrap(), first_body, "the same answer");
    assert_eq!(node.call_count(), 1, "the node is called once");
    assert_eq!(message_count(&client, &console.base, "c1").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_answered_before_sigterm_is_replayed_after_the_restart() {
    replayed_after(|console| {
        assert!(console.terminate(Duration::from_secs(30)).success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_answered_before_sigkill_is_replayed_after_the_restart() {
    replayed_after(|console| {
        console.kill();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_send_whose_client_went_away_and_stores_it() {
    let node = stub_with("NODA1", Duration::from_secs(2), None).await;
    let data = tempfile::tempdir().unwrap();
    let mut console = console_process(data.path(), &node);

    // The client gives up long before the node answers.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/api/chats/c1/send", console.base))
        .bearer_auth(ALICE)
        .header("idempotency-key", "drain-key-0001")
        .json(&json!({ "text": "the client hangs up" }))
        .send()
        .await;
    assert!(gone.is_err(), "the client must have timed out");
    for _ in 0..200 {
        if node.call_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.call_count(), 1, "the send reached the node");

    // SIGTERM while the node still computes: the process waits for the send.
    let status = console.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let lines = console.lines();
    let stopping = lines
        .iter()
        .find(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("stopping")))
        .expect("a stopping line");
    assert_eq!(stopping["sends_in_flight"], 1);
    assert!(
        !lines.iter().any(|l| l["sends_cut"].is_u64()),
        "no send was cut: {lines:?}"
    );
    drop(console);

    let client = reqwest::Client::new();
    let console = console_process(data.path(), &node);
    assert_eq!(message_count(&client, &console.base, "c1").await, 2);
    let retry = send(
        &client,
        &console.base,
        "drain-key-0001",
        "the client hangs up",
    )
    .await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert!(replayed(&retry));
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["reply"]["text"], "[NODA1] echo: the client hangs up");
    assert_eq!(node.call_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_killed_after_the_node_answered_leaves_the_reply_for_the_next_one() {
    let node = stub("NODA1").await;
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // Short timeouts, so that the key's lease (the slowest send's budget
    // plus 10 s: about 14 s here) runs out within the test.
    let quick = [
        ("SOFIIA_INFER_TIMEOUT_MS", "2000"),
        ("SOFIIA_STORE_TIMEOUT_MS", "200"),
        ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "5"),
    ];
    // The keys in a file of their own (as a data dir of an earlier release
    // has them), so that another process can lock the file of the chats and
    // the audit trail while the keys stay writable: the one way to make
    // storing the exchange fail after the reply was kept. (In the one file
    // of a new data dir, a lock held elsewhere stops the keys' writes too.)
    std::fs::write(data.path().join("idempotency.db"), b"").unwrap();
    let mut first = console_process_with(data.path(), &node, &quick);
    assert_eq!(
        send(&client, &first.base, "warm-key-0001", "files exist")
            .await
            .status(),
        StatusCode::OK
    );

    // Another process holds the write locks of the chat index and the audit
    // trail: the reply is kept with the key, but neither the exchange nor
    // its event (written beside it) can be stored.
    let blockers: Vec<rusqlite::Connection> = ["sofiia.db"]
        .iter()
        .map(|file| {
            let blocker = rusqlite::Connection::open(data.path().join(file)).unwrap();
            blocker.execute_batch("BEGIN IMMEDIATE;").unwrap();
            blocker
        })
        .collect();
    let res = send(
        &client,
        &first.base,
        "crash-key-0001",
        "kept across a crash",
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.text().await.unwrap().contains("send-not-stored-yet"));
    assert_eq!(node.call_count(), 2);
    first.kill();
    drop(first);
    for blocker in blockers {
        blocker.execute_batch("ROLLBACK;").unwrap();
    }

    // A new console: while the dead one's lease lasts the key is pending
    // (503); then the retry stores the kept reply, without the node.
    let second = console_process_with(data.path(), &node, &quick);
    let mut answer = None;
    for _ in 0..120 {
        let retry = send(
            &client,
            &second.base,
            "crash-key-0001",
            "kept across a crash",
        )
        .await;
        if retry.status() == StatusCode::OK {
            assert!(replayed(&retry));
            answer = Some(retry.json::<Value>().await.unwrap());
            break;
        }
        assert_eq!(retry.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry.headers().get("retry-after").is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = answer.expect("the kept reply was stored after the lease");
    assert_eq!(answer["reply"]["text"], "[NODA1] echo: kept across a crash");
    assert_eq!(node.call_count(), 2, "the node is not called again");
    assert_eq!(message_count(&client, &second.base, "c1").await, 4);
    // Its event is written once, by the console that resumed it, and marked
    // so.
    let events: Value = client
        .get(format!(
            "{}/api/audit?action=chat.send&actor=alice",
            second.base
        ))
        .header("x-audit-key", AUDIT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resumed: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["message_id"] == answer["message"]["id"])
        .collect();
    assert_eq!(resumed.len(), 1, "{events}");
    assert_eq!(resumed[0]["details"]["resumed"], true);
    // Once stored, it replays like any other.
    let again = send(
        &client,
        &second.base,
        "crash-key-0001",
        "kept across a crash",
    )
    .await;
    assert!(replayed(&again));
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, loudly, where mounting is refused (not root, no privilege).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "\n!!! SKIPPED the full-disk test: mounting a tmpfs was refused here (it needs root, as in CI) !!!\n"
            );
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Smaller writes, until not a byte fits.
        loop {
            match file.write(&[0u8; 512]) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_after_the_node_answered_keeps_the_reply_until_there_is_room() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let data = disk.path().join("data");
    let node = stub_with("NODA1", Duration::from_millis(1500), None).await;
    let client = reqwest::Client::new();
    let console = console_process(&data, &node);
    // Every file exists and works before the disk fills.
    let warm = send(&client, &console.base, "disk-key-warm1", "warm up").await;
    assert_eq!(warm.status(), StatusCode::OK);

    // The node computes; meanwhile the disk fills up.
    let sending = {
        let client = client.clone();
        let base = console.base.clone();
        tokio::spawn(async move {
            let res = send(&client, &base, "disk-key-full1", "on a full disk").await;
            let status = res.status();
            let retry_after = res.headers().get("retry-after").cloned();
            (status, retry_after, res.text().await.unwrap())
        })
    };
    for _ in 0..200 {
        if node.call_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.call_count(), 2, "the send reached the node");
    let filler = disk.fill();

    let (status, retry_after, body) = sending.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after.is_some());
    assert!(body.contains("send-not-stored-yet"), "{body}");
    for _ in 0..3 {
        let retry = send(&client, &console.base, "disk-key-full1", "on a full disk").await;
        assert_eq!(retry.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry.headers().get("retry-after").is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(node.call_count(), 2, "no retry reaches the node");

    // Room again: the kept reply is stored, and the retry gets it.
    std::fs::remove_file(filler).unwrap();
    let mut answer = None;
    for _ in 0..200 {
        let retry = send(&client, &console.base, "disk-key-full1", "on a full disk").await;
        if retry.status() == StatusCode::OK {
            answer = Some(retry.json::<Value>().await.unwrap());
            break;
        }
        assert_eq!(retry.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.expect("the send was stored once there was room");
    assert_eq!(answer["reply"]["text"], "[NODA1] echo: on a full disk");
    assert_eq!(node.call_count(), 2);
    // Both sends share chat c1: four messages, the full-disk exchange once.
    assert_eq!(message_count(&client, &console.base, "c1").await, 4);
    drop(console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_equal_keys_reach_the_node_as_two_keys() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new().nodes(&[&node]).start().await;
    let body = json!({ "text": "same words" });
    let alice = console.send(ALICE, "shared", "retry-00000001", &body).await;
    let bob = console.send(BOB, "shared", "retry-00000001", &body).await;
    assert_eq!(alice.status, 200, "{}", alice.text);
    assert_eq!(bob.status, 200, "{}", bob.text);
    assert_eq!(bob.header("idempotent-replayed"), None);

    let calls = node.calls();
    assert_eq!(calls.len(), 2);
    let keys: Vec<&str> = calls.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_ne!(keys[0], keys[1], "two operators, two node-side keys");
    for (call, operator) in calls.iter().zip(["alice", "bob"]) {
        assert_ne!(call.idempotency_key, "retry-00000001");
        let derived =
            ScopedKey::new(operator, IdempotencyKey::new("retry-00000001").unwrap()).upstream_key();
        assert_eq!(call.idempotency_key, derived);
    }
    // Stable: a retry of alice's send is a replay, and the node key of a
    // send is the same on every instance, since it derives from the key.
    let again = console.send(ALICE, "shared", "retry-00000001", &body).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(node.call_count(), 2);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_spend_no_quota() {
    let node = stub("NODA1").await;
    let console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_RATE_LIMIT_CHAT", "2/min")
        .start()
        .await;
    for n in 0..3 {
        let p = console
            .send(
                ALICE,
                "quota",
                &format!("unknown-node-{n:02}"),
                &json!({ "text": "x", "node": "NODA9" }),
            )
            .await
            .problem(400);
        assert_eq!(p["type"], "urn:sofiia:problem:unknown-node");
    }
    for n in 0..2 {
        let res = console
            .send_text("quota", &format!("valid-send-{n:02}"), "x")
            .await;
        assert_eq!(res.status, 200, "valid send {n}: {}", res.text);
    }
    // The quota is real: the third valid send is the one refused.
    let p = console
        .send_text("quota", "valid-send-02", "x")
        .await
        .problem(429);
    assert_eq!(p["scope"], "chat");
    assert_eq!(node.call_count(), 2);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_store_is_503_within_its_deadline_not_a_hang() {
    let node = stub("NODA1").await;
    let (audit, fault) = FaultyAudit::new();
    fault.stall();
    let mut console = ConsoleBuilder::new()
        .nodes(&[&node])
        .var("SOFIIA_STORE_TIMEOUT_MS", "300")
        .audit(audit)
        .start()
        .await;
    // A hang would end in this client's timeout, failing the test.
    console.client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let p = console
        .send_text("c", "stall-key-001", "x")
        .await
        .problem(503);
    assert_eq!(p["type"], "urn:sofiia:problem:send-not-stored-yet");
    let p = console
        .post_json("/api/chats", ALICE, &json!({"id": "made"}))
        .await
        .problem(503);
    assert_eq!(p["type"], "urn:sofiia:problem:audit-unavailable");
    console.get("/api/chats", "wrong-token").await.problem(503);
    assert_eq!(node.call_count(), 1);

    // The disk recovers: the kept send is stored, once.
    fault.heal();
    let res = console
        .send_until_stored(ALICE, "c", "stall-key-001", &json!({"text": "x"}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(node.call_count(), 1);
    console.stop().await;
}
