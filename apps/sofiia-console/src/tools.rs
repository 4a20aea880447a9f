//! Offline commands: audit retention pruning and chain verification, and
//! the chat index migration between backends.

use std::fmt;
use std::io::Write;
use std::time::Duration;

use sofiia_audit_store::{
    AuditStore, DynAuditStore, NewEvent, Outcome, PostgresAuditStore, SqliteAuditStore, Vacuumed,
    Verification,
};
pub use sofiia_chat_index::migrate::{MigrateOptions, MigrateReport};
use sofiia_chat_index::{DynChatIndexStore, PostgresChatIndex, RedisChatIndex, SqliteChatIndex};
use sofiia_core_domain::{Clock, SystemClock, Timestamp};

use crate::config::{AuditBackend, Settings};
use crate::server::{AUDIT_DB, CHAT_INDEX_DB, IDEMPOTENCY_DB, sqlite_file};

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
    /// What the vacuum did, when asked for.
    pub vacuumed: Option<Vacuumed>,
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
                "deleted {} audit events older than {} in {} batches",
                self.events, self.cutoff, self.batches,
            )?;
            match self.vacuumed {
                None => Ok(()),
                Some(v) if v.incremental => write!(
                    f,
                    "; vacuumed: {} pages given back in {} steps",
                    v.pages_freed, v.steps
                ),
                Some(_) => write!(
                    f,
                    "; vacuum skipped: the file predates incremental vacuum and is converted at \
                     the console's next start"
                ),
            }
        }
    }
}

/// The audit store `settings` name, opened for an offline command.
#[derive(Debug)]
pub enum AuditTrail {
    /// The SQLite file in the data dir.
    Sqlite(SqliteAuditStore),
    /// The trail in PostgreSQL.
    Postgres(PostgresAuditStore),
}

