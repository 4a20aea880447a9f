//! The `sofiia-router-stub` binary as a script runs it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sofiia_core_domain::NodeId;
use sofiia_router_client::testing::request;
use sofiia_router_client::{HttpRouter, NodeRouter, NodesConfig};

const BIN: &str = env!("CARGO_BIN_EXE_sofiia-router-stub");

/// The binary, isolated from any `SOFIIA_STUB_*` variable of the caller's
/// environment.
fn stub_command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SOFIIA_STUB_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Kills the child if a test fails before it exits, so no stub outlives it.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for the child to exit; the bound only keeps a broken build from
/// hanging the suite, it is not what the test checks.
fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("the child can be polled") {
            return status;
        }
        assert!(Instant::now() < deadline, "the stub did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(child: &Child, signal: &str) {
    // `kill(1)` instead of a signal crate: one SIGTERM in a test is not
    // worth a dependency.
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_its_address_serves_and_stops_on_sigterm() {
    let child = stub_command()
        .args(["--bind", "127.0.0.1:0", "--name", "NODA1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());

    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let listening: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(listening["msg"], "listening", "{line}");
    assert_eq!(listening["node"], "NODA1", "{line}");
    let addr: SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0);

    let nodes = NodesConfig::from_entries([("NODA1", format!("http://{addr}"))]).unwrap();
    let router = HttpRouter::new(nodes, Duration::from_secs(10)).unwrap();
    let noda1 = NodeId::new("NODA1").unwrap();
    let reply = router.infer(&request(&noda1, "ping")).await.unwrap();
    assert_eq!(reply.text, "[NODA1] echo: ping");

    send_signal(&child.0, "TERM");
    let status = wait_for_exit(&mut child.0);
    assert!(status.success(), "graceful stop exits 0, got {status:?}");
    let mut rest = String::new();
    stdout.read_line(&mut rest).unwrap();
    let stopped: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(stopped["msg"], "stopped", "{rest}");
    assert_eq!(stopped["signal"], "SIGTERM", "{rest}");
}

#[test]
fn stops_gracefully_on_sigint_too() {
    let child = stub_command()
        .args(["--name", "NODA2", "--fail-status", "503"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains(r#""msg":"listening""#), "{line}");
    send_signal(&child.0, "INT");
    assert!(wait_for_exit(&mut child.0).success());
}

#[test]
fn rejects_bad_arguments() {
    for args in [
        &["--name", "not valid"][..],
        &["--name", "NODA1", "--fail-status", "42"],
        &["--name", "NODA1", "--bind", "nowhere"],
        &["--name", "NODA1", "--workers", "0"],
        &[],
    ] {
        let output = stub_command().args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} should be rejected");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}
