//! The Markdown report: the machine, then one table per measurement.

use std::fmt::Write as _;
use std::time::Duration;

use crate::audit_cost::{AuditReport, PRUNE_BATCH};
use crate::growth::GrowthRow;
use crate::load::{LoadReport, thousands};
use crate::memory::MemoryRow;
use crate::procs::Memory;

/// The machine the numbers come from.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
}

fn first_match(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

impl Machine {
    /// Reads `/proc` and asks `rustc --version`.
    pub(crate) fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = first_match(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu: first_match(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism()
                .map(std::num::NonZeroUsize::get)
                .unwrap_or(1),
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            rustc,
        }
    }
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn ms(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3}")
    } else if x < 100.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn kib_mib(kib: u64) -> String {
    mib(kib * 1024)
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

/// The header: machine, load, settings.
pub(crate) fn header(
    machine: &Machine,
    settings: &crate::cli::Settings,
    load_before: &str,
    command: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# sofiia-console cost measurements\n");
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(out, "| CPU | {} ({} cores) |", machine.cpu, machine.cores);
    let _ = writeln!(out, "| memory | {} |", machine.memory);
    let _ = writeln!(out, "| kernel | {} |", machine.kernel);
    let _ = writeln!(out, "| Rust | {} |", machine.rustc);
    let _ = writeln!(out, "| load average at start | {load_before} |");
    let _ = writeln!(out, "| command | `{command}` |");
    let _ = writeln!(
        out,
        "| load settings | {} rounds × ({:.1} s warm-up + {:.1} s measured) per side, {} connections, {} load generator thread(s), {} server workers, stub {} worker(s) |",
        settings.rounds,
        settings.warmup.as_secs_f64(),
        settings.duration.as_secs_f64(),
        settings.concurrency,
        settings.loadgen_threads,
        settings.server_workers(),
        settings.stub_workers,
    );
    out
}

/// The load tables.
pub(crate) fn load(report: &LoadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Load: each scenario against the bare proxy baseline\n"
    );
    let _ = writeln!(
        out,
        "Medians across rounds. The ratios are taken per round (scenario ÷ the baseline run of the same round) and their median is shown. The baseline is a send through the bare proxy, except for (e), whose baseline is the bare proxy's own `GET /api/health`; so (c) and (d) compare a replay and a page read with a proxied send; the range of the per-round throughput ratios follows in brackets. Server CPU is the measured process's user + system time over the run (every thread: HTTP workers, SQLite threads, audit writer, logger) divided by the requests it answered; `1 000 000 ÷ CPU µs/req` is requests per second per fully used core.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/req | req/s ÷ baseline | p50 ÷ baseline | CPU/req ÷ baseline |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    if let Some(b) = &report.baseline {
        let _ = writeln!(
            out,
            "| baseline: send through the bare proxy to the node (all rounds) | {:.0} | {} | {} | {} | {} | {:.0} | 1 | 1 | 1 |",
            b.rps,
            ms(b.p50_ms),
            ms(b.p99_ms),
            ms(b.p999_ms),
            b.errors,
            b.cpu_us,
        );
    }
    for s in &report.scenarios {
        let m = &s.summary.median;
        let range = s
            .summary
            .rps_ratio_range
            .map(|(lo, hi)| format!(" ({lo:.2}–{hi:.2})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {}{} | {} | {} |",
            s.title,
            m.rps,
            ms(m.p50_ms),
            ms(m.p99_ms),
            ms(m.p999_ms),
            s.summary.errors_total,
            m.cpu_us,
            times(s.summary.rps_ratio),
            range,
            times(s.summary.p50_ratio),
            times(s.summary.cpu_ratio),
        );
    }
    let errors: Vec<String> = report
        .scenarios
        .iter()
        .filter(|s| !s.errors.is_empty())
        .map(|s| {
            let kinds: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            format!("- {}: {}", s.title, kinds.join(", "))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nErrors:\n\n{}", errors.join("\n"));
    }

    let _ = writeln!(out, "\n<details><summary>Every round</summary>\n");
    let _ = writeln!(
        out,
        "| scenario | round | order | req/s | baseline req/s | ratio | p50 ms | baseline p50 ms | CPU µs/req | baseline CPU µs/req |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in &report.scenarios {
        for (i, (a, b)) in s.pairs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} |",
                s.title,
                i + 1,
                if i % 2 == 0 { "B→A" } else { "A→B" },
                a.rps,
                b.rps,
                times(crate::stats::ratio(a.rps, b.rps)),
                ms(a.p50_ms),
                ms(b.p50_ms),
                a.cpu_us,
                b.cpu_us,
            );
        }
    }
    let _ = writeln!(out, "\nA is the scenario, B the baseline.\n\n</details>\n");

    if !report.memory.is_empty() {
        let _ = writeln!(out, "Resident memory of the processes (VmRSS):\n");
        let _ = writeln!(out, "| process | idle | after the load rounds |");
        let _ = writeln!(out, "| --- | ---: | ---: |");
        let show = |m: &Option<Memory>| m.map_or_else(|| "–".into(), |m| kib_mib(m.rss_kib));
        for (name, idle, after) in &report.memory {
            let _ = writeln!(out, "| {name} | {} | {} |", show(idle), show(after));
        }
        let _ = writeln!(out);
    }
    for note in &report.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// The growth table.
pub(crate) fn growth(rows: &[GrowthRow], iterations: usize, redis_note: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Chat index: page fetch as a chat grows\n\nOne chat of n messages; `list_messages` with `limit=50` called through the crate, one call at a time, {iterations} times per cell. \"First page\" is the newest 50, \"middle page\" starts from a cursor at message n/2. Footprint: the SQLite file with its WAL, or what the process's resident memory grew by for the in-memory backend.\n"
    );
    let _ = writeln!(
        out,
        "| backend | messages | fill (messages/s) | first page p50 | first page p99 | middle page p50 | middle page p99 | footprint | per message |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            thousands(r.messages),
            r.fill_rate,
            us(r.first_page.p50),
            us(r.first_page.p99),
            us(r.deep_page.p50),
            us(r.deep_page.p99),
            r.footprint_bytes.map_or_else(|| "–".into(), mib),
            r.footprint_bytes.map_or_else(
                || "–".into(),
                |b| format!("{:.0} B", b as f64 / r.messages.max(1) as f64)
            ),
        );
    }
    let _ = writeln!(out, "\n- {redis_note}");
    out
}

