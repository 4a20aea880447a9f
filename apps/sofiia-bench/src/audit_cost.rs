//! Cost of the audit trail at size, through the `sofiia-audit-store` crate
//! directly: append throughput one at a time (what one quiet operator sees)
//! and many at once (group commit under load), on an empty store and on one
//! holding `events` events; then the hash-chain verification and the
//! retention prune of all of them, timed.
//!
//! Events look like the console's `chat.send` events and are dated in the
//! past, so a prune to "now minus 90 days" deletes every one of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, json};
use sofiia_audit_store::{AuditStore, NewEvent, Outcome, SqliteAuditStore, Verification};
use sofiia_core_domain::Timestamp;

use crate::error_chain;

/// The console's default prune batch (`prune-audit --batch-size`).
pub(crate) const PRUNE_BATCH: u32 = 5_000;

/// Appenders at once when filling and in the concurrent measurement: about
/// what a busy console has in flight.
const CONCURRENT: u64 = 64;

/// 2025-01-01T00:00:00Z: events are dated from here on, one a millisecond,
/// long before any retention cutoff.
const EVENTS_FROM_MS: i64 = 1_735_689_600_000;

/// A `chat.send` event as the console writes it.
pub(crate) fn event(n: u64) -> NewEvent {
    let mut details = Map::new();
    details.insert(
        "message_id".into(),
        json!(uuid::Uuid::from_u128(u128::from(n)).to_string()),
    );
    details.insert("chat_created".into(), json!(n.is_multiple_of(50)));
    let ms = i64::try_from(n).unwrap_or(i64::MAX);
    NewEvent {
        ts: Timestamp::from_unix_millis(EVENTS_FROM_MS.saturating_add(ms))
            .unwrap_or(Timestamp::MAX),
        actor: format!("op{:05}", n % 1000),
        action: "chat.send".into(),
        target: format!("incident-{}", n % 5000),
        outcome: Outcome::Ok,
        status: Some(200),
        request_id: Some(format!("{:032x}", u128::from(n) * 7_919)),
        node: Some("NODA1".into()),
        source_ip: Some("127.0.0.1".into()),
        user_agent: Some("sofiia-ui/1.4 (Mozilla/5.0)".into()),
        details,
    }
}

/// Appends rate and latency of one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AppendPhase {
    pub events: u64,
    pub per_sec: f64,
    /// Events per transaction (group commit) in this phase.
    pub batch: f64,
}

/// Everything the audit measurement found.
#[derive(Debug, Clone)]
pub(crate) struct AuditReport {
    pub events: u64,
    pub sequential_empty: AppendPhase,
    pub fill: AppendPhase,
    pub sequential_full: AppendPhase,
    pub concurrent_full: AppendPhase,
    pub file_bytes: u64,
    pub verify: Duration,
    pub count_before: Duration,
    pub prune: Duration,
    pub prune_batches: u64,
    pub checkpoint: Duration,
    pub vacuum: Duration,
    pub file_bytes_after: u64,
}

/// Appends events `from..to` with `concurrency` appenders and measures it.
async fn append_phase(
    store: &Arc<SqliteAuditStore>,
    from: u64,
    to: u64,
    concurrency: u64,
) -> Result<AppendPhase, String> {
    let before = store.group_commit_stats();
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (store, next) = (Arc::clone(store), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return Ok::<(), String>(());
                    }
                    store
                        .append(event(n))
                        .await
                        .map_err(|e| format!("append: {}", error_chain(&e)))?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("append task: {e}"))??;
    }
    let took = started.elapsed();
    let after = store.group_commit_stats();
    let transactions = after.transactions.saturating_sub(before.transactions);
    let events = to.saturating_sub(from);
    Ok(AppendPhase {
        events,
        per_sec: events as f64 / took.as_secs_f64().max(1e-9),
        batch: events as f64 / transactions.max(1) as f64,
    })
}

