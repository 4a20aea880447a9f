//! What streaming costs per piece: one send through the console (in
//! process, served over loopback HTTP) to a `router-stub` node, answered as
//! JSON, and as server-sent events of 1 and of 64 pieces.
//!
//! ```text
//! cargo bench -p sofiia-console --bench stream -- --warm-up-time 2 --measurement-time 10
//! ```
//!
//! `(stream/64-pieces − stream/1-piece) ÷ 63` is the cost of one more
//! piece end to end: the node writing it, the console reading it, handing
//! it to the send's reply, encoding it as an event and the client reading
//! it. Keys, quotas and chats are in memory, so the disk's fsyncs (the
//! audit trail's) are the same in every case.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use serde_json::json;
use sofiia_router_stub::StreamConfig;

use common::{ALICE, Console, ConsoleBuilder, stub};

static KEY: AtomicU64 = AtomicU64::new(0);

/// 256 characters: the reply (the echo) has enough for 64 pieces.
const TEXT: &str = "how are the disks on the storage nodes today? the ones in rack four reported \
    latency spikes overnight and the backup window ran long; please summarise what changed since \
    yesterday and whether any of it needs an operator before the next backup window";

async fn send(console: &Console, stream: bool) -> usize {
    let key = format!("bench-key-{:012}", KEY.fetch_add(1, Ordering::Relaxed));
    let mut req = console
        .client
        .post(format!("{}/api/chats/bench/send", console.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .json(&json!({ "text": TEXT }));
    if stream {
        req = req.header("accept", "text/event-stream");
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        read += chunk.unwrap().len();
    }
    read
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (console, node) = rt.block_on(async {
        let node = stub("NODA1").await;
        let console = ConsoleBuilder::new()
            .nodes(&[&node])
            .var("SOFIIA_IDEMPOTENCY_BACKEND", "inmemory")
            .var("SOFIIA_CHAT_INDEX_BACKEND", "inmemory")
            .var("SOFIIA_RATE_LIMIT_CHAT", "1000000/s")
            .var("SOFIIA_RATE_LIMIT_OPERATOR", "1000000/s")
            .start()
            .await;
        (console, node)
    });
    let mut group = c.benchmark_group("stream");
    group.bench_function("json", |b| {
        b.to_async(&rt).iter(|| send(&console, false));
    });
    for pieces in [1usize, 64] {
        let mut config = StreamConfig::default();
        config.chunks = pieces;
        node.set_stream(config).unwrap();
        let name = if pieces == 1 {
            "1-piece".to_owned()
        } else {
            format!("{pieces}-pieces")
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| send(&console, true));
        });
    }
    group.finish();
    rt.block_on(console.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
