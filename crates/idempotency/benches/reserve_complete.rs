//! The hot path of an idempotent request: reserve a fresh key, then complete
//! it, on each backend. Also prints the memory store's approximate bytes per
//! entry (RSS growth over 100 000 completed entries).
//!
//! ```text
//! cargo bench -p sofiia-idempotency --all-features --bench reserve_complete -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```
//!
//! On Redis, `redis/bare-round-trip` (an `EVALSHA` of a script that does
//! nothing) runs first, in the same run, as the yardstick: reserve+complete
//! is two round trips at the least.
//!
//! The Redis part runs against `SOFIIA_TEST_REDIS_URL` and is skipped, with
//! a note, when it is unset.
#![allow(missing_docs, clippy::print_stderr)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use sofiia_idempotency::{
    DynIdempotencyStore, Fingerprint, IdempotencyKey, MemoryIdempotencyStore, Reservation,
    ScopedKey, StoredResponse,
};

const LEASE: Duration = Duration::from_secs(60);
const RESULT: Duration = Duration::from_secs(3600);

/// A typical send answer: a few hundred bytes of JSON.
fn answer() -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: vec![b'x'; 300],
    }
}

fn key(n: u64) -> ScopedKey {
    ScopedKey::new(
        "operator-1",
        IdempotencyKey::new(format!("bench-{n:016}")).expect("valid key"),
    )
}

async fn reserve_complete(store: &DynIdempotencyStore, n: u64, answer: &StoredResponse) {
    let key = key(n);
    let fingerprint = Fingerprint::builder()
        .part("POST")
        .part(n.to_be_bytes())
        .finish();
    match store.reserve(&key, &fingerprint, LEASE).await {
        Ok(Reservation::Acquired(lease)) => store
            .complete(&key, &lease.token, answer, RESULT)
            .await
            .expect("complete"),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn bench_store(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &DynIdempotencyStore,
) {
    let next = AtomicU64::new(0);
    let answer = answer();
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            let n = next.fetch_add(1, Ordering::Relaxed);
            reserve_complete(black_box(store), n, &answer).await;
        });
    });
}

fn backends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Capacity below the number of iterations, so the steady state includes
    // eviction, as in a long-running process.
    let memory = MemoryIdempotencyStore::with_system_clock(100_000);
    bench_store(c, &rt, "memory/reserve+complete", &memory);

    #[cfg(feature = "redis")]
    {
        if std::env::var(sofiia_testkit::REDIS_URL_VAR).is_ok_and(|v| !v.is_empty()) {
            // The context deletes its keys when dropped.
            let redis = rt
                .block_on(sofiia_testkit::RedisTestContext::new(
                    "bench reserve_complete",
                ))
                .expect("Redis answers");
            // The same run's bare round trip: reserve+complete ÷ it is what
            // the pair costs in round trips (two at the least).
            c.bench_function("redis/bare-round-trip", |b| {
                b.to_async(&rt).iter(|| async {
                    sofiia_redis_support::bare_round_trip(&redis.conn, Duration::from_secs(2))
                        .await
                        .expect("Redis answers");
                });
            });
            let store = sofiia_idempotency::RedisIdempotencyStore::new(
                redis.conn.clone(),
                redis.prefix.clone(),
            );
            bench_store(c, &rt, "redis/reserve+complete", &store);
            drop(redis);
        } else {
            eprintln!(
                "note: redis/reserve+complete skipped: set {}=redis://127.0.0.1:6379 to run it",
                sofiia_testkit::REDIS_URL_VAR
            );
        }
    }
    #[cfg(not(feature = "redis"))]
    eprintln!("note: redis/reserve+complete skipped: build with --features redis to run it");
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Approximate bytes per completed entry of the memory store, for an answer
/// of `body` bytes.
fn bytes_per_entry(rt: &tokio::runtime::Runtime, body: usize) -> Option<f64> {
    const ENTRIES: u64 = 100_000;
    let answer = StoredResponse {
        body: vec![b'x'; body],
        ..answer()
    };
    let before = rss_bytes()?;
    let store: Arc<DynIdempotencyStore> =
        Arc::new(MemoryIdempotencyStore::with_system_clock(ENTRIES as usize));
    rt.block_on(async {
        for n in 0..ENTRIES {
            reserve_complete(&*store, n, &answer).await;
        }
    });
    let after = rss_bytes()?;
    drop(store);
    Some((after.saturating_sub(before)) as f64 / ENTRIES as f64)
}

/// Set in a child process of this bench: measure one footprint and exit.
const FOOTPRINT_VAR: &str = "SOFIIA_IDEMPOTENCY_FOOTPRINT_BODY";

/// Each size is measured in a fresh child process: memory freed by one
/// measurement would otherwise be reused by the next and hide its growth.
fn memory_footprint() {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("memory store: footprint not measured (no path to this bench)");
        return;
    };
    for body in [0, 300] {
        let status = std::process::Command::new(&exe)
            .env(FOOTPRINT_VAR, body.to_string())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("memory store: footprint with a {body} B body not measured");
        }
    }
}

fn measure_one_footprint(body: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    match bytes_per_entry(&rt, body) {
        Some(bytes) => eprintln!(
            "memory store: ~{bytes:.0} bytes per completed entry (RSS growth over 100000 \
             entries; body {body} B, one 30 B header)"
        ),
        None => eprintln!("memory store: RSS not readable here, footprint not measured"),
    }
}

criterion_group!(benches, backends);

fn main() {
    if let Some(body) = std::env::var(FOOTPRINT_VAR)
        .ok()
        .and_then(|b| b.parse().ok())
    {
        measure_one_footprint(body);
        return;
    }
    memory_footprint();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