fn file_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|s| {
            std::fs::metadata(format!("{}{s}", path.display()))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

/// Runs the audit measurement in `dir` with a store of `events` events.
///
/// # Errors
///
/// When the store cannot be opened or a call fails.
pub(crate) async fn run(
    dir: &std::path::Path,
    events: u64,
    progress: &dyn Fn(&str),
) -> Result<AuditReport, String> {
    let path = dir.join("audit-bench.db");
    let store = Arc::new(
        SqliteAuditStore::open(&path)
            .await
            .map_err(|e| format!("open {}: {}", path.display(), error_chain(&e)))?,
    );
    let probe = (events / 100).clamp(200, 2_000);
    let sequential_empty = append_phase(&store, 0, probe, 1).await?;
    progress(&format!(
        "audit: {:.0} sequential appends/s on an empty store",
        sequential_empty.per_sec
    ));
    let fill = append_phase(&store, probe, events, CONCURRENT).await?;
    progress(&format!(
        "audit: filled to {events} events at {:.0} appends/s ({:.1} per transaction)",
        fill.per_sec, fill.batch
    ));
    let sequential_full = append_phase(&store, events, events + probe, 1).await?;
    let concurrent_full = append_phase(
        &store,
        events + probe,
        events + probe + 20 * probe,
        CONCURRENT,
    )
    .await?;
    let total = events + probe + 20 * probe;
    let file_bytes_before = file_bytes(&path);

    let started = Instant::now();
    match store
        .verify()
        .await
        .map_err(|e| format!("verify: {}", error_chain(&e)))?
    {
        Verification::Intact { .. } => {}
        Verification::Broken { id, .. } => return Err(format!("the chain broke at event {id}")),
    }
    let verify = started.elapsed();
    progress(&format!(
        "audit: verified {total} events in {:.1}s",
        verify.as_secs_f64()
    ));

    // Every event is older than this: 2025 plus a few hours of events,
    // against a cutoff 90 days before a date well after them.
    let cutoff = Timestamp::from_unix_millis(EVENTS_FROM_MS)
        .map_err(|e| e.to_string())?
        .saturating_add(Duration::from_secs(400 * 86_400));
    let started = Instant::now();
    let old = store
        .count_before(cutoff)
        .await
        .map_err(|e| format!("count_before: {}", error_chain(&e)))?;
    let count_before = started.elapsed();
    if old != total {
        return Err(format!("{old} events older than the cutoff, not {total}"));
    }
    let started = Instant::now();
    let mut deleted = 0;
    let mut prune_batches = 0;
    loop {
        let batch = store
            .prune_batch(cutoff, PRUNE_BATCH)
            .await
            .map_err(|e| format!("prune_batch: {}", error_chain(&e)))?;
        deleted += batch.deleted;
        prune_batches += 1;
        if !batch.more {
            break;
        }
    }
    let prune = started.elapsed();
    if deleted != total {
        return Err(format!("pruned {deleted} events, not {total}"));
    }
    progress(&format!(
        "audit: pruned {deleted} events in {:.1}s",
        prune.as_secs_f64()
    ));
    // The incremental vacuum gives freed pages back in short steps, with no
    // pause here; the checkpoint after it moves its changes into the
    // database file, so the size below is what the disk keeps.
    let started = Instant::now();
    store
        .vacuum(Duration::ZERO)
        .await
        .map_err(|e| format!("vacuum: {}", error_chain(&e)))?;
    let vacuum = started.elapsed();
    let started = Instant::now();
    store
        .checkpoint()
        .await
        .map_err(|e| format!("checkpoint: {}", error_chain(&e)))?;
    let checkpoint = started.elapsed();
    let file_bytes_after = file_bytes(&path);
    Ok(AuditReport {
        events: total,
        sequential_empty,
        fill,
        sequential_full,
        concurrent_full,
        file_bytes: file_bytes_before,
        verify,
        count_before,
        prune,
        prune_batches,
        checkpoint,
        vacuum,
        file_bytes_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_old_distinct_and_valid() {
        let a = event(1);
        let b = event(2);
        assert!(a.ts < b.ts);
        assert_ne!(a.details, b.details);
        assert_eq!(a.action, "chat.send");
        // Dated in 2025: older than any retention cutoff from 2026 on.
        assert!(a.ts.as_unix_millis() < 1_767_225_600_000);
    }
}
