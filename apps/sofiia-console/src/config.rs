//! Settings: every `SOFIIA_*` variable, parsed and validated once at start.
//!
//! Values come from the process environment, optionally completed by an env
//! file (`KEY=VALUE` lines, as systemd's `EnvironmentFile=` reads them); the
//! environment wins. A value that does not parse stops the process with a
//! message naming the variable: nothing falls back silently.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_redis::redis::IntoConnectionInfo as _;
use sofiia_ratelimit::Quota;
use sofiia_router_client::NodesConfig;

use sofiia_core_domain::{CursorKeys, NodeId, error_chain};

use crate::credentials::{AuditKeys, OperatorTokens, parse_cursor_keys};
use crate::send::{RateLimitFailMode, Sender};

/// A setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value that does not parse.
    #[error("{variable}: {reason}")]
    Invalid {
        /// The variable's name.
        variable: &'static str,
        /// What is wrong with it (never the value of a secret).
        reason: String,
    },
    /// The env file could not be read or has a malformed line.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn invalid(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        variable,
        reason: reason.into(),
    }
}

/// Which chat index backend serves the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatIndexBackend {
    /// A SQLite file in the data dir (the default).
    Sqlite,
    /// Process memory; lost on restart.
    InMemory,
    /// Redis (`SOFIIA_REDIS_URL`, under `SOFIIA_REDIS_PREFIX`): one index
    /// shared by every instance on it.
    Redis,
    /// PostgreSQL (`SOFIIA_POSTGRES_URL`): one index shared by every
    /// instance on the database.
    Postgres,
}

/// Which audit store keeps the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditBackend {
    /// A SQLite file in the data dir (the default): one trail per instance.
    Sqlite,
    /// PostgreSQL (`SOFIIA_POSTGRES_URL`): one trail shared by every
    /// instance on the database.
    Postgres,
}

impl AuditBackend {
    /// The value of `SOFIIA_AUDIT_BACKEND` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditBackend::Sqlite => "sqlite",
            AuditBackend::Postgres => "postgres",
        }
    }
}

/// Where idempotency keys or rate-limit buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedBackend {
    /// Process memory: exact for one instance only.
    InMemory,
    /// Redis (`SOFIIA_REDIS_URL`): exact across every instance sharing it.
    Redis,
}

impl ChatIndexBackend {
    /// The value of `SOFIIA_CHAT_INDEX_BACKEND` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatIndexBackend::Sqlite => "sqlite",
            ChatIndexBackend::InMemory => "inmemory",
            ChatIndexBackend::Redis => "redis",
            ChatIndexBackend::Postgres => "postgres",
        }
    }
}

/// Where idempotency keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyBackend {
    /// A SQLite file in the data dir (the default): one instance, durable
    /// across restarts and crashes.
    Sqlite,
    /// Process memory: one instance, lost on restart, bounded.
    InMemory,
    /// Redis (`SOFIIA_REDIS_URL`): shared by every instance on it.
    Redis,
}

impl IdempotencyBackend {
    /// The value of `SOFIIA_IDEMPOTENCY_BACKEND` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            IdempotencyBackend::Sqlite => "sqlite",
            IdempotencyBackend::InMemory => "inmemory",
            IdempotencyBackend::Redis => "redis",
        }
    }
}

impl SharedBackend {
    /// The value of `SOFIIA_RATE_LIMIT_BACKEND` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedBackend::InMemory => "inmemory",
            SharedBackend::Redis => "redis",
        }
    }
}

