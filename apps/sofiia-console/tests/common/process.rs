//! The real `sofiia-console` binary as a child process: started in a clean
//! environment, its JSON log lines collected, stopped by a signal.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sofiia-console");

/// A command for the binary with no `SOFIIA_*` variable of this process.
pub fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOFIIA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A running `sofiia-console`, killed on drop.
pub struct ConsoleProcess {
    child: Child,
    pub base: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl ConsoleProcess {
    /// Spawns `cmd` (stdout is taken over) and waits for its `listening`
    /// line.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        {
            let lines = Arc::clone(&lines);
            // Keeps draining stdout so the console never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        lines.lock().unwrap().push(v.clone());
                        let _ = tx.send(v);
                    }
                }
            });
        }
        let mut process = Self {
            child,
            base: String::new(),
            lines,
        };
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("the console printed no listening line");
            if line["msg"] == "listening" {
                process.base = format!("http://{}", line["addr"].as_str().unwrap());
                return process;
            }
        }
    }

    /// Every JSON line it printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits (up to `limit`) for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        self.wait(limit)
    }

    /// SIGKILL, and the exit.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// Waits (up to `limit`) for the process to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the console did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
