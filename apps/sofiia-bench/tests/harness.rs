//! The harness end to end, in miniature: real router stub, real consoles,
//! the baseline proxy and the load generator, with runs short enough for CI.
//! It checks that the tables are printed and carry measured, error-free
//! numbers; it does not judge how fast anything is.
//!
//! The consoles and the stub are the debug binaries `cargo test --workspace`
//! builds next to this one.

use std::path::PathBuf;
use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_sofiia-bench");

/// The directory holding this package's binary, where cargo also puts the
/// other workspace binaries.
fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(BENCH)
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    for name in ["sofiia-console", "sofiia-router-stub"] {
        assert!(
            dir.join(name).is_file(),
            "{name} is not built in {}: run the workspace's tests (`cargo test --workspace`), \
             which build it",
            dir.display()
        );
    }
    dir
}

fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(BENCH);
    cmd.arg("--bin-dir").arg(bin_dir()).args(args);
    if let Ok(url) = std::env::var("SOFIIA_TEST_REDIS_URL") {
        cmd.env("SOFIIA_BENCH_REDIS_URL", url);
    }
    if let Ok(url) = std::env::var("SOFIIA_TEST_POSTGRES_URL") {
        cmd.env("SOFIIA_BENCH_POSTGRES_URL", url);
    }
    let out = cmd.output().expect("sofiia-bench runs");
    assert!(
        out.status.success(),
        "sofiia-bench {args:?} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cells of the Markdown table row whose first cell starts with `label`.
fn row(report: &str, label: &str) -> Vec<String> {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .unwrap_or_else(|| panic!("no row `{label}` in:\n{report}"));
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

fn number(cell: &str) -> f64 {
    cell.trim_end_matches('×')
        .split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches('×').parse().ok())
        .unwrap_or_else(|| panic!("`{cell}` is not a number"))
}

fn redis_wanted() -> bool {
    std::env::var("SOFIIA_TEST_REDIS_URL").is_ok()
}

/// The PostgreSQL scenario needs Redis too.
fn postgres_wanted() -> bool {
    redis_wanted() && std::env::var("SOFIIA_TEST_POSTGRES_URL").is_ok()
}

#[test]
fn load_rounds_print_every_scenario_against_the_baseline() {
    let scenarios = if postgres_wanted() {
        "embedded,redis,postgres,replay,health"
    } else if redis_wanted() {
        "embedded,redis,replay,health"
    } else {
        "embedded,replay,health"
    };
    let out = bench(&[
        "load",
        "--rounds",
        "2",
        "--warmup",
        "0.1",
        "--duration",
        "0.4",
        "--concurrency",
        "4",
        "--scenarios",
        scenarios,
    ]);
    let report = String::from_utf8(out.stdout).expect("UTF-8 report");
    assert!(report.starts_with("# sofiia-console cost measurements"));

    let baseline = row(&report, "baseline: send through the bare proxy");
    assert!(number(&baseline[1]) > 0.0, "baseline req/s: {baseline:?}");
    assert!(number(&baseline[6]) > 0.0, "baseline CPU: {baseline:?}");
    let mut labels = vec!["(a) send, embedded defaults", "(c) idempotent replay"];
    if redis_wanted() {
        labels.push("(b) send, Redis backends");
    }
    if postgres_wanted() {
        labels.push("(f) send, audit and chat index on PostgreSQL, keys and quotas on Redis");
    }
    labels.push("(e) GET /api/health");
    for label in labels {
        let cells = row(&report, label);
        // scenario | req/s | p50 | p99 | p99.9 | errors | CPU | ratios...
        assert_eq!(cells.len(), 10, "{label}: {cells:?}");
        assert!(number(&cells[1]) > 0.0, "{label} measured no requests");
        assert_eq!(cells[5], "0", "{label} had errors");
        assert!(
            number(&cells[6]) > 0.0,
            "{label} has no CPU per request: {cells:?}"
        );
        assert!(number(&cells[7]) > 0.0, "{label} has no ratio: {cells:?}");
        assert!(
            number(&cells[9]) > 0.0,
            "{label} has no CPU ratio: {cells:?}"
        );
        // One row per round in the details, in alternating order.
        let rounds: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with(&format!("| {label} | ")))
            .skip(1)
            .collect();
        assert_eq!(rounds.len(), 2, "{label}: {rounds:?}");
        assert!(
            rounds[0].contains("| B→A |") && rounds[1].contains("| A→B |"),
            "{rounds:?}"
        );
    }
    if redis_wanted() {
        assert!(
            report.contains("keys the run wrote under `sofiia-bench:")
                && report.contains("; 0 left."),
            "the Redis keys were not cleaned up:\n{report}"
        );
    }
    if postgres_wanted() {
        assert!(
            report.contains("PostgreSQL: dropped the database `sofiia_bench_"),
            "the run's database was not dropped:\n{report}"
        );
    }
}

#[test]
fn audit_and_growth_measure_small_stores() {
    let out = bench(&["audit", "--audit-events", "3000"]);
    let report = String::from_utf8(out.stdout).expect("UTF-8 report");
    let verify = row(&report, "`verify`");
    assert!(verify[1].ends_with(" s"), "{verify:?}");
    let prune = row(&report, "prune every event");
    assert!(prune[1].contains("batches"), "{prune:?}");

    let out = bench(&["growth", "--quick", "--growth-sizes", "200"]);
    let report = String::from_utf8(out.stdout).expect("UTF-8 report");
    for backend in ["sqlite", "inmemory"] {
        let cells = row(&report, backend);
        assert_eq!(cells[1], "200", "{cells:?}");
        assert!(cells[3].ends_with("µs"), "{cells:?}");
    }
}
