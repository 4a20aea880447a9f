//! The processes a measurement runs: the router stub, consoles and the
//! baseline proxy, each a real child process that announces its address
//! with a JSON `{"msg":"listening","addr":...}` line on stdout.

use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a child may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A started server process; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    name: String,
    child: Option<Child>,
    addr: SocketAddr,
    stderr_path: PathBuf,
}

/// Why a server did not start.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// It exited before listening, with this exit code (if any) and the
    /// end of its stderr.
    Exited {
        /// The exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// The last lines of its stderr and stdout.
        output: String,
    },
    /// Something else went wrong: I/O, timeout, unreadable line.
    Other(String),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Exited { code, output } => match code {
                Some(code) => write!(f, "exited with code {code}: {output}"),
                None => write!(f, "killed by a signal: {output}"),
            },
            StartFailure::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for StartFailure {}

/// Where a listening line says the server is, if `line` is one.
pub(crate) fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("msg")?.as_str()? != "listening" {
        return None;
    }
    value.get("addr")?.as_str()?.parse().ok()
}

enum Line {
    Listening(SocketAddr),
    Text(String),
    Eof,
}

impl Server {
    /// Starts `command` (stdout is read for the listening line, then
    /// drained; stderr goes to `<log_dir>/<name>.stderr`) and waits until it
    /// listens.
    ///
    /// # Errors
    ///
    /// [`StartFailure::Exited`] when it exits first (a console exits 2 on a
    /// setting it does not support), [`StartFailure::Other`] otherwise.
    pub(crate) fn start(
        name: &str,
        mut command: Command,
        log_dir: &Path,
    ) -> Result<Server, StartFailure> {
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stderr = File::create(&stderr_path)
            .map_err(|e| StartFailure::Other(format!("{}: {e}", stderr_path.display())))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| StartFailure::Other(format!("cannot start {name}: {e}")))?;
        let Some(stdout) = child.stdout.take() else {
            stop_now(&mut child);
            return Err(StartFailure::Other(format!("{name}: no stdout pipe")));
        };
        let (tx, rx) = mpsc::channel();
        // The reader keeps draining stdout for the child's whole life: a
        // console writes a log line per request, and a full pipe would stall
        // it. Draining costs the same for every scenario.
        let reader = thread::Builder::new()
            .name(format!("drain-{name}"))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(Line::Eof);
                            return;
                        }
                        Ok(_) => {
                            let msg = match listening_addr(line.trim()) {
                                Some(addr) => Line::Listening(addr),
                                None => Line::Text(line.trim().to_owned()),
                            };
                            let listening = matches!(msg, Line::Listening(_));
                            if tx.send(msg).is_err() || listening {
                                break;
                            }
                        }
                    }
                }
                let mut sink = [0u8; 64 * 1024];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            });
        if let Err(e) = reader {
            stop_now(&mut child);
            return Err(StartFailure::Other(format!(
                "cannot start a reader thread: {e}"
            )));
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Line::Listening(addr)) => {
                    return Ok(Server {
                        name: name.to_owned(),
                        child: Some(child),
                        addr,
                        stderr_path,
                    });
                }
                Ok(Line::Text(text)) => {
                    seen.push(text);
                    if seen.len() > 20 {
                        seen.remove(0);
                    }
                }
                Ok(Line::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_for_exit(&mut child, Duration::from_secs(5));
                    if status.is_none() {
                        // Closed its stdout but still running: do not leave it.
                        stop_now(&mut child);
                    }
                    let mut output = tail(&stderr_path, 5);
                    output.extend(seen.into_iter().rev().take(5).rev());
                    return Err(StartFailure::Exited {
                        code: status.and_then(|s| s.code()),
                        output: output.join(" | "),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    stop_now(&mut child);
                    return Err(StartFailure::Other(format!(
                        "{name} did not listen within {}s; stderr: {}",
                        START_TIMEOUT.as_secs(),
                        tail(&stderr_path, 5).join(" | ")
                    )));
                }
            }
        }
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now and at its peak, in KiB, from `/proc/<pid>/status`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or lacks the fields (not Linux).
    pub(crate) fn memory(&self) -> io::Result<Memory> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other(format!("{} is not running", self.name)))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Memory::parse(&status).ok_or_else(|| io::Error::other("no VmRSS/VmHWM in status"))
    }

    /// CPU time (user + system, every thread) it has used so far.
    pub(crate) fn cpu_time(&self) -> Option<std::time::Duration> {
        cpu_time(self.pid()?)
    }

    /// Stops it: SIGTERM, then SIGKILL after a grace period.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    /// The last lines of its stderr, for error reports.
    pub(crate) fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path, lines).join(" | ")
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // `kill(1)` rather than libc: this crate forbids unsafe code.
        let termed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !termed || wait_for_exit(&mut child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Kills `child` and reaps it.
fn stop_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn tail(path: &Path, lines: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which
/// Linux fixes at 100 for user space on every architecture it exposes it.
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads) of process `pid` so far.
pub(crate) fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| std::time::Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// CPU time of process `pid` and its children: its own, that of the
/// children it has reaped (`cutime + cstime`) and that of its live
/// children, so the sum only grows as children come and go. This is how a
/// forking server such as PostgreSQL's postmaster, with a process per
/// connection, is measured.
pub(crate) fn tree_cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut ticks = parse_cpu_ticks(&stat)? + parse_reaped_ticks(&stat)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A child that exits meanwhile is counted by its parent once reaped.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat"))
            && parse_parent(&stat) == Some(pid)
        {
            ticks += parse_cpu_ticks(&stat).unwrap_or(0);
        }
    }
    Some(std::time::Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// The fields of the text of `/proc/<pid>/stat` after the command name,
/// which may hold spaces and parentheses: they are counted from the last
/// `)`, so index 0 is the state (field 3).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/<pid>/stat`,
/// in ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `cutime + cstime` (fields 16 and 17): the CPU time of the children the
/// process has waited for, in ticks.
fn parse_reaped_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// The parent's process id (field 4).
pub(crate) fn parse_parent(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size.
    pub hwm_kib: u64,
}

impl Memory {
    /// Reads `VmRSS` and `VmHWM` from the text of `/proc/<pid>/status`.
    pub(crate) fn parse(status: &str) -> Option<Memory> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Memory {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
        })
    }
}