/// Every setting of the console.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SOFIIA_BIND`: the listen address.
    pub bind: SocketAddr,
    /// `SOFIIA_DATA_DIR`: SQLite files and generated dev secrets.
    pub data_dir: PathBuf,
    /// `SOFIIA_NODES` with `SOFIIA_DEFAULT_NODE` applied; `None` runs the
    /// built-in echo node.
    pub nodes: Option<NodesConfig>,
    /// `SOFIIA_INFER_TIMEOUT_MS`: the limit of one infer call.
    pub infer_timeout: Duration,
    /// `SOFIIA_INFER_FIRST_BYTE_TIMEOUT_MS`: how long one replica may take to
    /// start answering before the call moves on (at most the infer timeout).
    pub first_byte_timeout: Duration,
    /// `SOFIIA_INFER_IDLE_TIMEOUT_MS`: the longest pause between two chunks
    /// of a node's answer (at most the infer timeout).
    pub idle_timeout: Duration,
    /// `SOFIIA_SSE_KEEP_ALIVE_MS`: the longest silence of a streamed answer
    /// before a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// `SOFIIA_SEND_ATTACH_WAIT_MS`: how long a JSON retry of a send that is
    /// still running waits for its answer before it is answered 409.
    pub attach_wait: Duration,
    /// `SOFIIA_OPERATOR_TOKENS`; `None` generates a dev token into the data dir.
    pub operator_tokens: Option<OperatorTokens>,
    /// `SOFIIA_CHAT_INDEX_BACKEND`.
    pub chat_index_backend: ChatIndexBackend,
    /// `SOFIIA_AUDIT_BACKEND`.
    pub audit_backend: AuditBackend,
    /// `SOFIIA_POSTGRES_URL`: the database of every postgres backend.
    pub postgres_url: String,
    /// `SOFIIA_REDIS_URL`: the Redis of every redis backend, unless
    /// `SOFIIA_REDIS_CLUSTER_NODES` is set.
    pub redis_url: String,
    /// `SOFIIA_REDIS_CLUSTER_NODES`: the Redis Cluster of every redis
    /// backend instead of `SOFIIA_REDIS_URL` (`host:port,...`, or URLs).
    pub redis_cluster_nodes: Option<String>,
    /// `SOFIIA_REDIS_PREFIX`: the prefix of every key the console writes,
    /// so several deployments can share one Redis.
    pub redis_prefix: String,
    /// `SOFIIA_IDEMPOTENCY_BACKEND`.
    pub idempotency_backend: IdempotencyBackend,
    /// `SOFIIA_IDEMPOTENCY_TTL_SECS`: how long a completed send is replayed.
    pub idempotency_ttl: Duration,
    /// `SOFIIA_IDEMPOTENCY_CAPACITY`: most keys the in-memory backend holds.
    pub idempotency_capacity: usize,
    /// `SOFIIA_IDEMPOTENCY_MEMORY_MB`: most bytes the in-memory backend
    /// holds (stored answers and pending replies).
    pub idempotency_memory_bytes: usize,
    /// `SOFIIA_STORE_TIMEOUT_MS`: the deadline of every store call on the
    /// send path, and of each attempt at storing an answered send.
    pub store_timeout: Duration,
    /// `SOFIIA_RATE_LIMIT_BACKEND`.
    pub rate_limit_backend: SharedBackend,
    /// `SOFIIA_RATE_LIMIT_CHAT`: the per-chat quota.
    pub rate_limit_chat: Quota,
    /// `SOFIIA_RATE_LIMIT_OPERATOR`: the per-operator quota.
    pub rate_limit_operator: Quota,
    /// `SOFIIA_RATE_LIMIT_FAIL_MODE`.
    pub rate_limit_fail_mode: RateLimitFailMode,
    /// `SOFIIA_AUDIT_KEYS`: the keys `/api/audit` accepts; empty refuses all.
    pub audit_keys: AuditKeys,
    /// `SOFIIA_AUDIT_RETENTION_DAYS`: how long audit events are kept.
    pub audit_retention_days: u32,
    /// `SOFIIA_CURSOR_SECRET`: the keys that sign cursors; `None` generates
    /// one into the data dir.
    pub cursor_keys: Option<CursorKeys>,
    /// `SOFIIA_AUTH_DENIAL_LIMIT`: refused credentials a source may send
    /// per minute before it is answered 429.
    pub auth_denial_limit: u32,
    /// `SOFIIA_WORKERS`: HTTP worker threads; `None` uses one per core.
    pub workers: Option<usize>,
    /// `SOFIIA_CLIENT_REQUEST_TIMEOUT_MS`: how long a client may take to send
    /// a request's head (its line and headers); past it the answer is 408
    /// and the connection closes.
    pub client_request_timeout: Duration,
    /// `SOFIIA_KEEP_ALIVE_SECS`: how long an idle connection is kept open; 0
    /// closes every connection after its request.
    pub keep_alive: Duration,
    /// `SOFIIA_MAX_CONNECTIONS`: open connections across all workers; past
    /// it, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// `SOFIIA_SHUTDOWN_TIMEOUT_SECS`: how long a graceful stop waits for
    /// requests and sends in flight. Never less than
    /// [`Sender::answer_budget`].
    pub shutdown_timeout: Duration,
    /// Names of `SOFIIA_*` variables that were set but mean nothing to the
    /// console, most likely typos; reported as a warning at start.
    pub unknown_variables: Vec<String>,
}

/// The variables this version understands (besides build- and test-only ones).
const KNOWN: &[&str] = &[
    "SOFIIA_BIND",
    "SOFIIA_DATA_DIR",
    "SOFIIA_NODES",
    "SOFIIA_DEFAULT_NODE",
    "SOFIIA_INFER_TIMEOUT_MS",
    "SOFIIA_INFER_FIRST_BYTE_TIMEOUT_MS",
    "SOFIIA_INFER_IDLE_TIMEOUT_MS",
    "SOFIIA_SEND_ATTACH_WAIT_MS",
    "SOFIIA_SSE_KEEP_ALIVE_MS",
    "SOFIIA_OPERATOR_TOKENS",
    "SOFIIA_CHAT_INDEX_BACKEND",
    "SOFIIA_AUDIT_BACKEND",
    "SOFIIA_POSTGRES_URL",
    "SOFIIA_REDIS_URL",
    "SOFIIA_REDIS_PREFIX",
    "SOFIIA_REDIS_CLUSTER_NODES",
    "SOFIIA_IDEMPOTENCY_BACKEND",
    "SOFIIA_IDEMPOTENCY_TTL_SECS",
    "SOFIIA_IDEMPOTENCY_CAPACITY",
    "SOFIIA_IDEMPOTENCY_MEMORY_MB",
    "SOFIIA_STORE_TIMEOUT_MS",
    "SOFIIA_RATE_LIMIT_BACKEND",
    "SOFIIA_RATE_LIMIT_CHAT",
    "SOFIIA_RATE_LIMIT_OPERATOR",
    "SOFIIA_RATE_LIMIT_FAIL_MODE",
    "SOFIIA_AUDIT_KEYS",
    "SOFIIA_AUDIT_RETENTION_DAYS",
    "SOFIIA_CURSOR_SECRET",
    "SOFIIA_AUTH_DENIAL_LIMIT",
    "SOFIIA_WORKERS",
    "SOFIIA_CLIENT_REQUEST_TIMEOUT_MS",
    "SOFIIA_KEEP_ALIVE_SECS",
    "SOFIIA_MAX_CONNECTIONS",
    "SOFIIA_SHUTDOWN_TIMEOUT_SECS",
    "SOFIIA_CONFIG",
];

