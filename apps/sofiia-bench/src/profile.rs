//! A CPU profile of the console while it serves sends on its embedded
//! defaults, with `perf record` (software clock sampling, so it also works
//! in virtual machines without hardware counters).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::loadgen::{self, LoadConfig, Stop};
use crate::rig::{ConsoleSpec, Rig};
use crate::workloads::Sends;

/// Profiles the console for the run's duration and returns the top of
/// `perf report`, flat (self time by symbol) and by shared object.
///
/// # Errors
///
/// When perf is missing or fails, or a process does not start.
pub(crate) fn run(rig: &Rig, perf_data: &Path, call_graph: bool) -> Result<String, String> {
    let s = &rig.settings;
    let perf_ok = Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !perf_ok {
        return Err("perf is not installed (Debian: apt-get install linux-perf)".into());
    }
    let stub = rig.stub()?;
    let token = format!("tok-{}-bench-operator-token", rig.session);
    let spec = ConsoleSpec::new("profile").var("SOFIIA_OPERATOR_TOKENS", format!("bench:{token}"));
    let console = rig
        .console(&spec, &stub)
        .map_err(|e| format!("console: {e}"))?;
    let pid = console.pid().ok_or("the console has no pid")?;
    let send = |tag: &str, warmup, measure| {
        loadgen::run(
            LoadConfig {
                addr: console.addr(),
                concurrency: s.concurrency,
                stop: Stop::Duration { warmup, measure },
                threads: s.loadgen_threads,
            },
            Arc::new(Sends::new(
                console.addr(),
                std::slice::from_ref(&token),
                "prof",
                &format!("{}-{tag}", rig.session),
            )),
        )
        .map_err(|e| format!("load generator: {e}"))
    };
    // Warm before sampling starts, so start-up is not in the profile.
    send("warm", std::time::Duration::ZERO, s.warmup)?;
    let seconds = s.duration.as_secs_f64().max(1.0);
    let mut perf = Command::new("perf");
    perf.args(["record", "-e", "cpu-clock", "-F", "999", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(perf_data);
    if call_graph {
        perf.args(["--call-graph", "dwarf,16384"]);
    }
    perf.args(["--", "sleep"])
        .arg(format!("{seconds:.1}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut recorder = perf.spawn().map_err(|e| format!("perf record: {e}"))?;
    let result = send("prof", std::time::Duration::ZERO, s.duration)?;
    let status = recorder.wait().map_err(|e| format!("perf record: {e}"))?;
    if !status.success() {
        return Err(format!("perf record failed ({status})"));
    }
    crate::progress(&format!(
        "profile: {:.0} sends/s while sampling, {} errors",
        result.rps(),
        result.errors
    ));
    let report = |sort: &str| -> Result<String, String> {
        let out = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--stdio",
                "--percent-limit",
                "0.8",
            ])
            .args(["--sort", sort, "-g", "none", "-i"])
            .arg(perf_data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("perf report: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(40)
            .map(tidy)
            .collect::<Vec<_>>()
            .join("\n"))
    };
    Ok(format!(
        "## Profile of the console under send load\n\n{:.0} sends/s while sampling; `perf record -e cpu-clock -F 999 -p {pid}` for {seconds:.1} s, data in `{}`.\n\nBy thread (`actix-rt|system` are the HTTP workers, `tokio-rt-worker` the blocking pool running SQLite calls, `sofiia-audit-wr` the audit writer, `sofiia-log` the log writer):\n\n```text\n{}\n```\n\nBy shared object:\n\n```text\n{}\n```\n\nBy symbol (self time):\n\n```text\n{}\n```\n",
        result.rps(),
        perf_data.display(),
        report("comm")?,
        report("dso")?,
        report("dso,symbol")?,
    ))
}

/// A `perf report` line without its padding and the empty columns perf
/// leaves at the end of it.
fn tidy(line: &str) -> String {
    let mut line = line.trim_end();
    // An empty column is a lone `-` after whitespace.
    while let Some(rest) = line.strip_suffix('-')
        && rest.ends_with(char::is_whitespace)
    {
        line = rest.trim_end();
    }
    line.to_owned()
}

#[cfg(test)]
mod tests {
    use super::tidy;

    #[test]
    fn tidy_drops_padding_and_empty_columns() {
        assert_eq!(
            tidy(
                "     2.41%  sofiia-console     [.] sqlite3VdbeExec          -      -            "
            ),
            "     2.41%  sofiia-console     [.] sqlite3VdbeExec"
        );
        assert_eq!(
            tidy("    48.44%  sofiia-console   "),
            "    48.44%  sofiia-console"
        );
        assert_eq!(tidy("  1.0%  [.] operator-  "), "  1.0%  [.] operator-");
    }
}
