//! The load scenarios against the baseline, in alternating A/B rounds.
//!
//! Every round runs, for each scenario, one baseline run and one scenario run
//! back to back, in the order baseline→scenario on even rounds and
//! scenario→baseline on odd ones, so slow drifts of the machine (another
//! process, thermal or host noise) weigh on both sides alike. Each ratio is
//! taken between the two runs of one round; the report gives the median of
//! those ratios across rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sofiia_chat_index::{DynChatIndexStore, SqliteChatIndex};
use sofiia_core_domain::ChatId;

use crate::cli::Scenario;
use crate::loadgen::{self, LoadConfig, Stop, Workload};
use crate::procs::{Memory, Server};
use crate::rig::{ConsoleSpec, Rig, operator_tokens, tokens_var};
use crate::stats::{LoadResult, RunNumbers, ScenarioSummary, summarise};
use crate::workloads::{Gets, Replays, Sends};
use crate::{pg_db, redis_keys};

/// The chat of the `list` scenario.
const LIST_CHAT: &str = "list-big";

/// One scenario's measurements.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioResult {
    pub title: String,
    /// (scenario, baseline) per round.
    pub pairs: Vec<(RunNumbers, RunNumbers)>,
    pub summary: ScenarioSummary,
    /// Error kinds of the scenario runs, summed.
    pub errors: BTreeMap<String, u64>,
}

/// What the load measurement found.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadReport {
    pub scenarios: Vec<ScenarioResult>,
    /// Median over every baseline run.
    pub baseline: Option<RunNumbers>,
    pub notes: Vec<String>,
    /// Resident memory of each process when idle and after the load.
    pub memory: Vec<(String, Option<Memory>, Option<Memory>)>,
}

impl Scenario {
    fn title(self, settings: &crate::cli::Settings) -> String {
        match self {
            Scenario::Embedded => "(a) send, embedded defaults".into(),
            Scenario::Single => "(a1) send, embedded defaults, one client at a time".into(),
            Scenario::Operators => format!(
                "(a′) send, embedded defaults, {} operators configured",
                settings.operators
            ),
            Scenario::Inmemory => "(a″) send, in-memory chat index".into(),
            Scenario::Candidate => "(a*) send, embedded defaults, candidate build".into(),
            Scenario::Redis => "(b) send, Redis backends".into(),
            Scenario::Postgres => {
                "(f) send, audit and chat index on PostgreSQL, keys and quotas on Redis".into()
            }
            Scenario::Replay => "(c) idempotent replay".into(),
            Scenario::List => format!(
                "(d) first page of a {} message chat",
                thousands(settings.list_messages)
            ),
            Scenario::Health => "(e) GET /api/health".into(),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Scenario::Embedded => "emb",
            Scenario::Single => "one",
            Scenario::Operators => "ops",
            Scenario::Inmemory => "mem",
            Scenario::Candidate => "cand",
            Scenario::Redis => "red",
            Scenario::Postgres => "pg",
            Scenario::Replay => "rep",
            Scenario::List => "lst",
            Scenario::Health => "hlt",
        }
    }
}

/// `1234567` as `1 234 567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// Deletes a Redis key prefix when dropped, so an early return still
/// cleans up.
struct PrefixCleanup {
    url: String,
    prefix: String,
    notes: Vec<String>,
}

impl PrefixCleanup {
    fn run(&mut self) {
        if self.prefix.is_empty() {
            return;
        }
        let prefix = std::mem::take(&mut self.prefix);
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(redis_keys::delete_prefix(&self.url, &prefix)));
        let left = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| {
                rt.block_on(redis_keys::count_prefix(&self.url, &prefix))
                    .ok()
            });
        let note = match result {
            Ok(n) => format!(
                "Redis: deleted the {n} keys the run wrote under `{prefix}`; {} left.",
                left.map_or_else(|| "could not count what is".to_owned(), |n| n.to_string())
            ),
            Err(e) => format!("Redis: could not delete the keys under `{prefix}`: {e}"),
        };
        crate::progress(&note);
        self.notes.push(note);
    }
}

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// Drops the run's PostgreSQL database when dropped, so an early return
/// still cleans up.
struct DatabaseCleanup {
    admin_url: String,
    name: String,
    notes: Vec<String>,
}