/// Variables used by builds, tests and ops scripts rather than the server.
const IGNORED_PREFIXES: &[&str] = &[
    "SOFIIA_TEST_",
    "SOFIIA_BUILD_",
    "SOFIIA_REQUIRE_",
    "SOFIIA_STUB_",
    // The ops scripts' own settings, which may share the console's env file.
    "SOFIIA_SMOKE_",
    "SOFIIA_EVIDENCE_",
    "SOFIIA_RELEASE_",
    "SOFIIA_PREFLIGHT_",
    "SOFIIA_CONSOLE_BIN",
    "SOFIIA_BIN_DIR",
];

impl Settings {
    /// Reads the process environment, completed by `config_file` if given.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first variable that does not parse.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut vars = match config_file {
            Some(path) => read_env_file(path)?,
            None => BTreeMap::new(),
        };
        // Only Unicode variables can be ours; a non-UTF-8 SOFIIA_ value is
        // reported as invalid instead of being skipped.
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if !key.starts_with("SOFIIA_") {
                continue;
            }
            match value.into_string() {
                Ok(value) => {
                    vars.insert(key.to_owned(), value);
                }
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        variable: KNOWN
                            .iter()
                            .find(|k| **k == key)
                            .copied()
                            .unwrap_or("SOFIIA_*"),
                        reason: format!("{key} is not valid UTF-8"),
                    });
                }
            }
        }
        Self::from_vars(&vars)
    }

    /// Builds settings from explicit `name → value` pairs (tests, embedding).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first variable that does not parse.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(String::as_str);

        let bind = match get("SOFIIA_BIND") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v.parse().map_err(|_| {
                invalid(
                    "SOFIIA_BIND",
                    "must be an IP address and port, such as 127.0.0.1:8080 or [::]:8080",
                )
            })?,
        };

        let data_dir = match get("SOFIIA_DATA_DIR") {
            None => PathBuf::from("./data"),
            Some("") => return Err(invalid("SOFIIA_DATA_DIR", "must not be empty")),
            Some(v) => PathBuf::from(v),
        };

        let default_node = get("SOFIIA_DEFAULT_NODE")
            .map(|v| NodeId::new(v).map_err(|e| invalid("SOFIIA_DEFAULT_NODE", error_chain(&e))))
            .transpose()?;
        let nodes = match get("SOFIIA_NODES") {
            None => {
                if let Some(node) = &default_node
                    && node.as_str() != sofiia_router_client::EchoRouter::NODE
                {
                    return Err(invalid(
                        "SOFIIA_DEFAULT_NODE",
                        format!(
                            "names {node}, but SOFIIA_NODES is unset, so the only node is the \
                                 built-in `{}`",
                            sofiia_router_client::EchoRouter::NODE
                        ),
                    ));
                }
                None
            }
            Some(v) => {
                let nodes =
                    NodesConfig::parse(v).map_err(|e| invalid("SOFIIA_NODES", error_chain(&e)))?;
                Some(match default_node {
                    None => nodes,
                    Some(node) => nodes
                        .with_default(node)
                        .map_err(|e| invalid("SOFIIA_DEFAULT_NODE", error_chain(&e)))?,
                })
            }
        };

        let infer_timeout = Duration::from_millis(parse_u64(
            get("SOFIIA_INFER_TIMEOUT_MS"),
            "SOFIIA_INFER_TIMEOUT_MS",
            30_000,
            1..=600_000,
        )?);
        let infer_ms = u64::try_from(infer_timeout.as_millis()).unwrap_or(u64::MAX);
        // Both capped by the infer timeout, which bounds the whole call.
        let first_byte_timeout = Duration::from_millis(parse_u64(
            get("SOFIIA_INFER_FIRST_BYTE_TIMEOUT_MS"),
            "SOFIIA_INFER_FIRST_BYTE_TIMEOUT_MS",
            infer_ms,
            1..=infer_ms,
        )?);
        let idle_timeout = Duration::from_millis(parse_u64(
            get("SOFIIA_INFER_IDLE_TIMEOUT_MS"),
            "SOFIIA_INFER_IDLE_TIMEOUT_MS",
            infer_ms.min(15_000),
            1..=infer_ms,
        )?);
        let sse_keep_alive = Duration::from_millis(parse_u64(
            get("SOFIIA_SSE_KEEP_ALIVE_MS"),
            "SOFIIA_SSE_KEEP_ALIVE_MS",
            15_000,
            100..=300_000,
        )?);
        let attach_wait = Duration::from_millis(parse_u64(
            get("SOFIIA_SEND_ATTACH_WAIT_MS"),
            "SOFIIA_SEND_ATTACH_WAIT_MS",
            10_000,
            0..=600_000,
        )?);

        let operator_tokens = get("SOFIIA_OPERATOR_TOKENS")
            .map(|v| {
                OperatorTokens::parse(v)
                    .map_err(|e| invalid("SOFIIA_OPERATOR_TOKENS", error_chain(&e)))
            })
            .transpose()?;

        let chat_index_backend = match get("SOFIIA_CHAT_INDEX_BACKEND") {
            None | Some("sqlite") => ChatIndexBackend::Sqlite,
            Some("redis") => ChatIndexBackend::Redis,
            Some("inmemory") => ChatIndexBackend::InMemory,
            Some("postgres") => ChatIndexBackend::Postgres,
            Some(_) => {
                return Err(invalid(
                    "SOFIIA_CHAT_INDEX_BACKEND",
                    "must be `sqlite`, `postgres`, `redis` or `inmemory`",
                ));
            }
        };

        let audit_backend = match get("SOFIIA_AUDIT_BACKEND") {
            None | Some("sqlite") => AuditBackend::Sqlite,
            Some("postgres") => AuditBackend::Postgres,
            Some(_) => {
                return Err(invalid(
                    "SOFIIA_AUDIT_BACKEND",
                    "must be `sqlite` or `postgres`",
                ));
            }
        };

        let postgres_url = get("SOFIIA_POSTGRES_URL")
            .unwrap_or("postgres://127.0.0.1:5432/sofiia")
            .to_owned();
        if let Err(e) = sofiia_postgres_support::parse_url(&postgres_url) {
            return Err(invalid(
                "SOFIIA_POSTGRES_URL",
                format!(
                    "is not a PostgreSQL URL such as postgres://user@127.0.0.1:5432/sofiia ({})",
                    error_chain(&e)
                ),
            ));
        }

        let redis_url = get("SOFIIA_REDIS_URL")
            .unwrap_or("redis://127.0.0.1:6379")
            .to_owned();
        if let Err(e) = redis_url.as_str().into_connection_info() {
            return Err(invalid(
                "SOFIIA_REDIS_URL",
                format!("is not a Redis URL such as redis://127.0.0.1:6379 ({e})"),
            ));
        }
        let redis_cluster_nodes = get("SOFIIA_REDIS_CLUSTER_NODES").map(str::to_owned);
        if let Some(nodes) = &redis_cluster_nodes
            && let Err(e) = sofiia_redis_support::parse_cluster_nodes(nodes)
        {
            return Err(invalid(
                "SOFIIA_REDIS_CLUSTER_NODES",
                format!(
                    "is not a list of Redis Cluster nodes such as 10.0.0.1:7000,10.0.0.2:7000 ({e})"
                ),
            ));
        }
        let redis_prefix = get("SOFIIA_REDIS_PREFIX").unwrap_or("sofiia:").to_owned();
        if redis_prefix.is_empty()
            || redis_prefix.len() > 64
            || !redis_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "SOFIIA_REDIS_PREFIX",
                "must be 1 to 64 visible ASCII characters",
            ));
        }

        let idempotency_backend = match get("SOFIIA_IDEMPOTENCY_BACKEND") {
            None | Some("sqlite") => IdempotencyBackend::Sqlite,
            Some("inmemory") => IdempotencyBackend::InMemory,
            Some("redis") => IdempotencyBackend::Redis,
            Some(_) => {
                return Err(invalid(
                    "SOFIIA_IDEMPOTENCY_BACKEND",
                    "must be `sqlite`, `inmemory` or `redis`",
                ));
            }
        };
        let idempotency_ttl = Duration::from_secs(parse_u64(
            get("SOFIIA_IDEMPOTENCY_TTL_SECS"),
            "SOFIIA_IDEMPOTENCY_TTL_SECS",
            86_400,
            1..=30 * 86_400,
        )?);
        let idempotency_capacity = usize::try_from(parse_u64(
            get("SOFIIA_IDEMPOTENCY_CAPACITY"),
            "SOFIIA_IDEMPOTENCY_CAPACITY",
            100_000,
            1..=100_000_000,
        )?)
        .unwrap_or(usize::MAX);
        let idempotency_memory_bytes = usize::try_from(parse_u64(
            get("SOFIIA_IDEMPOTENCY_MEMORY_MB"),
            "SOFIIA_IDEMPOTENCY_MEMORY_MB",
            256,
            1..=1_048_576,
        )?)
        .unwrap_or(usize::MAX)
        .saturating_mul(1024 * 1024);
        let store_timeout = Duration::from_millis(parse_u64(
            get("SOFIIA_STORE_TIMEOUT_MS"),
            "SOFIIA_STORE_TIMEOUT_MS",
            2_000,
            50..=60_000,
        )?);

        let rate_limit_backend = shared_backend(
            get("SOFIIA_RATE_LIMIT_BACKEND"),
            "SOFIIA_RATE_LIMIT_BACKEND",
        )?;
        let rate_limit_chat = quota(
            get("SOFIIA_RATE_LIMIT_CHAT"),
            "SOFIIA_RATE_LIMIT_CHAT",
            "20/min",
        )?;
        let rate_limit_operator = quota(
            get("SOFIIA_RATE_LIMIT_OPERATOR"),
            "SOFIIA_RATE_LIMIT_OPERATOR",
            "60/min",
        )?;
        let rate_limit_fail_mode = match get("SOFIIA_RATE_LIMIT_FAIL_MODE") {
            None | Some("closed") => RateLimitFailMode::Closed,
            Some("open") => RateLimitFailMode::Open,
            Some(_) => {
                return Err(invalid(
                    "SOFIIA_RATE_LIMIT_FAIL_MODE",
                    "must be `closed` or `open`",
                ));
            }
        };

        let audit_keys = match get("SOFIIA_AUDIT_KEYS") {
            None => AuditKeys::none(),
            Some(v) => {
                AuditKeys::parse(v).map_err(|e| invalid("SOFIIA_AUDIT_KEYS", error_chain(&e)))?
            }
        };
        let audit_retention_days = u32::try_from(parse_u64(
            get("SOFIIA_AUDIT_RETENTION_DAYS"),
            "SOFIIA_AUDIT_RETENTION_DAYS",
            90,
            1..=36_500,
        )?)
        .unwrap_or(90);

        let cursor_keys = get("SOFIIA_CURSOR_SECRET")
            .map(|v| parse_cursor_keys(v).map_err(|e| invalid("SOFIIA_CURSOR_SECRET", e)))
            .transpose()?;

        let auth_denial_limit = u32::try_from(parse_u64(
            get("SOFIIA_AUTH_DENIAL_LIMIT"),
            "SOFIIA_AUTH_DENIAL_LIMIT",
            30,
            1..=1_000_000,
        )?)
        .unwrap_or(u32::MAX);

        let workers = get("SOFIIA_WORKERS")
            .map(|v| parse_u64(Some(v), "SOFIIA_WORKERS", 0, 1..=1024))
            .transpose()?
            .map(|n| usize::try_from(n).unwrap_or(1024));

        let client_request_timeout = Duration::from_millis(parse_u64(
            get("SOFIIA_CLIENT_REQUEST_TIMEOUT_MS"),
            "SOFIIA_CLIENT_REQUEST_TIMEOUT_MS",
            5_000,
            100..=60_000,
        )?);
        let keep_alive = Duration::from_secs(parse_u64(
            get("SOFIIA_KEEP_ALIVE_SECS"),
            "SOFIIA_KEEP_ALIVE_SECS",
            5,
            0..=300,
        )?);
        let max_connections = usize::try_from(parse_u64(
            get("SOFIIA_MAX_CONNECTIONS"),
            "SOFIIA_MAX_CONNECTIONS",
            10_000,
            1..=1_000_000,
        )?)
        .unwrap_or(usize::MAX);

        // A graceful stop must let the slowest send be answered.
        let budget = Sender::answer_budget(infer_timeout, store_timeout);
        let budget_secs = budget.as_secs() + u64::from(budget.subsec_nanos() > 0);
        let shutdown_timeout = match get("SOFIIA_SHUTDOWN_TIMEOUT_SECS") {
            None => Duration::from_secs(budget_secs.max(30)),
            Some(v) => {
                let secs = parse_u64(Some(v), "SOFIIA_SHUTDOWN_TIMEOUT_SECS", 30, 0..=3600)?;
                if secs < budget_secs {
                    return Err(invalid(
                        "SOFIIA_SHUTDOWN_TIMEOUT_SECS",
                        format!(
                            "must be at least {budget_secs}: a send in flight may take the infer \
                             timeout ({} ms) plus its store calls and retries ({} ms each) to be \
                             answered, and SIGTERM lets every one finish",
                            infer_timeout.as_millis(),
                            store_timeout.as_millis()
                        ),
                    ));
                }
                Duration::from_secs(secs)
            }
        };

        let unknown_variables = vars
            .keys()
            .filter(|k| k.starts_with("SOFIIA_"))
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .filter(|k| !IGNORED_PREFIXES.iter().any(|p| k.starts_with(p)))
            .cloned()
            .collect();

        Ok(Self {
            bind,
            data_dir,
            nodes,
            infer_timeout,
            first_byte_timeout,
            idle_timeout,
            attach_wait,
            sse_keep_alive,
            operator_tokens,
            chat_index_backend,
            audit_backend,
            postgres_url,
            redis_url,
            redis_cluster_nodes,
            redis_prefix,
            idempotency_backend,
            idempotency_ttl,
            idempotency_capacity,
            idempotency_memory_bytes,
            store_timeout,
            rate_limit_backend,
            rate_limit_chat,
            rate_limit_operator,
            rate_limit_fail_mode,
            audit_keys,
            audit_retention_days,
            cursor_keys,
            auth_denial_limit,
            workers,
            client_request_timeout,
            keep_alive,
            max_connections,
            shutdown_timeout,
            unknown_variables,
        })
    }
}

