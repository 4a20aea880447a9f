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

/// Hides the password of a Redis URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// What `check-config` prints: the effective settings, every value `serve`
/// would use, without a secret. Building the node router and the Redis pool
/// is part of the check, as at start.
///
/// # Errors
///
/// The first setting `serve` would refuse.
pub fn config_report(settings: &Settings) -> Result<serde_json::Value, BoxError> {
    use serde_json::json;

    use crate::config::{ChatIndexBackend, RateLimitFailMode, SharedBackend};
    use crate::routes::{GIT_SHA, VERSION};

    if let Some(nodes) = &settings.nodes {
        sofiia_router_client::HttpRouter::new(nodes.clone(), settings.infer_timeout)?;
    }
    if settings.uses_redis() {
        crate::server::redis_pool(&settings.redis_url)?;
    }
    let backend = |b: SharedBackend| match b {
        SharedBackend::InMemory => "inmemory",
        SharedBackend::Redis => "redis",
    };
    let nodes = settings.nodes.as_ref().map(|n| {
        n.nodes()
            .iter()
            .map(|node| {
                (
                    node.to_string(),
                    json!(n.base_url(node).unwrap_or_default()),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    });
    let default_node = settings
        .nodes
        .as_ref()
        .map_or(sofiia_router_client::EchoRouter::NODE.to_owned(), |n| {
            n.default_node().to_string()
        });
    Ok(json!({
        "valid": true,
        "version": VERSION,
        "git_sha": GIT_SHA,
        "bind": settings.bind.to_string(),
        "data_dir": settings.data_dir.display().to_string(),
        "nodes": nodes,
        "default_node": default_node,
        "infer_timeout_ms": settings.infer_timeout.as_millis() as u64,
        "operator_tokens": match &settings.operator_tokens {
            Some(t) => json!({
                "source": "SOFIIA_OPERATOR_TOKENS",
                "operators": t.operators().map(|o| o.to_string()).collect::<Vec<_>>(),
                "shortest": t.shortest(),
            }),
            None => json!({"source": "generated-dev-token", "operators": [crate::auth::DEV_OPERATOR]}),
        },
        "audit_keys": {"count": settings.audit_keys.len(), "shortest": settings.audit_keys.shortest()},
        "audit_retention_days": settings.audit_retention_days,
        "chat_index_backend": match settings.chat_index_backend {
            ChatIndexBackend::Sqlite => "sqlite",
            ChatIndexBackend::InMemory => "inmemory",
        },
        "idempotency_backend": backend(settings.idempotency_backend),
        "idempotency_ttl_secs": settings.idempotency_ttl.as_secs(),
        "rate_limit_backend": backend(settings.rate_limit_backend),
        "rate_limit_chat": settings.rate_limit_chat.to_string(),
        "rate_limit_operator": settings.rate_limit_operator.to_string(),
        "rate_limit_fail_mode": match settings.rate_limit_fail_mode {
            RateLimitFailMode::Closed => "closed",
            RateLimitFailMode::Open => "open",
        },
        "redis_url": settings.uses_redis().then(|| redact_url(&settings.redis_url)),
        "redis_prefix": settings.redis_prefix,
        "unknown_variables": settings.unknown_variables,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:s3cret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h"), "rediss://***@h");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn the_report_names_every_backend_and_no_secret() {
        let vars = [
            (
                "SOFIIA_OPERATOR_TOKENS",
                "alice:token-alice-0123456789abcdef",
            ),
            ("SOFIIA_AUDIT_KEYS", "audit-key-0123456789abcdef0123"),
            ("SOFIIA_REDIS_URL", "redis://:hunter2@127.0.0.1:6379"),
            ("SOFIIA_IDEMPOTENCY_BACKEND", "redis"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let settings = Settings::from_vars(&vars).unwrap();
        let report = config_report(&settings).unwrap();
        assert_eq!(report["idempotency_backend"], "redis");
        assert_eq!(report["rate_limit_backend"], "inmemory");
        assert_eq!(report["operator_tokens"]["operators"][0], "alice");
        assert_eq!(
            report["operator_tokens"]["shortest"],
            "token-alice-0123456789abcdef".len()
        );
        assert_eq!(report["audit_keys"]["count"], 1);
        assert_eq!(report["default_node"], "echo");
        let text = report.to_string();
        for secret in ["token-alice", "audit-key-0123", "hunter2"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}
