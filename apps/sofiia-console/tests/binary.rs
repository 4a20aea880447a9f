//! The `sofiia-console` binary itself: configuration errors, a run on the
//! embedded defaults, and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sofiia-console");

fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOFIIA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn a_bad_setting_stops_the_process_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("SOFIIA_BIND", "not-an-address"),
        ("SOFIIA_INFER_TIMEOUT_MS", "soon"),
        ("SOFIIA_NODES", "NODA1=ftp://x"),
        ("SOFIIA_CHAT_INDEX_BACKEND", "postgresql"),
        ("SOFIIA_AUDIT_BACKEND", "mysql"),
        ("SOFIIA_POSTGRES_URL", "postgres:///no-host"),
        ("SOFIIA_OPERATOR_TOKENS", "alice"),
        // Shorter than the slowest send: a stop would cut sends.
        ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "30"),
        ("SOFIIA_IDEMPOTENCY_BACKEND", "disk"),
    ] {
        let out = clean_command()
            .env("SOFIIA_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: stderr was {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_embedded_defaults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = clean_command()
        .current_dir(dir.path())
        .env("SOFIIA_BIND", "127.0.0.1:0")
        .env("SOFIIA_WORKERS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            let _ = tx.send(v);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no listening line");
        seen.push(line.clone());
        if line["msg"] == "listening" {
            break line["addr"].as_str().unwrap().to_owned();
        }
    };
    assert!(
        seen.iter().any(|l| l["level"] == "WARN"
            && l["msg"].as_str().unwrap().contains("SOFIIA_NODES is unset")),
        "{seen:?}"
    );
    // Embedded defaults: ./data with the SQLite chat index and a dev token.
    let token = std::fs::read_to_string(dir.path().join("data/dev-operator-token")).unwrap();
    // One SQLite file holds the keys, the chats and the audit trail.
    assert!(dir.path().join("data/sofiia.db").exists());
    for earlier in ["chat-index.db", "idempotency.db", "audit.db"] {
        assert!(!dir.path().join("data").join(earlier).exists(), "{earlier}");
    }

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let health = client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let sent = client
        .post(format!("{base}/api/chats/readme/send"))
        .bearer_auth(token.trim())
        .header("idempotency-key", "readme-key-1")
        .json(&json!({"text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let body: Value = sent.json().await.unwrap();
    assert_eq!(body["reply"]["text"], "echo: hello");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown must exit 0, got {exit}");
    reader.join().unwrap();
    let rest: Vec<Value> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l["msg"] == "stopped"), "{rest:?}");
    assert!(
        !rest.iter().any(|l| l.to_string().contains(token.trim())),
        "the token was logged"
    );
}
