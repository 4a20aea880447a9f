//! Offline commands: audit retention pruning and chain verification.

use std::fmt;
use std::time::Duration;

use sofiia_audit_store::{AuditStore, NewEvent, Outcome, SqliteAuditStore, Verification};
use sofiia_core_domain::{Clock, SystemClock, Timestamp};

use crate::config::Settings;
use crate::server::AUDIT_DB;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `prune-audit` does.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Count only.
    pub dry_run: bool,
    /// Keep events younger than this many days.
    pub retention_days: u32,
    /// Events per delete transaction.
    pub batch_size: u32,
    /// Pause between batches.
    pub pause: Duration,
    /// Vacuum afterwards.
    pub vacuum: bool,
}

/// What a prune did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Events older than this were pruned.
    pub cutoff: Timestamp,
    /// Events deleted, or that a real run would delete.
    pub events: u64,
    /// Delete transactions run.
    pub batches: u64,
    /// Whether the file was vacuumed.
    pub vacuumed: bool,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            write!(
                f,
                "dry run: {} audit events older than {} would be deleted; nothing was deleted",
                self.events, self.cutoff
            )
        } else {
            write!(
                f,
                "deleted {} audit events older than {} in {} batches{}",
                self.events,
                self.cutoff,
                self.batches,
                if self.vacuumed { "; vacuumed" } else { "" }
            )
        }
    }
}

/// Prunes the audit store of `settings` and records the run as an
/// `audit.prune` event.
///
/// # Errors
///
/// The store's error; batches committed before it stay deleted.
pub async fn prune_audit(
    settings: &Settings,
    options: &PruneOptions,
) -> Result<PruneReport, BoxError> {
    let store = SqliteAuditStore::open(settings.data_dir.join(AUDIT_DB)).await?;
    prune_with(&store, &SystemClock, options).await
}

/// [`prune_audit`] on a given store and clock.
///
/// # Errors
///
/// The store's error.
pub async fn prune_with(
    store: &SqliteAuditStore,
    clock: &dyn Clock,
    options: &PruneOptions,
) -> Result<PruneReport, BoxError> {
    let cutoff = clock.now().saturating_sub(Duration::from_secs(
        u64::from(options.retention_days) * 86_400,
    ));
    let mut report = PruneReport {
        dry_run: options.dry_run,
        cutoff,
        events: 0,
        batches: 0,
        vacuumed: false,
    };
    if options.dry_run {
        report.events = store.count_before(cutoff).await?;
    } else {
        loop {
            let batch = store.prune_batch(cutoff, options.batch_size).await?;
            report.events += batch.deleted;
            report.batches += 1;
            if !batch.more {
                break;
            }
            tokio::time::sleep(options.pause).await;
        }
        store.checkpoint().await?;
        if options.vacuum {
            store.vacuum().await?;
            report.vacuumed = true;
        }
    }
    let mut details = serde_json::Map::new();
    details.insert("dry_run".into(), report.dry_run.into());
    details.insert("cutoff".into(), report.cutoff.to_string().into());
    details.insert("events".into(), report.events.into());
    details.insert("batches".into(), report.batches.into());
    details.insert("retention_days".into(), options.retention_days.into());
    details.insert("vacuum".into(), report.vacuumed.into());
    store
        .append(NewEvent {
            ts: clock.now(),
            actor: "system".into(),
            action: "audit.prune".into(),
            target: "audit".into(),
            outcome: Outcome::Ok,
            status: None,
            request_id: None,
            node: None,
            source_ip: None,
            user_agent: None,
            details,
        })
        .await?;
    Ok(report)
}

/// Verifies the audit chain of `settings`' store: `(intact, a line to print)`.
///
/// # Errors
///
/// The store's error (a broken chain is not an error).
pub async fn audit_verify(settings: &Settings) -> Result<(bool, String), BoxError> {
    let path = settings.data_dir.join(AUDIT_DB);
    if !path.exists() {
        return Err(format!("no audit store at {}", path.display()).into());
    }
    let store = SqliteAuditStore::open(&path).await?;
    Ok(match store.verify().await? {
        Verification::Intact { events } => (
            true,
            format!("audit chain intact: {events} events verified"),
        ),
        Verification::Broken { id, reason } => (
            false,
            format!("audit chain BROKEN at event {id}: {reason:?}"),
        ),
    })
}