impl Settings {
    /// Whether any backend uses PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.audit_backend == AuditBackend::Postgres
            || self.chat_index_backend == ChatIndexBackend::Postgres
    }

    /// Whether any backend uses Redis.
    pub fn uses_redis(&self) -> bool {
        self.idempotency_backend == IdempotencyBackend::Redis
            || self.rate_limit_backend == SharedBackend::Redis
            || self.chat_index_backend == ChatIndexBackend::Redis
    }
}

fn shared_backend(
    value: Option<&str>,
    variable: &'static str,
) -> Result<SharedBackend, ConfigError> {
    match value {
        None | Some("inmemory") => Ok(SharedBackend::InMemory),
        Some("redis") => Ok(SharedBackend::Redis),
        Some(_) => Err(invalid(variable, "must be `inmemory` or `redis`")),
    }
}

fn quota(value: Option<&str>, variable: &'static str, default: &str) -> Result<Quota, ConfigError> {
    value.unwrap_or(default).parse::<Quota>().map_err(|e| {
        invalid(
            variable,
            format!("must be N/s, N/min or N/h with N a positive whole number ({e})"),
        )
    })
}

fn parse_u64(
    value: Option<&str>,
    variable: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let reason = || {
        format!(
            "must be a whole number from {} to {}",
            range.start(),
            range.end()
        )
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(variable, reason()));
    }
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(variable, reason())),
    }
}

