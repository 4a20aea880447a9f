//! The release-day scripts (`ops/preflight_sofiia_console.sh`,
//! `ops/smoke.sh`, `ops/generate_release_evidence.sh`) run with bash against
//! real processes: the `sofiia-console` binary configured like production
//! (real tokens and keys, two router-stub nodes over HTTP, idempotency and
//! rate limits on Redis under a private prefix) and, for outages, a private
//! Redis that is stopped or a port nothing listens on.
//!
//! Redis comes from `SOFIIA_TEST_REDIS_URL` (skipped loudly when unset;
//! a failure under `SOFIIA_REQUIRE_REDIS=1`).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::process::{BIN, ConsoleProcess, clean_command};
use sofiia_router_stub::StubHandle;
use sofiia_testkit::{PostgresTestDatabase, RedisServer, RedisTestContext};
use tempfile::TempDir;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A secret: `label`, a dash and 32 random hex characters.
fn secret(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

fn dead_port() -> u16 {
    // Bound, read and released: nothing listens there afterwards.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The settings of one production-like deployment.
struct Deployment {
    vars: Vec<(String, String)>,
    token: String,
    audit_key: String,
    /// The console's working directory; its data dir is `data/` inside.
    dir: TempDir,
    nodes: Vec<StubHandle>,
}

impl Deployment {
    /// Two stub nodes, real secrets, and every Redis backend on `redis_url`
    /// under `prefix`.
    async fn new(redis_url: &str, prefix: &str) -> Self {
        let noda1 = common::stub("NODA1").await;
        let noda2 = common::stub("NODA2").await;
        let token = secret("alice-token");
        let audit_key = secret("audit-key");
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("SOFIIA_BIND", "127.0.0.1:0".to_owned()),
            (
                "SOFIIA_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            (
                "SOFIIA_NODES",
                format!("NODA1={},NODA2={}", noda1.base_url(), noda2.base_url()),
            ),
            ("SOFIIA_DEFAULT_NODE", "NODA2".to_owned()),
            (
                "SOFIIA_OPERATOR_TOKENS",
                format!("alice:{token},bob:{}", secret("bob-token")),
            ),
            ("SOFIIA_AUDIT_KEYS", audit_key.clone()),
            ("SOFIIA_IDEMPOTENCY_BACKEND", "redis".to_owned()),
            ("SOFIIA_RATE_LIMIT_BACKEND", "redis".to_owned()),
            ("SOFIIA_REDIS_URL", redis_url.to_owned()),
            ("SOFIIA_REDIS_PREFIX", prefix.to_owned()),
            ("SOFIIA_WORKERS", "2".to_owned()),
            ("SOFIIA_INFER_TIMEOUT_MS", "5000".to_owned()),
            ("SOFIIA_STORE_TIMEOUT_MS", "500".to_owned()),
            ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "10".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            vars,
            token,
            audit_key,
            dir,
            nodes: vec![noda1, noda2],
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.unset(key);
        self.vars.push((key.to_owned(), value.to_owned()));
    }

    fn unset(&mut self, key: &str) {
        self.vars.retain(|(k, _)| k != key);
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The secrets that must never appear in any output.
    fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.token.clone(), self.audit_key.clone()];
        for (k, v) in &self.vars {
            if k == "SOFIIA_OPERATOR_TOKENS" {
                out.extend(
                    v.split(',')
                        .map(|p| p.split_once(':').unwrap().1.to_owned()),
                );
            }
        }
        out
    }

    /// `bash ops/SCRIPT args` in the console's directory and environment,
    /// and nothing of the test's own environment that could change it.
    fn script(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(ROOT).join("ops").join(script))
            .args(args)
            .current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("SOFIIA_")
                || key.starts_with("PREFLIGHT_")
                || ["STRICT", "A_URL", "B_URL", "CARGO_TARGET_DIR"].contains(&key.as_str())
            {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SOFIIA_CONSOLE_BIN", BIN)
            // A nearly full CI disk must not decide these tests; the
            // thresholds themselves are the preflight's business.
            .env("PREFLIGHT_WARN_FREE_MB", "64")
            .env("PREFLIGHT_FAIL_FREE_MB", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        cmd
    }

    /// Starts the real binary in this deployment's environment.
    fn start_console(&self) -> ConsoleProcess {
        self.start_console_in(self.dir.path(), &self.data_dir())
    }

    /// Another instance of the same deployment (its own data dir).
    fn start_console_in(&self, cwd: &Path, data_dir: &Path) -> ConsoleProcess {
        let mut cmd = clean_command();
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SOFIIA_DATA_DIR", data_dir)
            .current_dir(cwd);
        ConsoleProcess::spawn(cmd)
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    /// Check lines (`PASS|WARN|FAIL|SKIP name: ...`) with this status.
    fn with_status(&self, status: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{status} ")))
            .collect()
    }

    fn assert_no_secret(&self, deployment: &Deployment) {
        for secret in deployment.secrets() {
            assert!(
                !self.stdout.contains(&secret) && !self.stderr.contains(&secret),
                "a secret was printed:\n{}\n{}",
                self.stdout,
                self.stderr
            );
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a script to its end (`Command` or `&mut Command`).
fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    let out = cmd.borrow_mut().stdin(Stdio::null()).output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether this build knows the git revision of this checkout's HEAD. When
/// it does not (a build outside git), the preflight's `git-sha` check is a
/// WARN by design, and STRICT mode fails on it.
fn binary_is_head() -> bool {
    let sha = sofiia_console::build_info::GIT_SHA;
    let head = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let known = sha != "unknown" && head.as_deref().is_some_and(|h| h.starts_with(sha));
    if !known {
        eprintln!(
            "\n!!! the binary's git sha ({sha}) is not this checkout's HEAD ({head:?}): the \
             preflight's git-sha WARN is expected, so STRICT=1 cannot pass here !!!\n"
        );
    }
    known
}

/// Asserts a STRICT preflight that passed, apart from the git-sha WARN of a
/// build that does not know its revision.
fn assert_strict_pass(out: &Output) {
    assert!(out.with_status("FAIL").is_empty(), "{out}");
    if binary_is_head() {
        assert!(out.with_status("WARN").is_empty(), "{out}");
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(out.last_line(), "RESULT: PASS", "{out}");
    } else {
        let warns = out.with_status("WARN");
        assert!(
            warns.len() == 1 && warns[0].starts_with("WARN git-sha: "),
            "{out}"
        );
        assert_eq!(out.code, 1, "{out}");
        assert_eq!(out.last_line(), "RESULT: WARN", "{out}");
    }
}

fn has_line(out: &Output, line: &str) -> bool {
    out.lines().contains(&line)
}

fn line_starting(out: &Output, prefix: &str) -> bool {
    out.lines().iter().any(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_preflight_passes_for_a_production_like_console() {
    let Some(redis) = RedisTestContext::new("strict_preflight_passes").await else {
        return;
    };
    let deployment = Deployment::new(&redis.url, &redis.prefix).await;
    // A console that has run: its SQLite files and audit trail exist.
    let console = deployment.start_console();
    let smoke = run(deployment
        .script("smoke.sh", &[console.base.as_str()])
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", &deployment.audit_key)
        .env("SOFIIA_SMOKE_REDIS", "0"));
    assert_eq!(smoke.code, 0, "{smoke}");

    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_strict_pass(&out);
    for prefix in [
        "PASS binary: ",
        "PASS config: check-config accepts the settings",
        "PASS unknown-variables: none",
        "PASS operator-tokens: operators alice, bob; shortest token ",
        "PASS audit-keys: 1 key(s); shortest ",
        "PASS backends: audit sqlite, chat index sqlite, idempotency redis, rate limit redis (fail mode closed)",
        "PASS node NODA1: http://127.0.0.1:",
        "PASS node NODA2: http://127.0.0.1:",
        "PASS data-dir: ",
        "PASS disk: ",
        "PASS sqlite sofiia.db: integrity_check ok",
        "PASS audit-verify: audit chain intact: ",
    ] {
        assert!(line_starting(&out, prefix), "no line {prefix}...\n{out}");
    }
    assert!(
        has_line(
            &out,
            &format!(
                "PASS redis: {} answers PING (idempotency, rate limit)",
                redis.url
            )
        ),
        "{out}"
    );
    out.assert_no_secret(&deployment);
    drop(console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_preflight_passes_with_the_trail_and_the_index_on_postgres() {
    let test = "strict_preflight_passes_on_postgres";
    let Some(redis) = RedisTestContext::new(test).await else {
        return;
    };
    let Some(db) = PostgresTestDatabase::new(test).await else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    deployment.set("SOFIIA_AUDIT_BACKEND", "postgres");
    deployment.set("SOFIIA_CHAT_INDEX_BACKEND", "postgres");
    deployment.set("SOFIIA_POSTGRES_URL", &db.url);
    // Instances sharing a chat index share the key that signs its cursors.
    deployment.set("SOFIIA_CURSOR_SECRET", &secret("cursor"));
    let console = deployment.start_console();
    let smoke = run(deployment
        .script("smoke.sh", &[console.base.as_str()])
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", &deployment.audit_key)
        .env("SOFIIA_SMOKE_REDIS", "0"));
    assert_eq!(smoke.code, 0, "{smoke}");

    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_strict_pass(&out);
    let shown = format!("postgres://***@127.0.0.1:5432/{}", db.name);
    for prefix in [
        "PASS backends: audit postgres, chat index postgres, idempotency redis, rate limit redis (fail mode closed)".to_owned(),
        format!("PASS postgres: {shown}: session accepted (audit trail, chat index)"),
        "PASS audit-verify: audit chain intact: ".to_owned(),
    ] {
        assert!(line_starting(&out, &prefix), "no line {prefix}...\n{out}");
    }
    out.assert_no_secret(&deployment);
    drop(console);

    // A database that does not exist is named.
    let missing = format!("{}_missing", db.name);
    deployment.set("SOFIIA_POSTGRES_URL", &db.url.replace(&db.name, &missing));
    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_eq!(out.code, 1, "{out}");
    assert!(
        has_line(
            &out,
            &format!(
                "FAIL postgres: postgres://***@127.0.0.1:5432/{missing}: refused the session: database \"{missing}\" does not exist (audit trail, chat index)"
            )
        ),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_without_an_audit_key() {
    let Some(redis) = RedisTestContext::new("preflight_fails_without_an_audit_key").await else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    deployment.unset("SOFIIA_AUDIT_KEYS");

    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        ["FAIL audit-keys: SOFIIA_AUDIT_KEYS is unset: /api/audit would refuse every reader"],
        "{out}"
    );
    assert_eq!(out.last_line(), "RESULT: FAIL", "{out}");
    out.assert_no_secret(&deployment);

    // A key that is too short is refused as well, by its length only.
    deployment.set("SOFIIA_AUDIT_KEYS", "short-audit-key");
    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        ["FAIL audit-keys: the shortest key has 15 characters; at least 32 required"],
        "{out}"
    );
    assert!(!out.stdout.contains("short-audit-key"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_when_redis_is_down() {
    let Some(mut server) = RedisServer::start("preflight_fails_when_redis_is_down") else {
        return;
    };
    let url = server.url();
    let deployment = Deployment::new(&url, "sofiia-ops-test:").await;
    // Up first: the same settings pass.
    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert!(
        has_line(
            &out,
            &format!("PASS redis: {url} answers PING (idempotency, rate limit)")
        ),
        "{out}"
    );

    server.stop();
    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        [format!(
            "FAIL redis: {url} does not answer PING (idempotency, rate limit): connection refused"
        )],
        "{out}"
    );
    assert_eq!(out.last_line(), "RESULT: FAIL", "{out}");
}

/// On a Redis Cluster the preflight asks every listed node for the
/// cluster's state; a node that does not answer fails it, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_checks_every_node_of_a_redis_cluster() {
    let Some(redis) =
        RedisTestContext::cluster("preflight_checks_every_node_of_a_redis_cluster").await
    else {
        return;
    };
    let mut deployment = Deployment::new("redis://127.0.0.1:1", &redis.prefix).await;
    deployment.set("SOFIIA_REDIS_CLUSTER_NODES", &redis.url);
    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert!(
        has_line(
            &out,
            &format!(
                "PASS redis: Redis Cluster {}: 3 node(s) answer, cluster_state ok, 3 primaries serving slots (idempotency, rate limit)",
                redis.url
            )
        ),
        "{out}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nodes = format!("{},127.0.0.1:{closed}", redis.url);
    deployment.set("SOFIIA_REDIS_CLUSTER_NODES", &nodes);
    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        [format!(
            "FAIL redis: Redis Cluster {nodes}: 127.0.0.1:{closed}: connection refused (idempotency, rate limit)"
        )],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_when_a_node_does_not_answer() {
    let Some(redis) = RedisTestContext::new("preflight_fails_when_a_node_does_not_answer").await
    else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    let noda1 = deployment.nodes[0].base_url();
    let noda2 = deployment.nodes[1].base_url();
    let dead = format!("http://127.0.0.1:{}", dead_port());
    // NODA2's second replica is the dead one: each replica is checked.
    deployment.set(
        "SOFIIA_NODES",
        &format!("NODA1={noda1},NODA2={noda2}|{dead}"),
    );

    let out = run(deployment
        .script("preflight_sofiia_console.sh", &[])
        .env("STRICT", "1"));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        [format!(
            "FAIL node NODA2[1]: {dead}/v1/health does not answer: connection refused"
        )],
        "{out}"
    );
    for line in [
        format!("PASS node NODA1: {noda1}/v1/health answered HTTP 200"),
        format!("PASS node NODA2[0]: {noda2}/v1/health answered HTTP 200"),
    ] {
        assert!(has_line(&out, &line), "{line} in {out}");
    }
    assert_eq!(out.last_line(), "RESULT: FAIL", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_on_a_tampered_audit_trail() {
    let Some(redis) = RedisTestContext::new("preflight_fails_on_a_tampered_audit_trail").await
    else {
        return;
    };
    let deployment = Deployment::new(&redis.url, &redis.prefix).await;
    let console = deployment.start_console();
    let sent = reqwest::Client::new()
        .post(format!("{}/api/chats/tamper/send", console.base))
        .bearer_auth(&deployment.token)
        .header("idempotency-key", "tamper-key-0001")
        .json(&serde_json::json!({"text": "to be tampered with"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    drop(console);
    let db = rusqlite::Connection::open(deployment.data_dir().join("sofiia.db")).unwrap();
    let id: i64 = db
        .query_row(
            "SELECT id FROM events WHERE action = 'chat.send' AND target = 'tamper'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute("UPDATE events SET target = 'elsewhere' WHERE id = ?1", [id])
        .unwrap();
    drop(db);

    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        [format!(
            "FAIL audit-verify: audit chain BROKEN at event {id}: HashMismatch"
        )],
        "{out}"
    );
    assert!(
        line_starting(&out, "PASS sqlite sofiia.db: integrity_check ok"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_an_invalid_setting_and_warns_about_unknown_ones() {
    let Some(redis) = RedisTestContext::new("preflight_names_an_invalid_setting").await else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    deployment.set("SOFIIA_NODEZ", "NODA1=http://127.0.0.1:1");
    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert!(
        has_line(
            &out,
            "WARN unknown-variables: SOFIIA_NODEZ (not settings of this console: typos?)"
        ),
        "{out}"
    );
    // Not STRICT: a WARN alone passes.
    assert!(out.with_status("FAIL").is_empty(), "{out}");
    assert_eq!(out.code, 0, "{out}");

    deployment.set("SOFIIA_INFER_TIMEOUT_MS", "soon");
    let out = run(deployment.script("preflight_sofiia_console.sh", &[]));
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.with_status("FAIL"),
        ["FAIL config: SOFIIA_INFER_TIMEOUT_MS: must be a whole number from 1 to 600000"],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_reads_the_console_env_file() {
    let Some(redis) = RedisTestContext::new("preflight_reads_the_console_env_file").await else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    // Every setting in the env file, as systemd's EnvironmentFile= has it,
    // and none in the environment.
    let file = deployment.dir.path().join("console.env");
    let text: String = deployment
        .vars
        .drain(..)
        .map(|(k, v)| format!("export {k}=\"{v}\"\n"))
        .collect();
    std::fs::write(&file, format!("# the console's settings\n{text}")).unwrap();

    let out = run(deployment.script(
        "preflight_sofiia_console.sh",
        &["--config", file.to_str().unwrap()],
    ));
    assert!(out.with_status("FAIL").is_empty(), "{out}");
    assert!(
        line_starting(
            &out,
            "PASS config: check-config accepts the settings (env file "
        ),
        "{out}"
    );
    assert!(
        has_line(
            &out,
            &format!(
                "PASS redis: {} answers PING (idempotency, rate limit)",
                redis.url
            )
        ),
        "{out}"
    );
    assert!(line_starting(&out, "PASS node NODA2: "), "{out}");
    assert!(line_starting(&out, "PASS audit-keys: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_against_two_running_consoles_on_redis() {
    let Some(redis) = RedisTestContext::new("smoke_passes_against_running_consoles").await else {
        return;
    };
    let deployment = Deployment::new(&redis.url, &redis.prefix).await;
    let a = deployment.start_console();
    let b_dir = tempfile::tempdir().unwrap();
    let b = deployment.start_console_in(b_dir.path(), &b_dir.path().join("data"));

    let out = run(deployment
        .script("smoke.sh", &[a.base.as_str()])
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", &deployment.audit_key)
        .env("A_URL", &a.base)
        .env("B_URL", &b.base));
    assert_eq!(out.code, 0, "{out}");
    assert!(out.with_status("FAIL").is_empty(), "{out}");
    assert!(out.with_status("SKIP").is_empty(), "{out}");
    for check in [
        "health",
        "ready",
        "nodes",
        "metrics before traffic",
        "audit without key",
        "audit with a wrong key",
        "audit with key",
        "send",
        "send replay",
        "audit write/read",
        "metrics after traffic",
        "redis idempotency A/B",
    ] {
        assert!(
            line_starting(&out, &format!("PASS {check}: ")),
            "no PASS {check}\n{out}"
        );
    }
    assert!(has_line(&out, "PASS nodes: NODA1 ok, NODA2 ok"), "{out}");
    assert!(has_line(&out, "PASS audit without key: 401"), "{out}");
    assert!(has_line(&out, "PASS audit with key: 200"), "{out}");
    assert!(
        has_line(
            &out,
            &format!("PASS redis idempotency A/B: A {}, B {}", a.base, b.base)
        ),
        "{out}"
    );
    assert_eq!(out.last_line(), "RESULT: PASS", "{out}");
    out.assert_no_secret(&deployment);

    // As the release runbook runs it: the smoke's two secrets and nothing of
    // the console's configuration. It learns from /api/ready that
    // idempotency is on Redis and runs the A/B smoke on the one instance.
    let mut cmd = deployment.script("smoke.sh", &[b.base.as_str()]);
    for (key, _) in &deployment.vars {
        cmd.env_remove(key);
    }
    let out = run(cmd
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", &deployment.audit_key));
    assert_eq!(out.code, 0, "{out}");
    assert!(
        has_line(
            &out,
            "PASS ready: 200 (audit ok [sqlite], chat_index ok [sqlite], idempotency ok [redis], rate_limiter ok [redis])"
        ),
        "{out}"
    );
    assert!(
        has_line(
            &out,
            &format!(
                "PASS redis idempotency A/B: A {0}, B {0}: one instance; set A_URL and B_URL for a cross-instance check",
                b.base
            )
        ),
        "{out}"
    );
    assert_eq!(out.last_line(), "RESULT: PASS", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_fails_with_a_wrong_audit_key_and_a_dead_console() {
    let Some(redis) = RedisTestContext::new("smoke_fails_with_a_wrong_audit_key").await else {
        return;
    };
    let deployment = Deployment::new(&redis.url, &redis.prefix).await;
    let console = deployment.start_console();
    let out = run(deployment
        .script("smoke.sh", &[console.base.as_str()])
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", secret("not-the-audit-key"))
        .env("SOFIIA_SMOKE_REDIS", "0"));
    assert_eq!(out.code, 1, "{out}");
    assert!(
        has_line(&out, "FAIL audit with key: got 401, expected 200"),
        "{out}"
    );
    assert_eq!(out.last_line(), "RESULT: FAIL", "{out}");

    let dead = format!("http://127.0.0.1:{}", dead_port());
    let out = run(deployment.script("smoke.sh", &[dead.as_str()]));
    assert_eq!(out.code, 1, "{out}");
    assert!(line_starting(&out, "FAIL health: no HTTP answer"), "{out}");
    drop(console);
}

/// The go/no-go row `id` of an evidence document: (observed, evidence).
fn row(doc: &str, id: &str) -> (String, String) {
    let line = doc
        .lines()
        .find(|l| l.starts_with(&format!("| {id} |")))
        .unwrap_or_else(|| panic!("no row {id}:\n{doc}"));
    let cells: Vec<&str> = line.split(" | ").collect();
    (
        cells[3].to_owned(),
        cells[4].trim_end_matches(" |").to_owned(),
    )
}

fn assert_sections_in_order(doc: &str) {
    let mut at = 0;
    for heading in [
        "## 1) Scope & Version",
        "## 2) Effective configuration and residual risks",
        "## 3) Test results",
        "## 4) Preflight",
        "## 5) Smoke",
        "## 6) Audit trail",
        "## 7) Metrics snapshot",
        "## 8) Go / No-Go criteria",
        "## 9) Rollback readiness",
    ] {
        let found = doc[at..]
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} missing or out of order:\n{doc}"));
        at += found + heading.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_shows_pass_for_the_preflight_and_smoke_it_ran() {
    let Some(redis) = RedisTestContext::new("evidence_shows_pass").await else {
        return;
    };
    let deployment = Deployment::new(&redis.url, &redis.prefix).await;
    let console = deployment.start_console();
    let out_dir = tempfile::tempdir().unwrap();
    let doc_path = out_dir.path().join("evidence.md");

    let out = run(deployment
        .script(
            "generate_release_evidence.sh",
            &[
                "--base-url",
                console.base.as_str(),
                doc_path.to_str().unwrap(),
            ],
        )
        .env("SOFIIA_SMOKE_TOKEN", &deployment.token)
        .env("SOFIIA_SMOKE_AUDIT_KEY", &deployment.audit_key)
        .env("SOFIIA_RELEASE_BY", "release-captain"));
    // No FAIL; the test suite was not run, so the verdict is PENDING.
    assert_eq!(out.code, 0, "{out}");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    assert_sections_in_order(&doc);

    let (g1, g1_evidence) = row(&doc, "G1");
    if binary_is_head() {
        assert_eq!(g1, "PASS", "{doc}");
        assert!(g1_evidence.starts_with("RESULT: PASS ("), "{doc}");
    } else {
        assert_eq!(g1, "WARN", "{doc}");
    }
    let (g2, g2_evidence) = row(&doc, "G2");
    assert_eq!(g2, "PASS", "{doc}");
    assert!(g2_evidence.starts_with("RESULT: PASS ("), "{doc}");
    for id in ["G4", "N1", "N2", "N3", "N4", "S2"] {
        assert_eq!(row(&doc, id).0, "PASS", "{id}:\n{doc}");
    }
    assert_eq!(row(&doc, "G3").0, "NOT RUN", "{doc}");
    assert_eq!(row(&doc, "S1").0, "NOT RUN", "{doc}");
    assert!(doc.contains("Automated verdict: **PENDING**"), "{doc}");
    assert!(doc.contains("| Prepared by | release-captain |"), "{doc}");
    assert!(
        doc.contains("PASS audit write/read: chat.send event "),
        "{doc}"
    );
    assert!(doc.contains("sofiia_build_info{"), "{doc}");

    // The anchor is the newest event's hash, as the trail has it.
    let anchor = doc
        .lines()
        .find_map(|l| l.strip_prefix("- **External anchor: `"))
        .and_then(|l| l.strip_suffix("`**"))
        .unwrap_or_else(|| panic!("no anchor:\n{doc}"));
    let db = rusqlite::Connection::open(deployment.data_dir().join("sofiia.db")).unwrap();
    let newest: String = db
        .query_row(
            "SELECT hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(anchor, newest);

    for secret in deployment.secrets() {
        assert!(
            !doc.contains(&secret),
            "a secret is in the document:\n{doc}"
        );
    }
    out.assert_no_secret(&deployment);
    drop(console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_shows_fail_when_the_preflight_failed() {
    let Some(redis) = RedisTestContext::new("evidence_shows_fail").await else {
        return;
    };
    let mut deployment = Deployment::new(&redis.url, &redis.prefix).await;
    deployment.unset("SOFIIA_AUDIT_KEYS");
    let out_dir = tempfile::tempdir().unwrap();
    let doc_path = out_dir.path().join("evidence.md");
    let log = out_dir.path().join("tests.log");
    std::fs::write(
        &log,
        "     Running tests/a.rs\n\nrunning 3 tests\ntest a ... ok\n\n\
         test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
    )
    .unwrap();

    let out = run(deployment.script(
        "generate_release_evidence.sh",
        &[
            "--test-log",
            log.to_str().unwrap(),
            doc_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.code, 1, "a NO-GO document exits 1\n{out}");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    assert_sections_in_order(&doc);
    let (g1, evidence) = row(&doc, "G1");
    assert_eq!(g1, "FAIL", "{doc}");
    assert!(
        evidence.contains(
            "FAIL audit-keys: SOFIIA_AUDIT_KEYS is unset: /api/audit would refuse every reader"
        ),
        "{doc}"
    );
    assert_eq!(row(&doc, "G2").0, "NOT RUN", "{doc}");
    assert_eq!(
        row(&doc, "S1"),
        (
            "PASS".to_owned(),
            "3 passed, 0 failed, 1 ignored (1 test binaries)".to_owned()
        )
    );
    assert!(
        doc.contains("Automated verdict: **NO-GO**: G1 failed."),
        "{doc}"
    );
    for secret in deployment.secrets() {
        assert!(
            !doc.contains(&secret),
            "a secret is in the document:\n{doc}"
        );
    }
}

/// The processes whose environment holds a value under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && String::from_utf8_lossy(&env).contains(&needle)
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_contained_redis_smoke_passes_and_stops_what_it_started() {
    let Some(redis) = RedisTestContext::new("the_self_contained_redis_smoke").await else {
        return;
    };
    let bin_dir = Path::new(BIN).parent().unwrap();
    assert!(
        bin_dir.join("sofiia-router-stub").is_file(),
        "sofiia-router-stub is not built in {}: run the workspace's tests",
        bin_dir.display()
    );
    // The script's work dir (mktemp) lands here, and every console it starts
    // has its data dir inside it.
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(ROOT).join("ops/redis_idempotency_smoke.sh"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("SOFIIA_") || key == "A_URL" || key == "B_URL" {
            cmd.env_remove(key);
        }
    }
    let out = run(cmd
        .env("SOFIIA_REDIS_URL", &redis.url)
        .env("SOFIIA_BIN_DIR", bin_dir)
        .env("TMPDIR", tmp.path()));
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.last_line(), "PASS", "{out}");
    assert!(
        has_line(&out, "PASS the node saw exactly one call"),
        "the self-contained run checks the node: {out}"
    );
    let left = processes_under(tmp.path());
    assert!(left.is_empty(), "processes left running: {left:?}\n{out}");

    // Its keys go too.
    let prefix = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("redis: keys under "))
        .and_then(|l| l.strip_suffix(", deleted at the end"))
        .unwrap_or_else(|| panic!("no key prefix line\n{out}"))
        .to_owned();
    assert!(prefix.starts_with("sofiia-smoke:"), "{prefix}");
    let client = deadpool_redis::redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "keys left under {prefix}: {keys:?}");
}