impl DatabaseCleanup {
    fn run(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        let note = match block_on(pg_db::drop_database(&self.admin_url, &name)) {
            Ok(bytes) => format!(
                "PostgreSQL: dropped the database `{name}` the run wrote to ({:.1} MiB).",
                bytes as f64 / 1024.0 / 1024.0
            ),
            Err(e) => format!("PostgreSQL: could not drop the database `{name}`: {e}"),
        };
        crate::progress(&note);
        self.notes.push(note);
    }
}

impl Drop for DatabaseCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// Runs `f` on a runtime of its own, on this thread.
fn block_on<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

/// The processes and fixed inputs of the scenarios.
struct Targets {
    token: String,
    operator_tokens: Vec<String>,
    embedded: Option<Server>,
    operators: Option<Server>,
    inmemory: Option<Server>,
    candidate: Option<Server>,
    redis: Option<Server>,
    postgres: Option<Server>,
}

impl Targets {
    fn server(&self, scenario: Scenario) -> Option<&Server> {
        match scenario {
            Scenario::Redis => self.redis.as_ref(),
            Scenario::Postgres => self.postgres.as_ref(),
            Scenario::Operators => self.operators.as_ref(),
            Scenario::Inmemory => self.inmemory.as_ref(),
            Scenario::Candidate => self.candidate.as_ref(),
            _ => self.embedded.as_ref(),
        }
    }
}

fn workload(
    scenario: Scenario,
    server: &Server,
    targets: &Targets,
    run: &str,
) -> Arc<dyn Workload> {
    let addr = server.addr();
    let token = std::slice::from_ref(&targets.token);
    match scenario {
        Scenario::Embedded
        | Scenario::Single
        | Scenario::Redis
        | Scenario::Postgres
        | Scenario::Inmemory
        | Scenario::Candidate => Arc::new(Sends::new(addr, token, scenario.tag(), run)),
        Scenario::Operators => Arc::new(Sends::new(
            addr,
            &targets.operator_tokens,
            scenario.tag(),
            run,
        )),
        Scenario::Replay => Arc::new(Replays::new(addr, &targets.token, "rep", "replay-key")),
        Scenario::List => Arc::new(Gets::new(
            addr,
            Some(&targets.token),
            &format!("/api/chats/{LIST_CHAT}/messages?limit=50"),
        )),
        Scenario::Health => Arc::new(Gets::new(addr, None, "/api/health")),
    }
}

