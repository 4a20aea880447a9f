//! `sofiia-bench`: what each layer of the sofiia-console send path costs,
//! measured side by side in one run.
//!
//! The harness starts real processes on the loopback interface: a
//! `sofiia-router-stub` node, the release `sofiia-console` binary in the
//! configurations being measured, and a **baseline**, a bare actix-web proxy
//! (this binary, `serve-baseline`) that forwards the same send body to the
//! same node through the console's own `HttpRouter`, without
//! authentication, idempotency, rate limits, chat index, audit, logs or
//! metrics. A closed-loop load generator (hyper, fixed concurrency, fixed
//! duration, HDR latency histograms) drives them in alternating A/B rounds.
//!
//! Measurements (subcommands; `all` runs every one):
//!
//! - `load`: (a) send on the embedded defaults, (a′) the same with many
//!   operators configured, (b) send on Redis backends, (c) idempotent
//!   replay, (d) the first page of a 100 000 message chat, (e)
//!   `GET /api/health`, (f) send with the audit trail and chat index on
//!   PostgreSQL and keys and quotas on Redis; each against the baseline of
//!   its round;
//! - `growth`: page-fetch time at 1 000, 100 000 and 1 000 000 messages per
//!   chat index backend, through the `sofiia-chat-index` crate;
//! - `audit`: audit append throughput, verification and prune at 1 000 000
//!   events, through the `sofiia-audit-store` crate;
//! - `memory`: the console's resident memory after sends to 100 000
//!   distinct chats by 1 000 operators;
//! - `profile`: a `perf` profile of the console under send load.
//!
//! ```text
//! cargo build --release -p sofiia-console -p sofiia-router-stub -p sofiia-bench
//! target/release/sofiia-bench --quick          # under two minutes
//! target/release/sofiia-bench                  # the full run
//! target/release/sofiia-bench load --scenarios embedded,redis --rounds 7
//! ```
//!
//! `ops/bench.sh` builds and runs it; `docs/benchmarks.md` has the numbers
//! and what they mean for sizing a deployment.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
pub(crate) use sofiia_core_domain::error_chain;

mod audit_cost;
mod baseline;
mod cli;
mod growth;
mod http_growth;
mod load;
mod loadgen;
mod memory;
mod pg_db;
mod procs;
mod profile;
mod redis_keys;
mod report;
mod rig;
mod stats;
mod workloads;

use cli::{Cli, Command, Settings};
use rig::Rig;

/// Writes a progress line to stderr (stdout carries the report).
pub(crate) fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[sofiia-bench] {line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ServeBaseline {
        bind,
        node,
        node_url,
        http_workers,
        timeout_ms,
    }) = &cli.command
    {
        return match baseline::serve(
            *bind,
            node,
            node_url,
            std::time::Duration::from_millis(*timeout_ms),
            *http_workers,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                progress(&format!("baseline: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(markdown) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{markdown}").is_err() {
                return ExitCode::FAILURE;
            }
            if let Some(path) = &cli.out
                && let Err(e) = std::fs::write(path, &markdown)
            {
                progress(&format!("cannot write {}: {e}", path.display()));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            progress(&format!("failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "sofiia-bench".to_owned() } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: &Cli) -> Result<String, String> {
    let settings = Settings::from_cli(cli);
    let command = cli.command.clone().unwrap_or(Command::All);
    let machine = report::Machine::describe();
    let load_before = report::loadavg();
    progress(&format!("load average at start: {load_before}"));
    let mut out = report::header(&machine, &settings, &load_before, &command_line());
    let rig = Rig::new(settings.clone(), cli.bin_dir.as_deref())?;
    let all = matches!(command, Command::All);
    let started = std::time::Instant::now();

    if all || matches!(command, Command::Load) {
        let report = load::run(&rig)?;
        out.push('\n');
        out.push_str(&report::load(&report));
    }
    if all || matches!(command, Command::Growth) {
        let iterations = if settings.quick { 300 } else { 2_000 };
        let runtime = runtime()?;
        let rows = runtime.block_on(growth::run(
            rig.path(),
            &settings.growth_sizes,
            iterations,
            &progress,
        ))?;
        let stub = rig.stub()?;
        let redis = rig.console_supports_redis_chat_index(&stub);
        drop(stub);
        let redis_note = match &redis {
            Ok(true) => "Redis: the harness calls the stores above directly, and has no direct handle on the Redis chat index; it is measured through the console's HTTP API below, beside the other backends measured the same way.".to_owned(),
            Ok(false) => "Redis: not measured. This console build does not accept `SOFIIA_CHAT_INDEX_BACKEND=redis` (check-config exits 2 naming it).".to_owned(),
            Err(e) => format!("Redis: not measured ({e})."),
        };
        out.push('\n');
        out.push_str(&report::growth(&rows, iterations, &redis_note));
        if matches!(redis, Ok(true)) {
            let reachable = runtime.block_on(redis_keys::ping(&settings.redis_url));
            match reachable {
                Ok(()) => {
                    // Filling goes through real sends; in a quick run only
                    // the small sizes fit.
                    let sizes: Vec<u64> = settings
                        .growth_sizes
                        .iter()
                        .copied()
                        .filter(|n| !settings.quick || *n <= 10_000)
                        .collect();
                    let http_iterations = if settings.quick { 200 } else { 1_000 };
                    let rows = http_growth::run(
                        &rig,
                        &["sqlite", "inmemory", "redis"],
                        &sizes,
                        http_iterations,
                    );
                    let cleanup = runtime.block_on(redis_keys::delete_prefix(
                        &settings.redis_url,
                        &format!("sofiia-bench:{}:growth:", rig.session),
                    ));
                    if let Err(e) = cleanup {
                        progress(&format!("could not delete the growth keys: {e}"));
                    }
                    let table = report::http_growth(&rows?, http_iterations, settings.concurrency);
                    out.push('\n');
                    out.push_str(&table);
                }
                Err(e) => {
                    out.push_str(&format!("\n- Redis over HTTP: not measured ({e}).\n"));
                }
            }
        }
    }
    if all || matches!(command, Command::Audit) {
        let runtime = runtime()?;
        let report = runtime.block_on(audit_cost::run(
            rig.path(),
            settings.audit_events,
            &progress,
        ))?;
        out.push('\n');
        out.push_str(&report::audit(&report));
    }
    if all || matches!(command, Command::Memory) {
        let configs: &[(&'static str, &'static str)] = if settings.quick {
            &[("inmemory", "inmemory")]
        } else {
            &[
                ("inmemory", "inmemory"),
                ("sqlite", "inmemory"),
                ("inmemory", "sqlite"),
            ]
        };
        let rows = memory::run(&rig, configs)?;
        out.push('\n');
        out.push_str(&report::memory(&rows));
    }
    if let Command::Profile {
        perf_data,
        call_graph,
    } = &command
    {
        out.push('\n');
        out.push_str(&profile::run(&rig, perf_data, *call_graph)?);
    }
    let load_after = report::loadavg();
    progress(&format!(
        "done in {:.0} s; load average at the end: {load_after}",
        started.elapsed().as_secs_f64()
    ));
    out.push_str(&format!(
        "\nLoad average at the end: {load_after}; the run took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    Ok(out)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}
