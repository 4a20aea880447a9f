//! One page (limit 50) of one chat's messages, read from the top and from
//! deep in the list through a cursor (90% of the way down), on SQLite and
//! on Redis, for a chat of 10 000 and of 1 000 000 messages, and on
//! PostgreSQL, for a chat of 1 000 and of 100 000. A keyset page should
//! cost the same at any depth, and grow only with log(n).
//!
//! ```text
//! SOFIIA_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//! SOFIIA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p sofiia-chat-index --all-features --bench page
//! ```
//!
//! `SOFIIA_BENCH_CHAT_SIZES=10000` (a comma-separated list) runs other
//! sizes on SQLite and Redis, for a quick run;
//! `SOFIIA_BENCH_POSTGRES_SIZES` does the same on PostgreSQL (add
//! `1000000` for the large chat, whose import takes a minute or more). The
//! datasets are built before the timed part, with
//! `ChatIndexStore::import_chat` in large batches (one transaction, or one
//! script, each). The Redis part runs against `SOFIIA_TEST_REDIS_URL`
//! under a random prefix whose keys are deleted afterwards; the PostgreSQL
//! part (feature `postgres`) in a database of its own on
//! `SOFIIA_TEST_POSTGRES_URL`, dropped afterwards. Each is skipped, with a
//! note, when its variable is unset.
#![allow(missing_docs, clippy::print_stderr, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use sofiia_chat_index::{DynChatIndexStore, SqliteChatIndex};
use sofiia_core_domain::{
    Chat, ChatId, Cursor, Message, MessageId, NodeId, OperatorId, PageLimit, PageRequest, Role,
    Timestamp,
};

const SIZES_VAR: &str = "SOFIIA_BENCH_CHAT_SIZES";
const DEFAULT_SIZES: [usize; 2] = [10_000, 1_000_000];
const POSTGRES_SIZES_VAR: &str = "SOFIIA_BENCH_POSTGRES_SIZES";
const DEFAULT_POSTGRES_SIZES: [usize; 2] = [1_000, 100_000];
/// Messages generated and imported at once.
const CHUNK: usize = 10_000;
/// Messages that share one millisecond, so that ties are broken by id.
const PER_MS: usize = 10;
const START_MS: i64 = 1_767_225_600_000;

fn sizes() -> Vec<usize> {
    sizes_from(SIZES_VAR, &DEFAULT_SIZES)
}

/// The comma-separated sizes in `var`, or `default`.
fn sizes_from(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: {s:?} is not a number"))
            })
            .collect(),
        _ => default.to_vec(),
    }
}

fn chat(n: usize) -> Chat {
    let last = START_MS + i64::try_from(n / PER_MS).unwrap();
    Chat {
        id: ChatId::new("bench:chat.1").unwrap(),
        title: None,
        node: NodeId::new("NODA1").unwrap(),
        created_at: Timestamp::from_unix_millis(START_MS).unwrap(),
        updated_at: Timestamp::from_unix_millis(last).unwrap(),
        message_count: u64::try_from(n).unwrap(),
    }
}

/// Messages `from..to` of the chat in ascending `(ts, id)` order: ids are
/// v7 UUIDs generated in order, times advance every `PER_MS` messages.
fn messages(chat: &Chat, from: usize, to: usize) -> Vec<Message> {
    let operator = OperatorId::new("alice").unwrap();
    (from..to)
        .map(|i| Message {
            id: MessageId::generate(),
            chat_id: chat.id.clone(),
            role: if i % 2 == 0 {
                Role::Operator
            } else {
                Role::Agent
            },
            text: format!(
                "message {i}: a typical line of an operator chat, about a hundred bytes long."
            ),
            ts: Timestamp::from_unix_millis(START_MS + i64::try_from(i / PER_MS).unwrap()).unwrap(),
            operator_id: operator.clone(),
            node: chat.node.clone(),
        })
        .collect()
}

/// Imports a chat of `n` messages; returns the cursor 90% of the way down
/// its newest-first list.
async fn fill(store: &DynChatIndexStore, n: usize, batch: usize) -> Cursor {
    let chat = chat(n);
    let deep_index = n / 10;
    let mut deep = None;
    let started = Instant::now();
    for from in (0..n).step_by(CHUNK) {
        let chunk = messages(&chat, from, (from + CHUNK).min(n));
        if (from..from + chunk.len()).contains(&deep_index) {
            deep = Some(chunk[deep_index - from].cursor());
        }
        for part in chunk.chunks(batch) {
            store.import_chat(&chat, part).await.unwrap();
        }
    }
    let stored = store.get_chat(&chat.id).await.unwrap().unwrap();
    assert_eq!(stored.message_count, u64::try_from(n).unwrap());
    eprintln!("note: {n} messages imported in {:.1?}", started.elapsed());
    deep.unwrap()
}

