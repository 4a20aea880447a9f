//! Command-line arguments and the effective settings they resolve to
//! (`--quick` changes the defaults, explicit options always win).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Measures what each layer of the sofiia-console send path costs, side by
/// side with a bare proxy baseline, and prints Markdown tables.
///
/// Needs release builds of sofiia-console and sofiia-router-stub next to this
/// binary (`cargo build --release -p sofiia-console -p sofiia-router-stub -p
/// sofiia-bench`, or `ops/bench.sh`, which does it). Progress goes to stderr,
/// the tables to stdout.
#[derive(Debug, Parser)]
#[command(name = "sofiia-bench", version, about, long_about)]
pub(crate) struct Cli {
    /// Short run (under two minutes): fewer and shorter rounds, smaller
    /// stores; explicit options below still win.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Directory holding sofiia-console and sofiia-router-stub (default: the
    /// directory of this binary).
    #[arg(long, global = true, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Also write the Markdown report to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The Redis of the Redis scenarios; a unique key prefix is used and
    /// deleted afterwards.
    #[arg(
        long,
        global = true,
        env = "SOFIIA_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// A PostgreSQL database to connect to as a user that may create
    /// databases: the PostgreSQL scenario makes a database of its own
    /// there and drops it afterwards.
    #[arg(
        long,
        global = true,
        env = "SOFIIA_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// HTTP workers of the console and of the baseline (default: the
    /// console's own default, one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Measurement rounds; each pairs every scenario with a baseline run.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Measured seconds of each run (fractions allowed).
    #[arg(long, global = true, value_parser = parse_secs, value_name = "SECS")]
    pub duration: Option<Duration>,
    /// Unmeasured seconds at the start of each run.
    #[arg(long, global = true, value_parser = parse_secs, value_name = "SECS")]
    pub warmup: Option<Duration>,
    /// Simulated clients (connections, requests in flight) of each run.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: Option<u16>,
    /// Threads of the load generator.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub loadgen_threads: u16,
    /// Workers of the router stub node.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub stub_workers: u16,
    /// Which load scenarios to run (default: all; `operators` only in full runs).
    #[arg(long, global = true, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Messages in the chat whose first page the `list` scenario reads.
    #[arg(long, global = true)]
    pub list_messages: Option<u64>,
    /// Chat sizes (messages, at least 100) at which page fetches are timed.
    #[arg(long, global = true, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(100..))]
    pub growth_sizes: Vec<u64>,
    /// Audit events appended before prune is timed.
    #[arg(long, global = true)]
    pub audit_events: Option<u64>,
    /// Distinct chats sent to in the memory measurement.
    #[arg(long, global = true)]
    pub memory_chats: Option<u64>,
    /// A second sofiia-console binary (a candidate fix) measured like (a) in
    /// the same rounds, to compare two builds side by side.
    #[arg(long, global = true, value_name = "FILE")]
    pub candidate_bin: Option<PathBuf>,
    /// Operators configured (tokens) in the memory and `operators` runs.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub operators: Option<u32>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Everything below, in order (the default).
    All,
    /// Send, replay, list and health against the baseline, in A/B rounds.
    Load,
    /// Page-fetch time as a chat grows, per chat index backend.
    Growth,
    /// Audit append throughput, verify and prune at size.
    Audit,
    /// Console memory after sends to many distinct chats and operators.
    Memory,
    /// perf profile of the console under send load (needs `perf`).
    Profile {
        /// Where perf writes its data.
        #[arg(long, default_value = "sofiia-bench.perf.data")]
        perf_data: PathBuf,
        /// Sample with call graphs (DWARF unwinding; larger files).
        #[arg(long)]
        call_graph: bool,
    },
    /// The baseline proxy (started by the harness itself).
    #[command(hide = true)]
    ServeBaseline {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// The node's name.
        #[arg(long, default_value = "NODA1")]
        node: String,
        /// The node's base URL.
        #[arg(long)]
        node_url: String,
        /// HTTP workers.
        #[arg(long, default_value_t = 2)]
        http_workers: usize,
        /// Infer timeout in milliseconds (the console's default).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Scenario {
    /// (a) send on the embedded defaults.
    Embedded,
    /// (a1) send on the embedded defaults from one client at a time: what
    /// the console adds to a single send's latency.
    Single,
    /// (b) send with every backend that can be on Redis on Redis.
    Redis,
    /// (f) send, the recommended shared shape: audit trail and chat index
    /// on PostgreSQL, keys and quotas on Redis.
    Postgres,
    /// (c) the same Idempotency-Key replayed.
    Replay,
    /// (d) the first page of a chat of `--list-messages` messages.
    List,
    /// (e) `GET /api/health`: the server's own ceiling.
    Health,
    /// (a′) send on the embedded defaults with `--operators` operators
    /// configured.
    Operators,
    /// (a″) send with the in-memory chat index (audit still on SQLite).
    Inmemory,
    /// (a*) send on the embedded defaults with `--candidate-bin`.
    Candidate,
}

impl Scenario {
    /// Every scenario, in report order.
    pub(crate) const ALL: [Scenario; 10] = [
        Scenario::Embedded,
        Scenario::Single,
        Scenario::Candidate,
        Scenario::Inmemory,
        Scenario::Operators,
        Scenario::Redis,
        Scenario::Postgres,
        Scenario::Replay,
        Scenario::List,
        Scenario::Health,
    ];
}

/// Parses seconds, with fractions: `2`, `0.5`.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The settings of one invocation, defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub quick: bool,
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub loadgen_threads: usize,
    pub stub_workers: usize,
    pub workers: Option<usize>,
    pub scenarios: Vec<Scenario>,
    pub list_messages: u64,
    pub growth_sizes: Vec<u64>,
    pub audit_events: u64,
    pub memory_chats: u64,
    pub operators: u32,
    pub redis_url: String,
    pub postgres_url: String,
    pub candidate_bin: Option<PathBuf>,
}