/// Finds the release binaries next to this one (where `cargo build --release`
/// puts every binary of the workspace), or in `dir` when given.
///
/// # Errors
///
/// A message saying how to build them when one is missing.
pub(crate) fn binary(dir: Option<&Path>, name: &str) -> Result<PathBuf, String> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this binary: {e}"))?
            .parent()
            .map(Path::to_owned)
            .ok_or("this binary has no parent directory")?,
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found; build it first: cargo build --release -p sofiia-console -p sofiia-router-stub -p sofiia-bench (or pass --bin-dir)",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_lines_of_every_server() {
        let console = r#"{"msg":"listening","level":"INFO","ts":"2026-01-01T00:00:00Z","service":"sofiia-console","addr":"127.0.0.1:4242","version":"0.1.0"}"#;
        assert_eq!(
            listening_addr(console),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        let stub = r#"{"msg":"listening","addr":"127.0.0.1:9001","node":"NODA1"}"#;
        assert_eq!(
            listening_addr(stub),
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(listening_addr(r#"{"msg":"chat index: sqlite"}"#), None);
        assert_eq!(listening_addr("not json"), None);
        assert_eq!(
            listening_addr(r#"{"msg":"listening","addr":"nowhere"}"#),
            None
        );
    }

    #[test]
    fn parses_cpu_ticks_after_odd_command_names() {
        let stat = "1234 (sofiia (x) y) S 1 1234 1234 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_reaped_ticks(stat), Some(0));
        assert_eq!(parse_parent(stat), Some(1));
        let parent =
            "77 (postgres) S 1 77 77 0 -1 4194304 55561 4474397 0 183 24 274 9885 10981 20 0 1 0";
        assert_eq!(parse_cpu_ticks(parent), Some(298));
        assert_eq!(parse_reaped_ticks(parent), Some(20_866));
        assert!(cpu_time(std::process::id()).is_some());
        let own = cpu_time(std::process::id()).unwrap();
        assert!(tree_cpu_time(std::process::id()).unwrap() >= own);
    }

    #[test]
    fn parses_proc_status_memory() {
        let status =
            "Name:\tsofiia-console\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t7\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 40_960,
                hwm_kib: 51_200
            })
        );
        assert_eq!(Memory::parse("Name:\tx\n"), None);
    }
}