fn bench_pages(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    n: usize,
    store: &DynChatIndexStore,
    deep: &Cursor,
) {
    let id = chat(n).id;
    let limit = PageLimit::new(50).unwrap();
    let top = PageRequest::first(limit);
    let below = PageRequest {
        limit,
        after: Some(deep.clone()),
    };
    // Each page is full and continues: the timed reads are real pages.
    for request in [&top, &below] {
        let page = rt.block_on(store.list_messages(&id, request)).unwrap();
        assert_eq!(page.items.len(), 50);
        assert!(page.next.is_some());
    }
    let mut group = c.benchmark_group(format!("page/{n}"));
    group.bench_function(format!("{backend}/top"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(store.list_messages(&id, &top).await.unwrap()) });
    });
    group.bench_function(format!("{backend}/deep"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(store.list_messages(&id, &below).await.unwrap()) });
    });
    group.finish();
}

fn pages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis_url = std::env::var(sofiia_testkit::REDIS_URL_VAR)
        .ok()
        .filter(|v| !v.is_empty());
    if redis_url.is_none() {
        eprintln!(
            "note: the redis benches are skipped: set {}=redis://127.0.0.1:6379 to run them",
            sofiia_testkit::REDIS_URL_VAR
        );
    }
    for n in sizes() {
        {
            let dir = tempfile::tempdir().unwrap();
            let store = rt
                .block_on(SqliteChatIndex::open(dir.path().join("bench.sqlite3")))
                .unwrap();
            let deep = rt.block_on(fill(&store, n, CHUNK));
            bench_pages(c, &rt, "sqlite", n, &store, &deep);
            // Its pools close on the runtime.
            rt.block_on(async move { drop(store) });
        }
        if redis_url.is_some() {
            bench_redis(c, &rt, n);
        }
    }
    if std::env::var(sofiia_testkit::POSTGRES_URL_VAR).is_ok_and(|v| !v.is_empty()) {
        for n in sizes_from(POSTGRES_SIZES_VAR, &DEFAULT_POSTGRES_SIZES) {
            bench_postgres(c, &rt, n);
        }
    } else {
        eprintln!(
            "note: the postgres benches are skipped: set {}=postgres://postgres@127.0.0.1:5432/postgres to run them",
            sofiia_testkit::POSTGRES_URL_VAR
        );
    }
}

#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion, rt: &tokio::runtime::Runtime, n: usize) {
    use sofiia_chat_index::{PoolOptions, PostgresChatIndex};

    // The database is dropped with `db`, after the store.
    let db = rt
        .block_on(sofiia_testkit::PostgresTestDatabase::new("bench page"))
        .expect("PostgreSQL answers");
    let store = rt
        .block_on(PostgresChatIndex::connect(&db.url, PoolOptions::default()))
        .unwrap();
    let deep = rt.block_on(fill(&store, n, CHUNK));
    let bytes = rt.block_on(async {
        let client = store.pool().get().await.unwrap();
        // Statistics, as autovacuum would gather them on a live database.
        client
            .batch_execute("ANALYZE chat_index_chats, chat_index_messages")
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT pg_total_relation_size('chat_index_messages')::bigint",
                &[],
            )
            .await
            .unwrap();
        u64::try_from(row.get::<_, i64>(0)).unwrap()
    });
    eprintln!(
        "note: postgres table and indexes for {n} messages: {:.1} MB, {} bytes per message",
        bytes as f64 / 1e6,
        bytes / u64::try_from(n).unwrap()
    );
    bench_pages(c, rt, "postgres", n, &store, &deep);
    rt.block_on(async move { drop(store) });
    drop(db);
}

#[cfg(not(feature = "postgres"))]
fn bench_postgres(_: &mut Criterion, _: &tokio::runtime::Runtime, _: usize) {
    eprintln!("note: the postgres benches are skipped: build with --features postgres to run them");
}

#[cfg(feature = "redis")]
fn bench_redis(c: &mut Criterion, rt: &tokio::runtime::Runtime, n: usize) {
    // The context deletes its keys when dropped, after the store.
    let redis = rt
        .block_on(sofiia_testkit::RedisTestContext::new("bench page"))
        .expect("Redis answers");
    let store = sofiia_chat_index::RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone())
        // Building the dataset runs large scripts; the timed pages are far
        // below either timeout.
        .with_op_timeout(std::time::Duration::from_secs(60));
    let deep = rt.block_on(fill(&store, n, 2_000));
    let bytes = rt.block_on(memory_usage(&redis));
    eprintln!(
        "note: redis memory for {n} messages: {:.1} MB, {} bytes per message",
        bytes as f64 / 1e6,
        bytes / u64::try_from(n).unwrap()
    );
    bench_pages(c, rt, "redis", n, &store, &deep);
    rt.block_on(async move { drop(store) });
    let started = Instant::now();
    drop(redis);
    eprintln!(
        "note: redis keys of {n} messages deleted in {:.1?}",
        started.elapsed()
    );
}

/// What the context's keys take in Redis, exactly (`SAMPLES 0`).
#[cfg(feature = "redis")]
async fn memory_usage(redis: &sofiia_testkit::RedisTestContext) -> u64 {
    use deadpool_redis::redis;
    let mut conn = redis.conn.handle();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        total += bytes;
    }
    total
}

#[cfg(not(feature = "redis"))]
fn bench_redis(_: &mut Criterion, _: &tokio::runtime::Runtime, _: usize) {
    eprintln!("note: the redis benches are skipped: build with --features redis to run them");
}

criterion_group!(benches, pages);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
