//! Benchmarks of the audit store's hot paths: appending (one caller, and 64
//! callers at once, where group commit matters) on SQLite and in memory, and
//! pruning a million events in batches of 10 000.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-audit cargo bench -p sofiia-audit-store --bench audit
//! CARGO_TARGET_DIR=/work/target-audit cargo bench -p sofiia-audit-store --bench audit -- prune
//! ```
//!
//! `SOFIIA_BENCH_PRUNE_EVENTS` overrides the size of the pruned store
//! (default 1 000 000), for a quick run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use serde_json::{Map, json};
use sofiia_audit_store::{
    AuditStore, DynAuditStore, GENESIS_HASH, MemoryAuditStore, NewEvent, Outcome, SqliteAuditStore,
    compute_hash,
};
use sofiia_core_domain::Timestamp;

const PRUNE_BATCH: u32 = 10_000;
const CONCURRENT: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A typical `chat.send` event.
fn event(ts: Timestamp, n: u64) -> NewEvent {
    let mut details = Map::new();
    details.insert("message_id".into(), json!(format!("msg-{n:016x}")));
    details.insert("latency_ms".into(), json!(n % 1000));
    NewEvent {
        ts,
        actor: format!("operator-{}", n % 16),
        action: "chat.send".into(),
        target: format!("incident-{}", n % 128),
        outcome: Outcome::Ok,
        status: Some(200),
        request_id: Some(format!("0194c1a2-7e3b-7c1d-9f00-{n:012x}")),
        node: Some("NODA1".into()),
        source_ip: Some("192.0.2.7".into()),
        user_agent: Some("sofiia-ui/1.4 (Mozilla/5.0)".into()),
        details,
    }
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(1_767_225_600_000).expect("a valid time")
}

async fn append_concurrently(store: &Arc<DynAuditStore>) {
    let tasks: Vec<_> = (0..CONCURRENT as u64)
        .map(|n| {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.append(event(now(), n)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("append");
    }
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    // The store's read pool closes its connections on the runtime when it
    // is dropped, at the end of this function.
    let _runtime = rt.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let concrete = Arc::new(
        rt.block_on(SqliteAuditStore::open(dir.path().join("append.sqlite3")))
            .expect("open"),
    );
    let sqlite: Arc<DynAuditStore> = concrete.clone();
    let mut group = c.benchmark_group("append");

    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("sequential", "sqlite"), |b| {
        b.to_async(&rt)
            .iter(|| async { sqlite.append(event(now(), 1)).await.expect("append") });
    });
    // A fresh store per sample, so that memory does not grow for the whole
    // run.
    group.bench_function(BenchmarkId::new("sequential", "memory"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let store = MemoryAuditStore::new();
            let start = Instant::now();
            for n in 0..iters {
                store.append(event(now(), n)).await.expect("append");
            }
            start.elapsed()
        });
    });

    group.throughput(Throughput::Elements(CONCURRENT as u64));
    let before = concrete.group_commit_stats();
    group.bench_function(BenchmarkId::new("concurrent_64", "sqlite"), |b| {
        b.to_async(&rt).iter(|| append_concurrently(&sqlite));
    });
    let after = concrete.group_commit_stats();
    let (events, transactions) = (
        after.events - before.events,
        after.transactions - before.transactions,
    );
    // On stderr, beside criterion's own report: how well group commit
    // batched the concurrent appends.
    eprintln!(
        "append/concurrent_64/sqlite: {events} events in {transactions} transactions \
         ({:.1} events per transaction)",
        events as f64 / transactions.max(1) as f64
    );
    group.bench_function(BenchmarkId::new("concurrent_64", "memory"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let store: Arc<DynAuditStore> = Arc::new(MemoryAuditStore::new());
            let start = Instant::now();
            for _ in 0..iters {
                append_concurrently(&store).await;
            }
            start.elapsed()
        });
    });
    group.finish();
}

fn prune_events() -> u64 {
    std::env::var("SOFIIA_BENCH_PRUNE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Builds a store of `n` events, one a second before [`now`], with a valid
/// chain: the schema from the store itself, the rows by a direct bulk
/// insert (appends would take far longer and are not what is measured).
fn build_template(rt: &tokio::runtime::Runtime, path: &Path, n: u64) {
    let store = rt.block_on(SqliteAuditStore::open(path)).expect("open");
    drop(store);
    let mut conn = rusqlite::Connection::open(path).expect("open raw");
    conn.execute_batch("PRAGMA synchronous = OFF;")
        .expect("pragma");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO events (ts, actor, action, target, outcome, status, request_id,
                 node, source_ip, user_agent, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, 'ok', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .expect("prepare");
        let start = now().saturating_sub(Duration::from_secs(n + 1));
        let mut prev = GENESIS_HASH.to_owned();
        for i in 0..n {
            let e = event(start.saturating_add(Duration::from_secs(i)), i);
            let hash = compute_hash(&prev, &e);
            insert
                .execute(rusqlite::params![
                    e.ts.as_unix_millis(),
                    e.actor,
                    e.action,
                    e.target,
                    e.status,
                    e.request_id,
                    e.node,
                    e.source_ip,
                    e.user_agent,
                    serde_json::to_string(&e.details).expect("details"),
                    prev,
                    hash,
                ])
                .expect("insert");
            prev = hash;
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy the template");
    let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).expect("copy the template's WAL");
    }
}

fn prune(c: &mut Criterion) {
    let rt = runtime();
    let _runtime = rt.enter();
    let n = prune_events();
    let dir = tempfile::tempdir().expect("temp dir");
    let template = dir.path().join("template.sqlite3");
    build_template(&rt, &template, n);

    let mut group = c.benchmark_group("prune");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::new("batches_of_10000", n), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (dir, template) = (dir.path(), &template);
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let path = dir.join(format!("prune-{i}.sqlite3"));
                    copy_store(template, &path);
                    let store = SqliteAuditStore::open(&path).await.expect("open");
                    let start = Instant::now();
                    let mut deleted = 0;
                    loop {
                        let batch = store.prune_batch(now(), PRUNE_BATCH).await.expect("prune");
                        deleted += batch.deleted;
                        if !batch.more {
                            break;
                        }
                    }
                    total += start.elapsed();
                    assert_eq!(deleted, n, "every event pruned");
                    drop(store);
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, appends, prune);
criterion_main!(benches);
