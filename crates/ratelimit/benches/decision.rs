//! One two-policy decision (chat and operator), in memory and on Redis.
//!
//! ```text
//! SOFIIA_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo bench -p sofiia-ratelimit --bench decision -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! On Redis, `decision/redis-bare-round-trip` (an `EVALSHA` of a script
//! that does nothing, on the same connection) runs first in the same run:
//! `decision/redis` ÷ it is what a decision costs in round trips.
//!
//! Quotas are large enough that every decision is allowed, so each one
//! reads and writes both buckets: the path a served request takes.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sofiia_core_domain::SystemClock;
use sofiia_ratelimit::{Charge, DynRateLimiter, MemoryRateLimiter, Quota};

fn charges() -> [Charge; 2] {
    // One request per microsecond for an hour: never refused while measured.
    let quota = Quota::per_hour(3_600_000_000).expect("a valid quota");
    [
        Charge::new("chat", "bench-chat", quota),
        Charge::new("operator", "bench-operator", quota),
    ]
}

fn bench_limiter(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    limiter: Arc<DynRateLimiter>,
) {
    let charges = charges();
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            let decision = limiter
                .check(black_box(&charges))
                .await
                .expect("a decision");
            assert!(decision.allowed);
            black_box(decision)
        });
    });
}

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let memory = Arc::new(MemoryRateLimiter::new(Arc::new(SystemClock), 100_000));
    bench_limiter(c, &rt, "decision/memory", memory);

    #[cfg(feature = "redis")]
    match std::env::var("SOFIIA_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let conn = rt
                .block_on(async { sofiia_ratelimit::RedisConnection::open(&url) })
                .expect("a valid Redis URL");
            // The same run's bare round trip: the decision's ratio to it is
            // what the limiter adds, whatever the machine is doing.
            c.bench_function("decision/redis-bare-round-trip", |b| {
                b.to_async(&rt).iter(|| async {
                    sofiia_redis_support::bare_round_trip(&conn, std::time::Duration::from_secs(2))
                        .await
                        .expect("Redis answers");
                });
            });
            // Keys expire a few ms after the run (their TTL is their time
            // to idle), so the prefix needs no cleanup.
            let prefix = format!("sofiia-bench:{}:", std::process::id());
            let redis = Arc::new(sofiia_ratelimit::RedisRateLimiter::new(conn, prefix));
            bench_limiter(c, &rt, "decision/redis", redis);
        }
        _ => eprintln!(
            "\n!!! SKIPPED decision/redis: SOFIIA_TEST_REDIS_URL is unset. \
             Set it to redis://127.0.0.1:6379 to measure Redis. !!!\n"
        ),
    }
    #[cfg(not(feature = "redis"))]
    eprintln!("\n!!! SKIPPED decision/redis: built without the `redis` feature. !!!\n");
}

criterion_group!(benches, decision);
criterion_main!(benches);