/// Reads `KEY=VALUE` lines; blank lines and `#` comments are skipped, and a
/// value may be wrapped in one pair of single or double quotes.
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(file_error(format!("line {} is not KEY=VALUE", n + 1)));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(file_error(format!("line {} has an invalid name", n + 1)));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.insert(key.to_owned(), value.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn error_variable(pairs: &[(&str, &str)]) -> &'static str {
        match Settings::from_vars(&vars(pairs)) {
            Err(ConfigError::Invalid { variable, .. }) => variable,
            other => panic!("expected an invalid variable, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::from_vars(&BTreeMap::new()).unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.nodes.is_none());
        assert_eq!(s.infer_timeout, Duration::from_secs(30));
        assert!(s.operator_tokens.is_none());
        assert_eq!(s.chat_index_backend, ChatIndexBackend::Sqlite);
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(s.idempotency_backend, IdempotencyBackend::Sqlite);
        assert_eq!(s.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(s.idempotency_memory_bytes, 256 * 1024 * 1024);
        assert_eq!(s.store_timeout, Duration::from_secs(2));
        // 30 s of infer, six store calls or attempts of 2 s, the retry delays.
        assert_eq!(s.shutdown_timeout, Duration::from_secs(43));
        assert_eq!(s.rate_limit_backend, SharedBackend::InMemory);
        assert_eq!(s.rate_limit_chat, "20/min".parse().unwrap());
        assert_eq!(s.rate_limit_operator, "60/min".parse().unwrap());
        assert_eq!(s.rate_limit_fail_mode, RateLimitFailMode::Closed);
        assert!(s.audit_keys.is_empty());
        assert_eq!(s.audit_retention_days, 90);
        assert_eq!(s.audit_backend, AuditBackend::Sqlite);
        assert_eq!(s.postgres_url, "postgres://127.0.0.1:5432/sofiia");
        assert!(!s.uses_redis());
        assert!(!s.uses_postgres());
    }

    #[test]
    fn postgres_backends_share_one_url() {
        let s = Settings::from_vars(&vars(&[
            ("SOFIIA_AUDIT_BACKEND", "postgres"),
            ("SOFIIA_CHAT_INDEX_BACKEND", "postgres"),
            (
                "SOFIIA_POSTGRES_URL",
                "postgres://sofiia:pw@db:6432/console",
            ),
        ]))
        .unwrap();
        assert_eq!(s.audit_backend, AuditBackend::Postgres);
        assert_eq!(s.chat_index_backend, ChatIndexBackend::Postgres);
        assert_eq!(s.postgres_url, "postgres://sofiia:pw@db:6432/console");
        assert!(s.uses_postgres());
        assert!(s.unknown_variables.is_empty());
        let only_audit =
            Settings::from_vars(&vars(&[("SOFIIA_AUDIT_BACKEND", "postgres")])).unwrap();
        assert!(only_audit.uses_postgres());
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        assert_eq!(
            error_variable(&[("SOFIIA_BIND", "localhost")]),
            "SOFIIA_BIND"
        );
        assert_eq!(
            error_variable(&[("SOFIIA_DATA_DIR", "")]),
            "SOFIIA_DATA_DIR"
        );
        assert_eq!(error_variable(&[("SOFIIA_NODES", "NODA1")]), "SOFIIA_NODES");
        assert_eq!(
            error_variable(&[
                ("SOFIIA_NODES", "NODA1=http://h:1"),
                ("SOFIIA_DEFAULT_NODE", "NODA2")
            ]),
            "SOFIIA_DEFAULT_NODE"
        );
        assert_eq!(
            error_variable(&[("SOFIIA_DEFAULT_NODE", "NODA2")]),
            "SOFIIA_DEFAULT_NODE"
        );
        for bad in ["", "0", "-1", "1.5", "30s", "600001"] {
            assert_eq!(
                error_variable(&[("SOFIIA_INFER_TIMEOUT_MS", bad)]),
                "SOFIIA_INFER_TIMEOUT_MS"
            );
        }
        assert_eq!(
            error_variable(&[("SOFIIA_OPERATOR_TOKENS", "alice")]),
            "SOFIIA_OPERATOR_TOKENS"
        );
        assert_eq!(
            error_variable(&[("SOFIIA_CHAT_INDEX_BACKEND", "SQLite")]),
            "SOFIIA_CHAT_INDEX_BACKEND"
        );
        assert_eq!(error_variable(&[("SOFIIA_WORKERS", "0")]), "SOFIIA_WORKERS");
        for (var, bad) in [
            ("SOFIIA_REDIS_CLUSTER_NODES", ""),
            (
                "SOFIIA_REDIS_CLUSTER_NODES",
                "127.0.0.1:7000,http://127.0.0.1:7001",
            ),
            ("SOFIIA_REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000/2"),
            ("SOFIIA_AUDIT_BACKEND", "Postgres"),
            ("SOFIIA_AUDIT_BACKEND", "redis"),
            ("SOFIIA_POSTGRES_URL", "postgres://db:notaport/x"),
            ("SOFIIA_POSTGRES_URL", "postgres:///nohost"),
            ("SOFIIA_REDIS_URL", "localhost:6379"),
            ("SOFIIA_REDIS_PREFIX", ""),
            ("SOFIIA_IDEMPOTENCY_BACKEND", "memory"),
            ("SOFIIA_IDEMPOTENCY_TTL_SECS", "0"),
            ("SOFIIA_IDEMPOTENCY_CAPACITY", "lots"),
            ("SOFIIA_IDEMPOTENCY_MEMORY_MB", "0"),
            ("SOFIIA_STORE_TIMEOUT_MS", "10"),
            ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "30"),
            ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "soon"),
            ("SOFIIA_RATE_LIMIT_BACKEND", "Redis"),
            ("SOFIIA_RATE_LIMIT_CHAT", "20"),
            ("SOFIIA_RATE_LIMIT_CHAT", "0/min"),
            ("SOFIIA_RATE_LIMIT_OPERATOR", "60/day"),
            ("SOFIIA_RATE_LIMIT_FAIL_MODE", "maybe"),
            ("SOFIIA_AUDIT_KEYS", ""),
            ("SOFIIA_AUDIT_KEYS", "a,a"),
            ("SOFIIA_AUDIT_RETENTION_DAYS", "0"),
            ("SOFIIA_CURSOR_SECRET", "too-short"),
            ("SOFIIA_AUTH_DENIAL_LIMIT", "0"),
            ("SOFIIA_CLIENT_REQUEST_TIMEOUT_MS", "50"),
            ("SOFIIA_KEEP_ALIVE_SECS", "301"),
            ("SOFIIA_MAX_CONNECTIONS", "0"),
        ] {
            assert_eq!(error_variable(&[(var, bad)]), var, "{var}={bad:?}");
        }
    }

    #[test]
    fn chat_index_backends() {
        for (value, backend, redis) in [
            ("sqlite", ChatIndexBackend::Sqlite, false),
            ("inmemory", ChatIndexBackend::InMemory, false),
            ("redis", ChatIndexBackend::Redis, true),
        ] {
            let s = Settings::from_vars(&vars(&[("SOFIIA_CHAT_INDEX_BACKEND", value)])).unwrap();
            assert_eq!(s.chat_index_backend, backend, "{value}");
            assert_eq!(s.uses_redis(), redis, "{value}: uses_redis");
        }
        // The Redis chat index uses the shared URL and prefix.
        let s = Settings::from_vars(&vars(&[
            ("SOFIIA_CHAT_INDEX_BACKEND", "redis"),
            ("SOFIIA_REDIS_URL", "redis://10.0.0.5:6380/2"),
            ("SOFIIA_REDIS_PREFIX", "prod:"),
        ]))
        .unwrap();
        assert_eq!(s.redis_url, "redis://10.0.0.5:6380/2");
        assert_eq!(s.redis_cluster_nodes, None);
        assert_eq!(s.redis_prefix, "prod:");
        assert_eq!(s.idempotency_backend, IdempotencyBackend::Sqlite);
        let cluster = Settings::from_vars(&vars(&[
            ("SOFIIA_IDEMPOTENCY_BACKEND", "redis"),
            (
                "SOFIIA_REDIS_CLUSTER_NODES",
                "10.0.0.5:7000, redis://:pw@10.0.0.6:7000",
            ),
        ]))
        .unwrap();
        assert_eq!(
            cluster.redis_cluster_nodes.as_deref(),
            Some("10.0.0.5:7000, redis://:pw@10.0.0.6:7000")
        );
        for bad in [
            "Redis",
            "REDIS",
            "redis ",
            "",
            "Postgres",
            "postgresql",
            "memory",
        ] {
            match Settings::from_vars(&vars(&[("SOFIIA_CHAT_INDEX_BACKEND", bad)])) {
                Err(ConfigError::Invalid { variable, reason }) => {
                    assert_eq!(variable, "SOFIIA_CHAT_INDEX_BACKEND", "{bad:?}");
                    assert!(reason.contains("`redis`"), "{reason}");
                }
                other => panic!("{bad:?} must be refused, got {other:?}"),
            }
        }
        // A bad URL is refused even when only the chat index uses Redis.
        assert_eq!(
            error_variable(&[
                ("SOFIIA_CHAT_INDEX_BACKEND", "redis"),
                ("SOFIIA_REDIS_URL", "127.0.0.1:6379"),
            ]),
            "SOFIIA_REDIS_URL"
        );
    }

    #[test]
    fn the_shutdown_timeout_covers_the_slowest_send() {
        let shutdown = |pairs: &[(&str, &str)]| {
            Settings::from_vars(&vars(pairs)).map(|s| s.shutdown_timeout.as_secs())
        };
        // The default follows the budget, never below 30 s.
        assert_eq!(
            shutdown(&[("SOFIIA_INFER_TIMEOUT_MS", "1000")]).unwrap(),
            30
        );
        assert_eq!(
            shutdown(&[("SOFIIA_INFER_TIMEOUT_MS", "120000")]).unwrap(),
            133
        );
        // An explicit value below the budget is refused, naming the budget.
        match Settings::from_vars(&vars(&[
            ("SOFIIA_INFER_TIMEOUT_MS", "60000"),
            ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "60"),
        ])) {
            Err(ConfigError::Invalid { variable, reason }) => {
                assert_eq!(variable, "SOFIIA_SHUTDOWN_TIMEOUT_SECS");
                assert!(reason.contains("at least 73"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            shutdown(&[
                ("SOFIIA_INFER_TIMEOUT_MS", "1000"),
                ("SOFIIA_STORE_TIMEOUT_MS", "100"),
                ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "2"),
            ])
            .unwrap(),
            2
        );
        assert!(
            Settings::from_vars(&vars(&[
                ("SOFIIA_INFER_TIMEOUT_MS", "1000"),
                ("SOFIIA_STORE_TIMEOUT_MS", "200"),
                ("SOFIIA_SHUTDOWN_TIMEOUT_SECS", "2"),
            ]))
            .is_err(),
            "1 s + 6 x 0.2 s + 0.25 s needs 3 s"
        );
        for (idem, backend) in [
            ("sqlite", IdempotencyBackend::Sqlite),
            ("inmemory", IdempotencyBackend::InMemory),
            ("redis", IdempotencyBackend::Redis),
        ] {
            let s = Settings::from_vars(&vars(&[("SOFIIA_IDEMPOTENCY_BACKEND", idem)])).unwrap();
            assert_eq!(s.idempotency_backend, backend);
            assert_eq!(s.uses_redis(), idem == "redis");
        }
    }

    #[test]
    fn nodes_and_default_node() {
        let s = Settings::from_vars(&vars(&[
            (
                "SOFIIA_NODES",
                "NODA1=http://127.0.0.1:9001,NODA2=http://127.0.0.1:9002",
            ),
            ("SOFIIA_DEFAULT_NODE", "NODA2"),
        ]))
        .unwrap();
        assert_eq!(s.nodes.unwrap().default_node().as_str(), "NODA2");
    }

    #[test]
    fn unknown_variables_are_collected_but_test_ones_are_not() {
        let s = Settings::from_vars(&vars(&[
            ("SOFIIA_NODE", "NODA1=http://h:1"),
            ("SOFIIA_TEST_REDIS_URL", "redis://x"),
        ]))
        .unwrap();
        assert_eq!(s.unknown_variables, vec!["SOFIIA_NODE".to_owned()]);
    }

    #[test]
    fn env_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.env");
        std::fs::write(
            &path,
            "# comment\n\nSOFIIA_BIND=127.0.0.1:9999\nexport SOFIIA_DATA_DIR=\"/var/lib/sofiia\"\n",
        )
        .unwrap();
        let vars = read_env_file(&path).unwrap();
        assert_eq!(vars["SOFIIA_BIND"], "127.0.0.1:9999");
        assert_eq!(vars["SOFIIA_DATA_DIR"], "/var/lib/sofiia");
        std::fs::write(&path, "NOT A PAIR\n").unwrap();
        assert!(matches!(
            read_env_file(&path),
            Err(ConfigError::File { .. })
        ));
    }
}