/// The HTTP growth table.
pub(crate) fn http_growth(
    rows: &[crate::http_growth::HttpGrowthRow],
    iterations: u64,
    concurrency: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Through the console's HTTP API\n\nOne chat filled by real sends ({concurrency} clients), then `GET /api/chats/{{id}}/messages?limit=50` read {iterations} times by one client, one at a time: authentication, middleware, the store and the JSON answer.\n"
    );
    let _ = writeln!(
        out,
        "| chat index | messages | fill (sends/s) | first page p50 | first page p99 | errors |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} ms | {} ms | {} |",
            r.backend,
            thousands(r.messages),
            r.fill_sends_per_sec,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.errors
        );
    }
    out
}

/// The audit table.
pub(crate) fn audit(r: &AuditReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Audit trail at {} events\n\n`SqliteAuditStore` through the crate (WAL, `synchronous=FULL`, group commit). Events shaped like the console's `chat.send`.\n",
        thousands(r.events)
    );
    let _ = writeln!(out, "| measurement | result |\n| --- | ---: |");
    let phase = |p: &crate::audit_cost::AppendPhase| {
        format!(
            "{:.0} events/s ({} events, {:.1} per transaction)",
            p.per_sec,
            thousands(p.events),
            p.batch
        )
    };
    let rows = [
        (
            "append, 1 at a time, empty store",
            phase(&r.sequential_empty),
        ),
        ("append, 64 at a time, filling the store", phase(&r.fill)),
        (
            "append, 1 at a time, at full size",
            phase(&r.sequential_full),
        ),
        (
            "append, 64 at a time, at full size",
            phase(&r.concurrent_full),
        ),
        ("file size (database + WAL)", mib(r.file_bytes)),
        ("`verify` (walk the whole hash chain)", secs(r.verify)),
        (
            "`count_before` (what `prune-audit --dry-run` does)",
            secs(r.count_before),
        ),
        (
            "prune every event",
            format!(
                "{} in {} batches of {PRUNE_BATCH} ({:.0} events/s)",
                secs(r.prune),
                r.prune_batches,
                r.events as f64 / r.prune.as_secs_f64().max(1e-9)
            ),
        ),
        ("incremental vacuum after the prune", secs(r.vacuum)),
        ("checkpoint (passive)", secs(r.checkpoint)),
        (
            "file size after prune, vacuum and checkpoint",
            mib(r.file_bytes_after),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    out
}

/// The memory table.
pub(crate) fn memory(rows: &[MemoryRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Console memory after sends to distinct chats\n\nEach send goes to a chat of its own; operators take turns. Rate limits in memory (default capacity: 100 000 buckets); idempotency keys in memory (default capacity: 100 000 keys) or in SQLite (the default store, which keeps them on disk). VmRSS from `/proc/<pid>/status` after 500 warm-up sends and after the measured sends.\n"
    );
    let _ = writeln!(
        out,
        "| chat index | idempotency keys | chats | operators | RSS before | RSS after | growth | per chat | peak (VmHWM) | sends/s while filling | errors |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} B | {} | {:.0} | {} |",
            r.chat_index,
            r.idempotency,
            thousands(r.chats),
            thousands(u64::from(r.operators)),
            kib_mib(r.before.rss_kib),
            kib_mib(r.after.rss_kib),
            kib_mib(r.after.rss_kib.saturating_sub(r.before.rss_kib)),
            r.bytes_per_chat(),
            kib_mib(r.after.hwm_kib),
            r.sends_per_sec,
            r.errors,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::ScenarioResult;
    use crate::stats::{RunNumbers, summarise};

    /// Every row of every table has as many cells as its header.
    fn assert_tables_are_rectangular(markdown: &str) {
        let mut width = None;
        for line in markdown.lines() {
            if !line.starts_with('|') {
                width = None;
                continue;
            }
            let cells = line.matches('|').count();
            match width {
                None => width = Some(cells),
                Some(w) => assert_eq!(cells, w, "{line}"),
            }
        }
    }

    #[test]
    fn load_tables_are_rectangular() {
        let n = RunNumbers {
            rps: 100.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            errors: 0,
            cpu_us: 50.0,
        };
        let pairs = vec![(n, n), (n, n)];
        let report = LoadReport {
            scenarios: vec![ScenarioResult {
                title: "(a) send".into(),
                summary: summarise(&pairs),
                pairs,
                errors: Default::default(),
            }],
            baseline: Some(n),
            notes: vec!["a note".into()],
            memory: vec![("console".into(), None, None)],
        };
        let text = load(&report);
        assert!(text.contains("| (a) send | 100 |"), "{text}");
        assert_tables_are_rectangular(&text);
    }

    #[test]
    fn number_formats() {
        assert_eq!(ms(0.1234), "0.123");
        assert_eq!(ms(12.345), "12.35");
        assert_eq!(ms(1234.5), "1234");
        assert_eq!(us(Duration::from_micros(250)), "250 µs");
        assert_eq!(us(Duration::from_micros(2500)), "2.50 ms");
        assert_eq!(mib(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(times(Some(0.456)), "0.46×");
        assert_eq!(times(None), "–");
    }
}