/// One run against `target`, with the CPU time `target` spent on it; the
/// CPU time each of `extra`'s local servers (Redis, PostgreSQL) spent over
/// the run is added to it.
fn measure(
    rig: &Rig,
    stub: &Server,
    target: &Server,
    w: Arc<dyn Workload>,
    concurrency: usize,
    extra: &mut [ExtraCpu],
) -> Result<(LoadResult, RunNumbers), String> {
    let s = &rig.settings;
    crate::rig::clear_stub_calls(stub);
    let extra_before: Vec<_> = extra.iter().map(ExtraCpu::now).collect();
    let cpu_before = target.cpu_time();
    let result = loadgen::run(
        LoadConfig {
            addr: target.addr(),
            concurrency,
            stop: Stop::Duration {
                warmup: s.warmup,
                measure: s.duration,
            },
            threads: s.loadgen_threads,
        },
        w,
    )
    .map_err(|e| format!("load generator: {e}"))?;
    let cpu = cpu_before
        .zip(target.cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    let numbers = RunNumbers::from(&result).with_cpu(cpu, result.ok_total);
    for (acc, before) in extra.iter_mut().zip(extra_before) {
        if let Some((before, after)) = before.zip(acc.now()) {
            acc.cpu += after.saturating_sub(before);
            acc.requests += result.ok_total;
        }
    }
    Ok((result, numbers))
}

/// CPU time a local server the console uses (Redis, PostgreSQL) spent over
/// a scenario's runs.
#[derive(Debug)]
struct ExtraCpu {
    /// What is measured, as the report names it.
    name: &'static str,
    pid: u32,
    /// Its CPU time so far, from `pid`.
    read: fn(u32) -> Option<Duration>,
    cpu: Duration,
    requests: u64,
}

impl ExtraCpu {
    fn new(name: &'static str, pid: u32, read: fn(u32) -> Option<Duration>) -> Self {
        ExtraCpu {
            name,
            pid,
            read,
            cpu: Duration::ZERO,
            requests: 0,
        }
    }

    fn now(&self) -> Option<Duration> {
        (self.read)(self.pid)
    }
}

/// Builds the `list` chat into the console's chat index file before the
/// console starts, through `SqliteChatIndex::append_exchange`.
fn build_list_chat(rig: &Rig, messages: u64) -> Result<String, String> {
    let path = rig.data_dir("embedded").join("sofiia.db");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let took = runtime.block_on(async {
        let store: Arc<DynChatIndexStore> = Arc::new(
            SqliteChatIndex::open(&path)
                .await
                .map_err(|e| format!("open {}: {e}", path.display()))?,
        );
        let chat = ChatId::new(LIST_CHAT).map_err(|e| e.to_string())?;
        let took = crate::growth::fill(&store, &chat, 0, messages.div_ceil(2)).await?;
        drop(store);
        Ok::<_, String>(took)
    })?;
    Ok(format!(
        "The `list` chat ({} messages) was written before the console started, through \
         `SqliteChatIndex::append_exchange` (8 tasks, one transaction per exchange), in {:.1} s \
         ({:.0} messages/s).",
        thousands(messages.div_ceil(2) * 2),
        took.as_secs_f64(),
        (messages.div_ceil(2) * 2) as f64 / took.as_secs_f64().max(1e-9)
    ))
}

/// Sends the requests the `replay` scenario repeats, one per client. Done
/// before every replay run: the console shares its idempotency store (100 000
/// keys by default) with the other scenarios, and a key evicted since the
/// last run would turn replays into real sends.
fn prime_replays(console: &Server, token: &str, concurrency: usize) -> Result<(), String> {
    let prime = Replays::new(console.addr(), token, "rep", "replay-key").prime();
    let primed = loadgen::run(
        LoadConfig {
            addr: console.addr(),
            concurrency: 1,
            stop: Stop::Requests(concurrency as u64),
            threads: 1,
        },
        Arc::new(prime),
    )
    .map_err(|e| format!("load generator: {e}"))?;
    if primed.errors > 0 {
        return Err(format!(
            "priming the replay keys failed: {}",
            primed.error_summary()
        ));
    }
    Ok(())
}

/// Runs the load scenarios.
///
/// # Errors
///
/// When a process does not start or the generator fails; a scenario that
/// cannot run here (no Redis) is skipped with a note instead.
pub(crate) fn run(rig: &Rig) -> Result<LoadReport, String> {
    let s = &rig.settings;
    let mut report = LoadReport::default();
    let wants = |x: Scenario| s.scenarios.contains(&x);

    let stub = rig.stub()?;
    let baseline = rig.baseline(&stub)?;
    crate::progress(&format!(
        "load: router stub at {}, baseline at {}",
        stub.addr(),
        baseline.addr()
    ));

    let token = format!("tok-{}-bench-operator-token", rig.session);
    let single = format!("bench:{token}");
    if wants(Scenario::List) {
        let note = build_list_chat(rig, s.list_messages)?;
        crate::progress(&note);
        report.notes.push(note);
    }
    let needs_embedded = [
        Scenario::Embedded,
        Scenario::Single,
        Scenario::Replay,
        Scenario::List,
        Scenario::Health,
    ]
    .iter()
    .any(|x| wants(*x));
    let embedded = if needs_embedded {
        let spec = ConsoleSpec::new("embedded").var("SOFIIA_OPERATOR_TOKENS", &single);
        Some(
            rig.console(&spec, &stub)
                .map_err(|e| format!("console: {e}"))?,
        )
    } else {
        None
    };
    let many = operator_tokens(&rig.session, s.operators);
    let operators = if wants(Scenario::Operators) {
        let spec = ConsoleSpec::new("operators").var("SOFIIA_OPERATOR_TOKENS", tokens_var(&many));
        Some(
            rig.console(&spec, &stub)
                .map_err(|e| format!("console: {e}"))?,
        )
    } else {
        None
    };

    let inmemory = if wants(Scenario::Inmemory) {
        let spec = ConsoleSpec::new("inmemory")
            .var("SOFIIA_OPERATOR_TOKENS", &single)
            .var("SOFIIA_CHAT_INDEX_BACKEND", "inmemory");
        Some(
            rig.console(&spec, &stub)
                .map_err(|e| format!("console: {e}"))?,
        )
    } else {
        None
    };
    let candidate = match (&s.candidate_bin, wants(Scenario::Candidate)) {
        (Some(binary), true) => {
            let mut spec = ConsoleSpec::new("candidate").var("SOFIIA_OPERATOR_TOKENS", &single);
            spec.binary = Some(binary.clone());
            let note = format!(
                "(a*) is the candidate build `{}`, configured like (a).",
                binary.display()
            );
            report.notes.push(note);
            Some(
                rig.console(&spec, &stub)
                    .map_err(|e| format!("candidate console: {e}"))?,
            )
        }
        _ => None,
    };

    let prefix = format!("sofiia-bench:{}:", rig.session);
    let mut cleanup = PrefixCleanup {
        url: s.redis_url.clone(),
        prefix: String::new(),
        notes: Vec::new(),
    };
    let redis = if wants(Scenario::Redis) {
        match start_redis_console(rig, &stub, &single, &prefix, &mut report.notes) {
            Ok(server) => {
                cleanup.prefix = prefix.clone();
                Some(server)
            }
            Err(note) => {
                crate::progress(&note);
                report.notes.push(note);
                None
            }
        }
    } else {
        None
    };
    let mut database = DatabaseCleanup {
        admin_url: s.postgres_url.clone(),
        name: String::new(),
        notes: Vec::new(),
    };
    let (postgres, postgres_pid) = if wants(Scenario::Postgres) {
        let pg_prefix = format!("{prefix}pg:");
        match start_postgres_console(rig, &stub, &single, &pg_prefix, &mut database) {
            Ok((server, pid, note)) => {
                cleanup.prefix = prefix.clone();
                report.notes.push(note);
                (Some(server), pid)
            }
            Err(note) => {
                crate::progress(&note);
                report.notes.push(note);
                (None, None)
            }
        }
    } else {
        (None, None)
    };

    let targets = Targets {
        token: token.clone(),
        operator_tokens: many.into_iter().map(|(_, t)| t).collect(),
        embedded,
        operators,
        inmemory,
        candidate,
        redis,
        postgres,
    };

    for (name, server) in [
        ("router-stub", Some(&stub)),
        ("baseline", Some(&baseline)),
        ("console (embedded)", targets.embedded.as_ref()),
        ("console (operators)", targets.operators.as_ref()),
        ("console (in-memory chat index)", targets.inmemory.as_ref()),
        ("console (candidate)", targets.candidate.as_ref()),
        ("console (Redis)", targets.redis.as_ref()),
        ("console (PostgreSQL)", targets.postgres.as_ref()),
    ] {
        if let Some(server) = server {
            report
                .memory
                .push((name.to_owned(), server.memory().ok(), None));
        }
    }

    let scenarios: Vec<Scenario> = s
        .scenarios
        .iter()
        .copied()
        .filter(|x| targets.server(*x).is_some())
        .collect();
    let mut pairs: BTreeMap<Scenario, Vec<(RunNumbers, RunNumbers)>> = BTreeMap::new();
    let mut errors: BTreeMap<Scenario, BTreeMap<String, u64>> = BTreeMap::new();
    let mut baselines = Vec::new();
    let redis_pid = if targets.redis.is_some() || targets.postgres.is_some() {
        block_on(async { Ok(redis_keys::server_pid(&s.redis_url).await) })
            .ok()
            .flatten()
    } else {
        None
    };
    let redis_cpu = |pid| ExtraCpu::new("the local Redis server", pid, crate::procs::cpu_time);
    // Every process of the server: its connections' backends, the WAL
    // writer, the checkpointer and the rest.
    let postgres_cpu = |pid| {
        ExtraCpu::new(
            "the local PostgreSQL server (the postmaster and every process it started, whichever client they serve)",
            pid,
            crate::procs::tree_cpu_time,
        )
    };
    let mut extras: BTreeMap<Scenario, Vec<ExtraCpu>> = BTreeMap::from([
        (
            Scenario::Redis,
            redis_pid.map(redis_cpu).into_iter().collect(),
        ),
        (
            Scenario::Postgres,
            postgres_pid
                .map(postgres_cpu)
                .into_iter()
                .chain(redis_pid.map(redis_cpu))
                .collect(),
        ),
    ]);
    let started = Instant::now();
    for round in 0..s.rounds {
        for &scenario in &scenarios {
            let extra = extras.entry(scenario).or_default();
            let Some(server) = targets.server(scenario) else {
                continue;
            };
            let run_tag = format!("{}-{}-r{round}", rig.session, scenario.tag());
            if scenario == Scenario::Replay {
                prime_replays(server, &token, s.concurrency)?;
            }
            let scenario_load = workload(scenario, server, &targets, &run_tag);
            // The health check is compared with the baseline's own; every
            // other scenario with a send through the bare proxy.
            let base_load: Arc<dyn Workload> = if scenario == Scenario::Health {
                Arc::new(Gets::new(baseline.addr(), None, "/api/health"))
            } else {
                Arc::new(Sends::new(
                    baseline.addr(),
                    std::slice::from_ref(&token),
                    &format!("base-{}", scenario.tag()),
                    &format!("{run_tag}-base"),
                ))
            };
            let concurrency = if scenario == Scenario::Single {
                1
            } else {
                s.concurrency
            };
            let measure_scenario =
                || measure(rig, &stub, server, scenario_load, concurrency, extra);
            // Baseline first on even rounds, the scenario first on odd ones.
            let ((scenario_result, a), (base_result, b)) = if round % 2 == 0 {
                let b = measure(rig, &stub, &baseline, base_load, concurrency, &mut [])?;
                (measure_scenario()?, b)
            } else {
                let a = measure_scenario()?;
                (
                    a,
                    measure(rig, &stub, &baseline, base_load, concurrency, &mut [])?,
                )
            };
            crate::progress(&format!(
                "load: round {}/{} {:<48} {:>6.0} req/s p50 {:>6.2} ms {:>5.0} µs CPU | baseline {:>6.0} req/s p50 {:>5.2} ms {:>4.0} µs CPU{}",
                round + 1,
                s.rounds,
                scenario.title(s),
                a.rps,
                a.p50_ms,
                a.cpu_us,
                b.rps,
                b.p50_ms,
                b.cpu_us,
                if scenario_result.errors + base_result.errors > 0 {
                    format!(
                        " errors {} / {} ({})",
                        scenario_result.errors,
                        base_result.errors,
                        [scenario_result.error_summary(), base_result.error_summary()].join("; ")
                    )
                } else {
                    String::new()
                }
            ));
            if scenario_result.errors > 0 {
                let stderr = server.stderr_tail(3);
                if !stderr.is_empty() {
                    crate::progress(&format!("load: the console's stderr ends with: {stderr}"));
                }
            }
            let kinds = errors.entry(scenario).or_default();
            for (k, n) in scenario_result.error_kinds {
                *kinds.entry(k).or_default() += n;
            }
            // The summary row is the proxied send at full concurrency;
            // health and the single client have their own.
            if !matches!(scenario, Scenario::Health | Scenario::Single) {
                baselines.push(b);
            }
            pairs.entry(scenario).or_default().push((a, b));
        }
    }
    crate::progress(&format!(
        "load: {} rounds in {:.0} s",
        s.rounds,
        started.elapsed().as_secs_f64()
    ));

    for entry in &mut report.memory {
        let server = match entry.0.as_str() {
            "router-stub" => Some(&stub),
            "baseline" => Some(&baseline),
            "console (embedded)" => targets.embedded.as_ref(),
            "console (operators)" => targets.operators.as_ref(),
            "console (in-memory chat index)" => targets.inmemory.as_ref(),
            "console (candidate)" => targets.candidate.as_ref(),
            "console (Redis)" => targets.redis.as_ref(),
            "console (PostgreSQL)" => targets.postgres.as_ref(),
            _ => None,
        };
        entry.2 = server.and_then(|s| s.memory().ok());
    }

    report.baseline = {
        let col = |f: fn(&RunNumbers) -> f64| {
            crate::stats::median(&baselines.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        (!baselines.is_empty()).then(|| RunNumbers {
            rps: col(|r| r.rps),
            p50_ms: col(|r| r.p50_ms),
            p99_ms: col(|r| r.p99_ms),
            p999_ms: col(|r| r.p999_ms),
            errors: baselines.iter().map(|r| r.errors).sum(),
            cpu_us: col(|r| r.cpu_us),
        })
    };
    if let Some(p) = pairs.get(&Scenario::Single) {
        let note = single_client_note(p);
        crate::progress(&note);
        report.notes.push(note);
    }
    if let Some(server) = targets.redis.as_ref() {
        let note = count_redis_commands(rig, server, &token, &prefix)
            .unwrap_or_else(|e| format!("(b): the Redis commands per send were not counted: {e}"));
        crate::progress(&note);
        report.notes.push(note);
    }
    for scenario in scenarios {
        let p = pairs.remove(&scenario).unwrap_or_default();
        report.scenarios.push(ScenarioResult {
            title: scenario.title(s),
            summary: summarise(&p),
            pairs: p,
            errors: errors.remove(&scenario).unwrap_or_default(),
        });
    }

    for (scenario, extra) in &extras {
        let label = scenario.title(s);
        let label = label.split(' ').next().unwrap_or_default();
        for e in extra.iter().filter(|e| e.requests > 0) {
            let note = format!(
                "{label}: {} itself spent {:.0} µs of CPU per send on top of the console's (all {label} runs, warm-up included).",
                e.name,
                e.cpu.as_secs_f64() * 1e6 / e.requests as f64
            );
            crate::progress(&note);
            report.notes.push(note);
        }
    }

    // Consoles stop before their Redis keys and database are deleted, so
    // nothing is written afterwards.
    drop(targets);
    cleanup.run();
    report.notes.append(&mut cleanup.notes);
    database.run();
    report.notes.append(&mut database.notes);
    Ok(report)
}

/// What the console adds to one send's latency: the median over rounds of
/// (console p50 − bare proxy p50), one client at a time.
fn single_client_note(pairs: &[(RunNumbers, RunNumbers)]) -> String {
    let diffs: Vec<f64> = pairs.iter().map(|(a, b)| a.p50_ms - b.p50_ms).collect();
    let med = |v: Vec<f64>| crate::stats::median(&v).unwrap_or(0.0);
    format!(
        "(a1) one client at a time: the console's p50 {:.3} ms against the bare proxy's {:.3} ms; \
         the console adds {:.3} ms to a send (median of the per-round differences, range {:.3}–{:.3} ms).",
        med(pairs.iter().map(|(a, _)| a.p50_ms).collect()),
        med(pairs.iter().map(|(_, b)| b.p50_ms).collect()),
        med(diffs.clone()),
        diffs.iter().copied().fold(f64::INFINITY, f64::min),
        diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Sends to the Redis console one at a time while `MONITOR` watches, and
/// says how many commands each send cost.
fn count_redis_commands(
    rig: &Rig,
    server: &Server,
    token: &str,
    prefix: &str,
) -> Result<String, String> {
    const SENDS: u64 = 300;
    let (count, result) = redis_keys::count_commands(&rig.settings.redis_url, prefix, || {
        loadgen::run(
            LoadConfig {
                addr: server.addr(),
                concurrency: 1,
                stop: Stop::Requests(SENDS),
                threads: 1,
            },
            Arc::new(Sends::new(
                server.addr(),
                std::slice::from_ref(&token.to_owned()),
                "cnt",
                &format!("{}-count", rig.session),
            )),
        )
    })?;
    let result = result.map_err(|e| format!("load generator: {e}"))?;
    if result.errors > 0 {
        return Err(format!("sends failed: {}", result.error_summary()));
    }
    let n = result.ok_total.max(1) as f64;
    Ok(format!(
        "(b): {:.1} Redis commands per send from the console ({} sends one at a time, \
         watched with `MONITOR`; a script is one command, a pipeline's commands count one \
         by one, so round trips are at most this), and {:.1} more that scripts ran inside Redis.",
        count.client as f64 / n,
        result.ok_total,
        count.script as f64 / n,
    ))
}

fn start_redis_console(
    rig: &Rig,
    stub: &Server,
    tokens: &str,
    prefix: &str,
    notes: &mut Vec<String>,
) -> Result<Server, String> {
    let url = &rig.settings.redis_url;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(redis_keys::ping(url))
        .map_err(|e| format!("(b) skipped: Redis does not answer ({e})."))?;
    let chat_index_redis = rig
        .console_supports_redis_chat_index(stub)
        .map_err(|e| format!("(b) skipped: {e}"))?;
    let mut spec = ConsoleSpec::new("redis")
        .var("SOFIIA_OPERATOR_TOKENS", tokens)
        .var("SOFIIA_IDEMPOTENCY_BACKEND", "redis")
        .var("SOFIIA_RATE_LIMIT_BACKEND", "redis")
        .var("SOFIIA_REDIS_PREFIX", prefix);
    if chat_index_redis {
        spec = spec.var("SOFIIA_CHAT_INDEX_BACKEND", "redis");
        notes.push(
            "(b) runs idempotency, rate limits and the chat index on Redis; the audit trail \
             has no Redis backend and stays on SQLite."
                .into(),
        );
    } else {
        notes.push(
            "(b) runs idempotency and rate limits on Redis. This console build does not accept \
             `SOFIIA_CHAT_INDEX_BACKEND=redis` (check-config exits 2 naming it), so the chat \
             index stays on SQLite; the audit trail has no Redis backend either."
                .into(),
        );
    }
    rig.console(&spec, stub)
        .map_err(|e| format!("(b) skipped: the Redis console did not start: {e}"))
}

/// Starts the console of the shared shape on a database made for the run
/// (`database` drops it afterwards); returns it, the local postmaster's
/// pid when there is one, and a note saying how it is configured.
fn start_postgres_console(
    rig: &Rig,
    stub: &Server,
    tokens: &str,
    prefix: &str,
    database: &mut DatabaseCleanup,
) -> Result<(Server, Option<u32>, String), String> {
    let s = &rig.settings;
    let name = format!("sofiia_bench_{}", rig.session);
    let url = pg_db::database_url(&s.postgres_url, &name)
        .map_err(|e| format!("(f) skipped: --postgres-url: {e}."))?;
    block_on(redis_keys::ping(&s.redis_url))
        .map_err(|e| format!("(f) skipped: Redis does not answer ({e})."))?;
    block_on(pg_db::create_database(&s.postgres_url, &name))
        .map_err(|e| format!("(f) skipped: PostgreSQL gave no database for the run ({e})."))?;
    database.name = name;
    let pid = block_on(async { Ok(pg_db::server_pid(&url).await) })
        .ok()
        .flatten();
    let spec = ConsoleSpec::new("postgres")
        .var("SOFIIA_OPERATOR_TOKENS", tokens)
        .var("SOFIIA_AUDIT_BACKEND", "postgres")
        .var("SOFIIA_CHAT_INDEX_BACKEND", "postgres")
        .var("SOFIIA_POSTGRES_URL", url.clone())
        .var("SOFIIA_IDEMPOTENCY_BACKEND", "redis")
        .var("SOFIIA_RATE_LIMIT_BACKEND", "redis")
        .var("SOFIIA_REDIS_PREFIX", prefix);
    let server = rig
        .console(&spec, stub)
        .map_err(|e| format!("(f) skipped: the PostgreSQL console did not start: {e}"))?;
    let note = format!(
        "(f) runs the audit trail and the chat index on PostgreSQL, in the database `{}` made \
         for the run, and idempotency and rate limits on Redis.",
        sofiia_postgres_support::server_of(&url)
    );
    Ok((server, pid, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1000), "1\u{202f}000");
        assert_eq!(thousands(1_234_567), "1\u{202f}234\u{202f}567");
    }
}