impl AuditTrail {
    /// Opens the trail of `settings`. A SQLite trail that does not exist is
    /// an error when it `must_exist` (verifying nothing proves nothing), and
    /// created otherwise.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn open(settings: &Settings, must_exist: bool) -> Result<Self, BoxError> {
        match settings.audit_backend {
            AuditBackend::Sqlite => {
                let path = sqlite_file(&settings.data_dir, AUDIT_DB);
                if must_exist && !path.exists() {
                    return Err(format!("no audit store at {}", path.display()).into());
                }
                Ok(Self::Sqlite(SqliteAuditStore::open(&path).await?))
            }
            AuditBackend::Postgres => {
                let pool = sofiia_postgres_support::PostgresPool::open(
                    &settings.postgres_url,
                    sofiia_postgres_support::PoolOptions::default().with_max_connections(2),
                )?;
                Ok(Self::Postgres(PostgresAuditStore::open(pool).await?))
            }
        }
    }

    /// The store.
    pub fn store(&self) -> &DynAuditStore {
        match self {
            Self::Sqlite(store) => store,
            Self::Postgres(store) => store,
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
    let trail = AuditTrail::open(settings, false).await?;
    prune_with(&trail, &SystemClock, options).await
}

/// [`prune_audit`] on a given trail and clock.
///
/// # Errors
///
/// The store's error.
pub async fn prune_with(
    trail: &AuditTrail,
    clock: &dyn Clock,
    options: &PruneOptions,
) -> Result<PruneReport, BoxError> {
    let store = trail.store();
    let cutoff = clock.now().saturating_sub(Duration::from_secs(
        u64::from(options.retention_days) * 86_400,
    ));
    let mut report = PruneReport {
        dry_run: options.dry_run,
        cutoff,
        events: 0,
        batches: 0,
        vacuumed: None,
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
        // Neither step holds the write lock for long: the checkpoint is
        // passive, the vacuum incremental (see `SqliteAuditStore::vacuum`).
        // PostgreSQL's autovacuum reclaims what a prune freed by itself.
        if let AuditTrail::Sqlite(store) = trail {
            store.checkpoint().await?;
            if options.vacuum {
                report.vacuumed = Some(store.vacuum(options.pause).await?);
            }
        }
    }
    let mut details = serde_json::Map::new();
    details.insert("dry_run".into(), report.dry_run.into());
    details.insert("cutoff".into(), report.cutoff.to_string().into());
    details.insert("events".into(), report.events.into());
    details.insert("batches".into(), report.batches.into());
    details.insert("retention_days".into(), options.retention_days.into());
    details.insert("vacuum".into(), report.vacuumed.is_some().into());
    if let Some(v) = report.vacuumed {
        details.insert("vacuum_pages_freed".into(), v.pages_freed.into());
    }
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
    let trail = AuditTrail::open(settings, true).await?;
    Ok(verification_line(trail.store().verify().await?))
}

/// Whether a chain is intact, and the line `audit-verify` prints for it.
fn verification_line(verification: Verification) -> (bool, String) {
    match verification {
        Verification::Intact { events } => (
            true,
            format!("audit chain intact: {events} events verified"),
        ),
        Verification::Broken { id, reason } => (
            false,
            format!("audit chain BROKEN at event {id}: {reason:?}"),
        ),
    }
}

/// Copies the SQLite audit trail of `settings` into the PostgreSQL one
/// (`SOFIIA_POSTGRES_URL`), whatever `SOFIIA_AUDIT_BACKEND` says, keeping
/// every id and hash, records the copy as an `audit.migrate` event there,
/// and verifies the chain in PostgreSQL. Returns whether it verified.
///
/// A source chain that does not verify is not copied. The target must be
/// empty, or hold this trail already (then nothing is copied).
///
/// # Errors
///
/// A missing source, a broken source chain, a target holding other events,
/// or a store error; the copy is one transaction, so nothing is left
/// half-written.
pub async fn migrate_audit(
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<bool, BoxError> {
    let path = sqlite_file(&settings.data_dir, AUDIT_DB);
    if !path.exists() {
        return Err(format!("no SQLite audit trail at {}", path.display()).into());
    }
    let source = SqliteAuditStore::open(&path).await?;
    let events = match source.verify().await? {
        Verification::Intact { events } => events,
        Verification::Broken { id, reason } => {
            return Err(format!(
                "the SQLite trail does not verify (event {id}: {reason:?}); it is not copied"
            )
            .into());
        }
    };
    let pool = sofiia_postgres_support::PostgresPool::open(
        &settings.postgres_url,
        sofiia_postgres_support::PoolOptions::default().with_max_connections(2),
    )?;
    let place = redact_url(&settings.postgres_url);
    let target = PostgresAuditStore::open(pool).await?;
    writeln!(
        out,
        "migrate-audit: from sqlite {} ({events} events, chain intact) to postgres {place}",
        path.display()
    )?;
    let imported = target
        .import_trail(&source, source.anchor().await?.as_ref())
        .await?;
    if imported.already_there {
        writeln!(
            out,
            "nothing to do: the PostgreSQL trail holds this trail already"
        )?;
    } else {
        writeln!(out, "copied {} events", imported.events)?;
        let mut details = serde_json::Map::new();
        details.insert("from".into(), "sqlite".into());
        details.insert("events".into(), imported.events.into());
        target
            .append(NewEvent {
                ts: SystemClock.now(),
                actor: "system".into(),
                action: "audit.migrate".into(),
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
    }
    // The chain in PostgreSQL, as `audit-verify` would report it there.
    let (intact, line) = verification_line(target.verify().await?);
    writeln!(out, "postgres: {line}")?;
    Ok(intact)
}

/// A chat index `migrate-chat-index` reads or writes, whatever
/// `SOFIIA_CHAT_INDEX_BACKEND` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexAt {
    /// The SQLite file in the data dir (`sofiia.db`, or `chat-index.db` of
    /// an earlier release).
    Sqlite,
    /// `SOFIIA_REDIS_URL`, under `SOFIIA_REDIS_PREFIX`.
    Redis,
    /// `SOFIIA_POSTGRES_URL`.
    Postgres,
}

impl IndexAt {
    /// How the command line names it.
    pub fn name(self) -> &'static str {
        match self {
            IndexAt::Sqlite => "sqlite",
            IndexAt::Redis => "redis",
            IndexAt::Postgres => "postgres",
        }
    }

    /// Opens the index, checks that it answers, and says where it is.
    async fn open(self, settings: &Settings) -> Result<(Box<DynChatIndexStore>, String), BoxError> {
        let (store, place): (Box<DynChatIndexStore>, String) = match self {
            IndexAt::Sqlite => {
                let path = sqlite_file(&settings.data_dir, CHAT_INDEX_DB);
                if !path.exists() {
                    return Err(format!("no SQLite chat index at {}", path.display()).into());
                }
                let place = path.display().to_string();
                (Box::new(SqliteChatIndex::open(&path).await?), place)
            }
            IndexAt::Redis => {
                let conn = crate::server::redis_connection(settings)?;
                let server = if conn.is_cluster() {
                    conn.server().to_owned()
                } else {
                    redact_url(&settings.redis_url)
                };
                let place = format!("{server} (prefix {})", settings.redis_prefix);
                let store = RedisChatIndex::new(conn, settings.redis_prefix.clone());
                (Box::new(store), place)
            }
            IndexAt::Postgres => {
                let pool = sofiia_postgres_support::PostgresPool::open(
                    &settings.postgres_url,
                    sofiia_postgres_support::PoolOptions::default().with_max_connections(2),
                )?;
                let place = redact_url(&settings.postgres_url);
                let store = PostgresChatIndex::open(pool).await.map_err(|e| {
                    format!(
                        "{} at {place}: {}",
                        self.name(),
                        sofiia_core_domain::error_chain(&e)
                    )
                })?;
                (Box::new(store), place)
            }
        };
        store.check().await.map_err(|e| {
            format!(
                "{} at {place}: {}",
                self.name(),
                sofiia_core_domain::error_chain(&e)
            )
        })?;
        Ok((store, place))
    }
}

/// Copies the chat index `from` into the chat index `to` (both as
/// `settings` locate them, whatever `SOFIIA_CHAT_INDEX_BACKEND` says), then
/// verifies the result; see [`sofiia_chat_index::migrate::copy_index`].
///
/// # Errors
///
/// The same index on both sides, a missing source file, a store that does
/// not answer, or a store error (after which running the command again
/// resumes the migration).
pub async fn migrate_chat_index(
    settings: &Settings,
    (from, to): (IndexAt, IndexAt),
    options: &MigrateOptions,
    out: &mut (dyn Write + Send),
) -> Result<MigrateReport, BoxError> {
    if from == to {
        return Err(format!("--from and --to are both {}", from.name()).into());
    }
    let (source, source_at) = from.open(settings).await?;
    let (target, target_at) = to.open(settings).await?;
    writeln!(
        out,
        "migrate-chat-index: from {} {source_at} to {} {target_at}{}",
        from.name(),
        to.name(),
        if options.verify_only {
            "; verify only, nothing is written"
        } else {
            ""
        }
    )?;
    Ok(sofiia_chat_index::migrate::copy_index(&*source, &*target, options, out).await?)
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

/// What `check-config --migrate` does: brings the schema of every
/// PostgreSQL store `settings` use to its newest version, as `serve` would
/// at start, and reports each store's version (`{"audit": 1, ...}`).
/// Idempotent; under PostgreSQL's advisory lock, so consoles starting at
/// the same time wait rather than race. SQLite files are migrated when the
/// console opens them.
///
/// # Errors
///
/// PostgreSQL does not answer, or a migration fails (nothing of it is
/// left) or finds a schema newer than this release.
pub async fn migrate_postgres(settings: &Settings) -> Result<serde_json::Value, BoxError> {
    let mut stores = Vec::new();
    if settings.audit_backend == AuditBackend::Postgres {
        stores.push(PostgresAuditStore::schema());
    }
    if settings.chat_index_backend == crate::config::ChatIndexBackend::Postgres {
        stores.push(PostgresChatIndex::schema());
    }
    let mut versions = serde_json::Map::new();
    if stores.is_empty() {
        return Ok(serde_json::Value::Object(versions));
    }
    let pool = sofiia_postgres_support::PostgresPool::open(
        &settings.postgres_url,
        sofiia_postgres_support::PoolOptions::default().with_max_connections(1),
    )?;
    for schema in stores {
        let version = pool.migrate(schema).await.map_err(|e| {
            format!(
                "migrating {} at {}: {}",
                schema.store,
                redact_url(&settings.postgres_url),
                sofiia_core_domain::error_chain(&e)
            )
        })?;
        versions.insert(schema.store.to_owned(), version.into());
    }
    Ok(serde_json::Value::Object(versions))
}

/// What `check-config` prints: the effective settings, every value `serve`
/// would use, without a secret. Building the node router is part of the
/// check, as at start.
///
/// # Errors
///
/// The first setting `serve` would refuse.
pub fn config_report(settings: &Settings) -> Result<serde_json::Value, BoxError> {
    use serde_json::json;

    use crate::build_info::{GIT_SHA, VERSION};
    use crate::send::RateLimitFailMode;

    if let Some(nodes) = &settings.nodes {
        sofiia_router_client::HttpRouter::new(nodes.clone(), settings.infer_timeout)?;
    }
    let nodes = settings.nodes.as_ref().map(|n| {
        n.nodes()
            .iter()
            .map(|node| {
                (
                    node.to_string(),
                    // As `SOFIIA_NODES` lists them: replicas `|`-separated.
                    json!(n.replicas(node).unwrap_or_default().join("|")),
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
        "sqlite_files": sqlite_files(settings),
        "nodes": nodes,
        "default_node": default_node,
        "infer_timeout_ms": settings.infer_timeout.as_millis() as u64,
        "operator_tokens": match &settings.operator_tokens {
            Some(t) => json!({
                "source": "SOFIIA_OPERATOR_TOKENS",
                "operators": t.operators().map(|o| o.to_string()).collect::<Vec<_>>(),
                "shortest": t.shortest(),
            }),
            None => json!({"source": "generated-dev-token", "operators": [crate::credentials::DEV_OPERATOR]}),
        },
        "audit_keys": {"count": settings.audit_keys.len(), "shortest": settings.audit_keys.shortest()},
        "audit_retention_days": settings.audit_retention_days,
        "cursor_keys": match &settings.cursor_keys {
            Some(keys) => json!({"source": "SOFIIA_CURSOR_SECRET", "count": keys.len()}),
            None => json!({"source": "generated", "count": 1}),
        },
        "auth_denial_limit": settings.auth_denial_limit,
        "client_request_timeout_ms": settings.client_request_timeout.as_millis() as u64,
        "keep_alive_secs": settings.keep_alive.as_secs(),
        "max_connections": settings.max_connections,
        "audit_backend": settings.audit_backend.as_str(),
        "chat_index_backend": settings.chat_index_backend.as_str(),
        "idempotency_backend": settings.idempotency_backend.as_str(),
        "idempotency_ttl_secs": settings.idempotency_ttl.as_secs(),
        "idempotency_memory_mb": settings.idempotency_memory_bytes / (1024 * 1024),
        "store_timeout_ms": settings.store_timeout.as_millis() as u64,
        "shutdown_timeout_secs": settings.shutdown_timeout.as_secs(),
        "rate_limit_backend": settings.rate_limit_backend.as_str(),
        "rate_limit_chat": settings.rate_limit_chat.to_string(),
        "rate_limit_operator": settings.rate_limit_operator.to_string(),
        "rate_limit_fail_mode": match settings.rate_limit_fail_mode {
            RateLimitFailMode::Closed => "closed",
            RateLimitFailMode::Open => "open",
        },
        "postgres_url": settings.uses_postgres().then(|| redact_url(&settings.postgres_url)),
        "redis_url": (settings.uses_redis() && settings.redis_cluster_nodes.is_none())
            .then(|| redact_url(&settings.redis_url)),
        "redis_cluster_nodes": settings
            .redis_cluster_nodes
            .as_deref()
            .filter(|_| settings.uses_redis())
            .map(|nodes| {
                nodes
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(redact_url)
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        "redis_prefix": settings.redis_prefix,
        "unknown_variables": settings.unknown_variables,
    }))
}

/// The file in the data dir each SQLite store keeps its tables in (see
/// [`sqlite_file`]), `null` for a store on another backend: what
/// `check-config` reports, for the ops scripts.
fn sqlite_files(settings: &Settings) -> serde_json::Value {
    let name = |own: &str| {
        sqlite_file(&settings.data_dir, own)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    serde_json::json!({
        "audit": (settings.audit_backend == crate::config::AuditBackend::Sqlite)
            .then(|| name(AUDIT_DB)),
        "chat_index": (settings.chat_index_backend == crate::config::ChatIndexBackend::Sqlite)
            .then(|| name(CHAT_INDEX_DB)),
        "idempotency": (settings.idempotency_backend == crate::config::IdempotencyBackend::Sqlite)
            .then(|| name(IDEMPOTENCY_DB)),
    })
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
        assert_eq!(report["cursor_keys"]["source"], "generated");
        assert_eq!(report["auth_denial_limit"], 30);
        assert_eq!(report["client_request_timeout_ms"], 5000);
        assert_eq!(report["keep_alive_secs"], 5);
        assert_eq!(report["max_connections"], 10_000);
        assert_eq!(report["chat_index_backend"], "sqlite");
        assert_eq!(report["default_node"], "echo");
        // The files the ops scripts check: one, shared; none for Redis.
        assert_eq!(report["sqlite_files"]["audit"], "sofiia.db");
        assert_eq!(report["sqlite_files"]["chat_index"], "sofiia.db");
        assert!(report["sqlite_files"]["idempotency"].is_null());
        let mut redis_vars = vars.clone();
        redis_vars.insert("SOFIIA_CHAT_INDEX_BACKEND".to_owned(), "redis".to_owned());
        redis_vars.remove("SOFIIA_IDEMPOTENCY_BACKEND");
        redis_vars.insert(
            "SOFIIA_CURSOR_SECRET".to_owned(),
            "cursor-key-new-0123456789abcdef0123,cursor-key-old-0123456789abcdef0123".to_owned(),
        );
        let redis_report = config_report(&Settings::from_vars(&redis_vars).unwrap()).unwrap();
        assert_eq!(redis_report["chat_index_backend"], "redis");
        assert_eq!(redis_report["idempotency_backend"], "sqlite");
        assert!(redis_report["sqlite_files"]["chat_index"].is_null());
        assert_eq!(redis_report["sqlite_files"]["idempotency"], "sofiia.db");
        assert_eq!(
            redis_report["cursor_keys"]["source"],
            "SOFIIA_CURSOR_SECRET"
        );
        assert_eq!(redis_report["cursor_keys"]["count"], 2);
        assert_eq!(report["store_timeout_ms"], 2000);
        assert_eq!(report["shutdown_timeout_secs"], 43);
        assert_eq!(redis_report["redis_url"], "redis://***@127.0.0.1:6379");
        assert!(redis_report["redis_cluster_nodes"].is_null());
        let mut cluster_vars = vars.clone();
        cluster_vars.insert(
            "SOFIIA_REDIS_CLUSTER_NODES".to_owned(),
            "10.0.0.1:7000, redis://:hunter2@10.0.0.2:7000,".to_owned(),
        );
        let cluster_report = config_report(&Settings::from_vars(&cluster_vars).unwrap()).unwrap();
        assert!(cluster_report["redis_url"].is_null());
        assert_eq!(
            cluster_report["redis_cluster_nodes"],
            "10.0.0.1:7000,redis://***@10.0.0.2:7000"
        );
        let text = format!("{report}{redis_report}{cluster_report}");
        for secret in ["token-alice", "audit-key-0123", "hunter2", "cursor-key"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}