impl Settings {
    /// Resolves `cli`'s options against the full or quick defaults.
    pub(crate) fn from_cli(cli: &Cli) -> Settings {
        let quick = cli.quick;
        fn choose<T>(quick: bool, full: T, short: T) -> T {
            if quick { short } else { full }
        }
        let mut scenarios = if cli.scenarios.is_empty() {
            Scenario::ALL
                .iter()
                .copied()
                .filter(|s| !quick || !matches!(s, Scenario::Operators | Scenario::Inmemory))
                .filter(|s| *s != Scenario::Candidate || cli.candidate_bin.is_some())
                .collect()
        } else {
            cli.scenarios.clone()
        };
        scenarios.sort_by_key(|s| Scenario::ALL.iter().position(|x| x == s));
        scenarios.dedup();
        let mut growth_sizes = if cli.growth_sizes.is_empty() {
            choose(quick, vec![1_000, 100_000, 1_000_000], vec![1_000, 100_000])
        } else {
            cli.growth_sizes.clone()
        };
        growth_sizes.sort_unstable();
        growth_sizes.dedup();
        Settings {
            quick,
            rounds: cli.rounds.unwrap_or(choose(quick, 5, 2)),
            duration: cli.duration.unwrap_or(choose(
                quick,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )),
            warmup: cli.warmup.unwrap_or(choose(
                quick,
                Duration::from_secs(1),
                Duration::from_millis(500),
            )),
            concurrency: usize::from(cli.concurrency.unwrap_or(16)),
            loadgen_threads: usize::from(cli.loadgen_threads),
            stub_workers: usize::from(cli.stub_workers),
            workers: cli.workers.map(usize::from),
            scenarios,
            list_messages: cli.list_messages.unwrap_or(100_000).max(2),
            growth_sizes,
            audit_events: cli
                .audit_events
                .unwrap_or(choose(quick, 1_000_000, 100_000))
                .max(1),
            memory_chats: cli
                .memory_chats
                .unwrap_or(choose(quick, 100_000, 10_000))
                .max(1),
            operators: cli.operators.unwrap_or(1_000),
            redis_url: cli.redis_url.clone(),
            postgres_url: cli.postgres_url.clone(),
            candidate_bin: cli.candidate_bin.clone(),
        }
    }

    /// The worker count both servers get: the explicit one, else one per
    /// core as the console itself chooses.
    pub(crate) fn server_workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(std::num::NonZeroUsize::get)
                .unwrap_or(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let cli = Cli::try_parse_from(std::iter::once("sofiia-bench").chain(args.iter().copied()))
            .unwrap();
        Settings::from_cli(&cli)
    }

    #[test]
    fn full_defaults() {
        let s = settings(&[]);
        assert!(!s.quick);
        assert_eq!(s.rounds, 5);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.concurrency, 16);
        assert_eq!(s.growth_sizes, vec![1_000, 100_000, 1_000_000]);
        assert_eq!(s.audit_events, 1_000_000);
        assert_eq!(s.memory_chats, 100_000);
        assert_eq!(s.list_messages, 100_000);
        let mut all = Scenario::ALL.to_vec();
        all.retain(|s| *s != Scenario::Candidate);
        assert_eq!(s.scenarios, all);
        let s = settings(&["--candidate-bin", "/tmp/console"]);
        assert_eq!(s.scenarios, Scenario::ALL.to_vec());
    }

    #[test]
    fn quick_defaults_and_explicit_options_win() {
        let s = settings(&["--quick"]);
        assert_eq!(s.rounds, 2);
        assert_eq!(s.duration, Duration::from_secs(2));
        assert_eq!(s.warmup, Duration::from_millis(500));
        assert_eq!(s.growth_sizes, vec![1_000, 100_000]);
        assert!(!s.scenarios.contains(&Scenario::Operators));

        let s = settings(&["load", "--quick", "--rounds", "3", "--duration", "0.25"]);
        assert_eq!(s.rounds, 3);
        assert_eq!(s.duration, Duration::from_millis(250));
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_in_report_order() {
        let s = settings(&[
            "--scenarios",
            "health,postgres,embedded,health,redis",
            "--growth-sizes",
            "1000000,1000,1000",
        ]);
        assert_eq!(
            s.scenarios,
            vec![
                Scenario::Embedded,
                Scenario::Redis,
                Scenario::Postgres,
                Scenario::Health
            ]
        );
        assert_eq!(s.growth_sizes, vec![1_000, 1_000_000]);
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["--duration", "-1"][..],
            &["--duration", "ten"],
            &["--rounds", "0"],
            &["--concurrency", "0"],
            &["--scenarios", "everything"],
            &["--growth-sizes", "50"],
            &["frobnicate"],
        ] {
            let parsed =
                Cli::try_parse_from(std::iter::once("sofiia-bench").chain(args.iter().copied()));
            assert!(parsed.is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from([
            "sofiia-bench",
            "serve-baseline",
            "--node-url",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::ServeBaseline {
                http_workers: 2,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["sofiia-bench", "profile", "--call-graph"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Profile {
                call_graph: true,
                ..
            })
        ));
    }
}
