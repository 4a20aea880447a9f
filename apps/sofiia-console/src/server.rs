//! Composition: settings in, a running HTTP server out.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use std::time::Duration;

use slog::{Logger, error, info, warn};
use sofiia_audit_store::{DynAuditStore, PostgresAuditStore, PostgresOptions, SqliteAuditStore};
use sofiia_chat_index::{
    DynChatIndexStore, MemoryChatIndex, PostgresChatIndex, RedisChatIndex, SqliteChatIndex,
};
use sofiia_core_domain::{CursorKeys, DynClock, SystemClock, error_chain};
use sofiia_idempotency::{
    DynIdempotencyStore, Idempotency, MemoryIdempotencyStore, RedisIdempotencyStore,
    SqliteIdempotencyStore,
};
use sofiia_postgres_support::{PoolOptions, PostgresPool};
use sofiia_ratelimit::{DynRateLimiter, MemoryRateLimiter, RedisRateLimiter};
use sofiia_router_client::{DynNodeRouter, EchoRouter, HttpRouter, Instrumented};
use sofiia_sqlite_support::{Database, DatabaseOptions, Durability};

use crate::auditor::Auditor;
use crate::build_info::{GIT_SHA, VERSION};
use crate::config::{AuditBackend, ChatIndexBackend, IdempotencyBackend, Settings, SharedBackend};
use crate::credentials::{OperatorTokens, dev_tokens, generated_cursor_keys};
use crate::denials::Denials;
use crate::health::{Backends, Probed, Readiness};
use crate::middleware::request_middleware;
use crate::request::RequestMeta;
use crate::routes;
use crate::send::{Quotas, RemoteStores, SendParts, Sender};
use crate::state::AppState;
use crate::telemetry::metrics_handle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created or written.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chat index could not be opened.
    #[error("chat index: {0}")]
    ChatIndex(#[from] sofiia_chat_index::ChatIndexError),
    /// The audit store could not be opened.
    #[error("audit store: {0}")]
    Audit(#[from] sofiia_audit_store::AuditError),
    /// The idempotency store could not be opened.
    #[error("idempotency store: {0}")]
    Idempotency(#[from] sofiia_idempotency::IdempotencyError),
    /// A SQLite file of the data dir could not be opened.
    #[error("SQLite file {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// What went wrong.
        source: sofiia_sqlite_support::Error,
    },
    /// The Redis connection could not be set up.
    #[error("redis: {0}")]
    Redis(String),
    /// The PostgreSQL pool could not be set up.
    #[error("postgres at {server}: {source}")]
    Postgres {
        /// The server and database, without credentials.
        server: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The node router could not be built.
    #[error("nodes: {0}")]
    Router(#[from] sofiia_router_client::ConfigError),
    /// The server failed while serving.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The stores and services a console is composed of, opened by
/// [`open_stores`]. Tests and embedders may replace any of them before
/// [`compose`].
#[derive(Debug, Clone)]
pub struct Stores {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// Idempotency keys.
    pub idempotency: Arc<DynIdempotencyStore>,
    /// Rate-limit buckets.
    pub rate_limiter: Arc<DynRateLimiter>,
    /// The audit trail.
    pub audit: Arc<DynAuditStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// Who may call the operator endpoints.
    pub operators: OperatorTokens,
    /// The keys that sign cursors.
    pub cursor_keys: CursorKeys,
    /// Where "now" comes from.
    pub clock: Arc<DynClock>,
    /// Whether the idempotency store, the chat index and the audit trail
    /// keep their tables in one SQLite file, whose synced writes take
    /// every earlier write of the file to disk with them. Then a send's
    /// exchange and event are only committed, and its completed key (synced,
    /// and written after them) makes all three durable before the answer;
    /// a chat is made durable by its synced `chat.create` event. Whoever
    /// replaces one of these stores must clear it.
    pub one_sqlite_file: bool,
}

/// Opens every backend named by `settings` and composes the state.
///
/// # Errors
///
/// [`StartError`] when a backend cannot be opened.
pub async fn build_state(settings: &Settings, logger: Logger) -> Result<AppState, StartError> {
    let stores = open_stores(settings, Arc::new(SystemClock), &logger).await?;
    Ok(compose(settings, stores, logger))
}

/// Opens every backend named by `settings`, on `clock`.
///
/// # Errors
///
/// [`StartError`] when a backend cannot be opened.
pub async fn open_stores(
    settings: &Settings,
    clock: Arc<DynClock>,
    logger: &Logger,
) -> Result<Stores, StartError> {
    let data_dir_error = |source| StartError::DataDir {
        path: settings.data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&settings.data_dir).map_err(data_dir_error)?;

    for name in &settings.unknown_variables {
        warn!(logger, "unknown setting ignored; is it misspelt?"; "variable" => name.as_str());
    }

    let operators: OperatorTokens = match &settings.operator_tokens {
        Some(tokens) => tokens.clone(),
        None => {
            let (tokens, path) = dev_tokens(&settings.data_dir).map_err(data_dir_error)?;
            warn!(
                logger,
                "SOFIIA_OPERATOR_TOKENS is unset: using a generated development token for operator `dev`; never run production like this";
                "token_file" => path.display().to_string(),
            );
            tokens
        }
    };

    let cursor_keys = match &settings.cursor_keys {
        Some(keys) => keys.clone(),
        None => {
            let (keys, path) = generated_cursor_keys(&settings.data_dir).map_err(data_dir_error)?;
            info!(
                logger,
                "SOFIIA_CURSOR_SECRET is unset: cursors are signed with a key generated into the data dir; instances that page each other's lists need a shared SOFIIA_CURSOR_SECRET";
                "key_file" => path.display().to_string(),
            );
            keys
        }
    };

    // One multiplexed connection for every Redis backend, opened before
    // them; it connects on first use, so a Redis that is down at start makes
    // the readiness probe fail, not the start.
    let redis = if settings.uses_redis() {
        let conn = redis_connection(settings)?;
        info!(logger, "redis backends enabled";
            "server" => conn.server(), "prefix" => settings.redis_prefix.as_str());
        Some(conn)
    } else {
        None
    };
    let redis_for = |what: &str| {
        redis
            .clone()
            .ok_or_else(|| StartError::Redis(format!("the redis {what} needs a redis connection")))
    };

    // One pool for every PostgreSQL backend; opening a store migrates its
    // tables, so PostgreSQL must answer at start.
    let postgres = if settings.uses_postgres() {
        let pool =
            PostgresPool::open(&settings.postgres_url, PoolOptions::default()).map_err(|e| {
                StartError::Postgres {
                    server: sofiia_postgres_support::server_of(&settings.postgres_url),
                    source: Box::new(e),
                }
            })?;
        info!(logger, "postgres backends enabled"; "server" => pool.server());
        Some(pool)
    } else {
        None
    };
    let postgres_for = |what: &str| {
        postgres.clone().ok_or_else(|| StartError::Postgres {
            server: sofiia_postgres_support::server_of(&settings.postgres_url),
            source: format!("the postgres {what} needs a pool").into(),
        })
    };
    let postgres_error = |pool: &PostgresPool, e: BoxError| StartError::Postgres {
        server: pool.server().to_owned(),
        source: e,
    };

    let mut files = SqliteFiles::new(&settings.data_dir);
    let one_sqlite_file = settings.audit_backend == AuditBackend::Sqlite
        && settings.chat_index_backend == ChatIndexBackend::Sqlite
        && settings.idempotency_backend == IdempotencyBackend::Sqlite
        && [CHAT_INDEX_DB, IDEMPOTENCY_DB].iter().all(|own| {
            sqlite_file(&settings.data_dir, own) == sqlite_file(&settings.data_dir, AUDIT_DB)
        });
    let chat_index: Arc<DynChatIndexStore> = match settings.chat_index_backend {
        ChatIndexBackend::Redis => {
            info!(logger, "chat index: redis; shared by every instance on it"; "prefix" => settings.redis_prefix.as_str());
            Arc::new(RedisChatIndex::new(
                redis_for("chat index")?,
                settings.redis_prefix.clone(),
            ))
        }
        ChatIndexBackend::Sqlite => {
            let db = files.open(CHAT_INDEX_DB).await?;
            info!(logger, "chat index: sqlite"; "path" => db.path().display().to_string());
            let durability = if one_sqlite_file {
                Durability::Committed
            } else {
                Durability::Synced
            };
            Arc::new(
                SqliteChatIndex::in_database(&db)
                    .await?
                    .with_durability(durability),
            )
        }
        ChatIndexBackend::InMemory => {
            warn!(logger, "chat index: inmemory; chats are lost on restart");
            Arc::new(MemoryChatIndex::new())
        }
        ChatIndexBackend::Postgres => {
            let pool = postgres_for("chat index")?;
            info!(logger, "chat index: postgres; shared by every instance on it"; "server" => pool.server());
            Arc::new(
                PostgresChatIndex::open(pool.clone())
                    .await
                    .map_err(|e| postgres_error(&pool, Box::new(e)))?,
            )
        }
    };

    let router: Arc<DynNodeRouter> = match &settings.nodes {
        Some(nodes) => {
            info!(
                logger, "nodes configured";
                "nodes" => nodes.nodes().iter().map(|n| n.as_str()).collect::<Vec<_>>().join(","),
                "default_node" => nodes.default_node().as_str(),
            );
            Arc::new(Instrumented::new(
                HttpRouter::new(nodes.clone(), settings.infer_timeout)?
                    .with_first_byte_timeout(settings.first_byte_timeout)?
                    .with_idle_timeout(settings.idle_timeout)?,
            ))
        }
        None => {
            warn!(
                logger,
                "SOFIIA_NODES is unset: every send is answered by the built-in local echo node, not by Sofiia; set SOFIIA_NODES=NODA1=http://host:port,... for real inference";
                "node" => EchoRouter::NODE,
            );
            Arc::new(Instrumented::new(EchoRouter::new()))
        }
    };

    let idempotency: Arc<DynIdempotencyStore> = match settings.idempotency_backend {
        IdempotencyBackend::Redis => Arc::new(RedisIdempotencyStore::new(
            redis_for("idempotency store")?,
            settings.redis_prefix.clone(),
        )),
        IdempotencyBackend::Sqlite => {
            let db = files.open(IDEMPOTENCY_DB).await?;
            info!(logger, "idempotency: sqlite; a completed send is replayed after a restart or a crash"; "path" => db.path().display().to_string());
            Arc::new(SqliteIdempotencyStore::in_database(&db, clock.clone()).await?)
        }
        IdempotencyBackend::InMemory => {
            warn!(
                logger,
                "idempotency: inmemory; keys are lost on restart and may be evicted when full, after which a retried send runs again";
                "capacity" => settings.idempotency_capacity,
                "max_bytes" => settings.idempotency_memory_bytes,
            );
            Arc::new(
                MemoryIdempotencyStore::new(clock.clone(), settings.idempotency_capacity)
                    .with_max_bytes(settings.idempotency_memory_bytes),
            )
        }
    };

    let rate_limiter: Arc<DynRateLimiter> = match settings.rate_limit_backend {
        SharedBackend::Redis => Arc::new(RedisRateLimiter::new(
            redis_for("rate limiter")?,
            settings.redis_prefix.clone(),
        )),
        SharedBackend::InMemory => {
            info!(logger, "rate limits: inmemory; quotas are per instance");
            Arc::new(MemoryRateLimiter::new(clock.clone(), RATE_LIMIT_CAPACITY))
        }
    };

    let audit: Arc<DynAuditStore> = match settings.audit_backend {
        AuditBackend::Sqlite => {
            let audit_db = files.open(AUDIT_DB).await?;
            info!(logger, "audit store: sqlite"; "path" => audit_db.path().display().to_string());
            // The console owns its audit file: a file made before incremental
            // vacuum is converted here, once, before anyone is served.
            Arc::new(
                SqliteAuditStore::in_database(
                    &audit_db,
                    sofiia_audit_store::SqliteOptions::default().with_vacuum_conversion(true),
                )
                .await?,
            )
        }
        AuditBackend::Postgres => {
            let pool = postgres_for("audit store")?;
            info!(logger, "audit store: postgres; one trail shared by every instance on it"; "server" => pool.server());
            Arc::new(
                PostgresAuditStore::open_with(
                    pool.clone(),
                    PostgresOptions::default().with_clock(clock.clone()),
                )
                .await
                .map_err(|e| postgres_error(&pool, Box::new(e)))?,
            )
        }
    };
    if settings.audit_keys.is_empty() {
        warn!(
            logger,
            "SOFIIA_AUDIT_KEYS is unset: /api/audit answers 401 to everyone until a key is configured"
        );
    }
    Ok(Stores {
        chat_index,
        idempotency,
        rate_limiter,
        audit,
        router,
        operators,
        cursor_keys,
        clock,
        one_sqlite_file,
    })
}

/// How long a lease on a key lasts beyond the slowest send's answer: the
/// holder renews it while it stores, so it only matters after a crash,
/// when it is how long until a retry may resume the send.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Composes the state over `stores`. Must run on the tokio runtime that
/// will run the sends.
pub fn compose(settings: &Settings, stores: Stores, logger: Logger) -> AppState {
    let lease_ttl =
        Sender::answer_budget(settings.infer_timeout, settings.store_timeout) + LEASE_MARGIN;
    let idempotency = Idempotency::new(
        stores.idempotency.clone(),
        lease_ttl,
        settings.idempotency_ttl,
    );
    let auditor = Auditor::new(
        stores.audit.clone(),
        stores.clock.clone(),
        logger.clone(),
        settings.store_timeout,
    );
    let sender = Sender::new(SendParts {
        idempotency: idempotency.clone(),
        rate_limiter: stores.rate_limiter.clone(),
        quotas: Quotas {
            chat: settings.rate_limit_chat,
            operator: settings.rate_limit_operator,
            fail_mode: settings.rate_limit_fail_mode,
        },
        chat_index: stores.chat_index.clone(),
        router: stores.router.clone(),
        auditor: auditor.clone(),
        clock: stores.clock.clone(),
        logger: logger.clone(),
        store_timeout: settings.store_timeout,
        check_before_node: remote_stores(settings),
        events_made_durable_by_key: stores.one_sqlite_file,
        attach_wait: settings.attach_wait,
        failure_answer: crate::problem::stored_send_failure,
    });

    let metrics = metrics_handle();
    // Present from the start, so dashboards and alerts see a zero, not a gap.
    metrics::counter!(crate::telemetry::AUDIT_WRITE_FAILURES).increment(0);
    metrics::counter!(sofiia_idempotency::EVICTIONS_METRIC).increment(0);
    metrics::gauge!(
        "sofiia_build_info",
        "version" => VERSION,
        "git_sha" => GIT_SHA,
    )
    .set(1.0);

    let readiness = Arc::new(Readiness::new(Probed {
        chat_index: stores.chat_index.clone(),
        idempotency: stores.idempotency.clone(),
        rate_limiter: stores.rate_limiter.clone(),
        audit: stores.audit.clone(),
        router: stores.router.clone(),
        backends: Backends {
            chat_index: settings.chat_index_backend.as_str(),
            idempotency: settings.idempotency_backend.as_str(),
            rate_limiter: settings.rate_limit_backend.as_str(),
            audit: settings.audit_backend.as_str(),
        },
    }));

    let openapi = routes::openapi::document(stores.router.nodes());
    let openapi = actix_web::web::Bytes::from(serde_json::to_vec(&openapi).unwrap_or_default());

    AppState {
        chat_index: stores.chat_index,
        router: stores.router,
        idempotency,
        sender,
        auditor,
        audit_keys: settings.audit_keys.clone(),
        cursor_keys: stores.cursor_keys,
        denials: Arc::new(Denials::new(settings.auth_denial_limit)),
        clock: stores.clock,
        operators: stores.operators,
        readiness,
        logger,
        metrics,
        sse_keep_alive: settings.sse_keep_alive,
        openapi,
    }
}

/// The stores a send asks before its node call (see
/// [`SendParts::check_before_node`]), one question per server: every
/// PostgreSQL store shares one pool, and every Redis backend one
/// connection, which the send's key reservation has just used when the
/// keys are in Redis too. On a Redis Cluster the key and the chat index
/// live on different primaries, so the index is asked all the same.
fn remote_stores(settings: &Settings) -> RemoteStores {
    let chat_index = match settings.chat_index_backend {
        ChatIndexBackend::Postgres => true,
        ChatIndexBackend::Redis => {
            settings.idempotency_backend != IdempotencyBackend::Redis
                || settings.redis_cluster_nodes.is_some()
        }
        ChatIndexBackend::Sqlite | ChatIndexBackend::InMemory => false,
    };
    let audit = settings.audit_backend == AuditBackend::Postgres
        && settings.chat_index_backend != ChatIndexBackend::Postgres;
    RemoteStores { chat_index, audit }
}

/// The file in the data dir that every SQLite store keeps its tables in:
/// the audit trail always, the idempotency keys and the chat index when
/// their backend is `sqlite`. Their writes share its transactions.
pub const DATABASE_FILE: &str = "sofiia.db";

/// The audit store's own file of earlier releases; see [`sqlite_file`].
pub const AUDIT_DB: &str = "audit.db";

/// The SQLite chat index's own file of earlier releases; see [`sqlite_file`].
pub const CHAT_INDEX_DB: &str = "chat-index.db";

/// The SQLite idempotency store's own file of earlier releases; see
/// [`sqlite_file`].
pub const IDEMPOTENCY_DB: &str = "idempotency.db";

/// The file a SQLite store keeps its tables in: its own file of an earlier
/// release (`own`, one of [`AUDIT_DB`], [`CHAT_INDEX_DB`] and
/// [`IDEMPOTENCY_DB`]) if the data dir has it, so that nothing it holds is
/// left behind; else [`DATABASE_FILE`], shared with the other stores.
pub fn sqlite_file(data_dir: &Path, own: &str) -> PathBuf {
    let earlier = data_dir.join(own);
    if earlier.exists() {
        earlier
    } else {
        data_dir.join(DATABASE_FILE)
    }
}

/// The SQLite files of a data dir, each opened once however many stores
/// keep their tables in it.
struct SqliteFiles<'a> {
    data_dir: &'a Path,
    open: Vec<Database>,
}

impl<'a> SqliteFiles<'a> {
    fn new(data_dir: &'a Path) -> Self {
        Self {
            data_dir,
            open: Vec::new(),
        }
    }

    /// The file of the store whose own file was `own` (see [`sqlite_file`]).
    async fn open(&mut self, own: &str) -> Result<Database, StartError> {
        let path = sqlite_file(self.data_dir, own);
        if let Some(db) = self.open.iter().find(|db| db.path() == path) {
            return Ok(db.clone());
        }
        let db = Database::open(&path, DatabaseOptions::default())
            .await
            .map_err(|source| StartError::Database {
                path: path.display().to_string(),
                source,
            })?;
        self.open.push(db.clone());
        Ok(db)
    }
}

/// How often expired idempotency keys are removed from a store that does
/// not expire them itself, and how many per round.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
const PURGE_BATCH: usize = 10_000;

/// Most rate-limit buckets the in-memory limiter keeps; idle buckets are
/// dropped first, and a dropped idle bucket is indistinguishable from a new one.
const RATE_LIMIT_CAPACITY: usize = 100_000;

/// The one connection every Redis backend shares, to `SOFIIA_REDIS_URL` or
/// to the Redis Cluster of `SOFIIA_REDIS_CLUSTER_NODES`: concurrent calls are
/// pipelined on it, and it is opened again by itself after Redis comes
/// back. Every call carries the store deadline, so an unreachable Redis
/// answers 503 quickly instead of holding requests.
///
/// # Errors
///
/// [`StartError::Redis`] for a URL or node list that is not a Redis
/// address.
pub fn redis_connection(
    settings: &Settings,
) -> Result<sofiia_redis_support::RedisConnection, StartError> {
    match &settings.redis_cluster_nodes {
        Some(nodes) => sofiia_redis_support::RedisConnection::open_cluster(nodes),
        None => sofiia_redis_support::RedisConnection::open(&settings.redis_url),
    }
    .map_err(|e| StartError::Redis(e.to_string()))
}

/// The actix-web application over `state`: every route, the request
/// middleware and the problem+json fallback for unknown paths.
pub fn build_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .configure(routes::configure)
        .default_service(web::to(routes::not_found))
        .wrap(from_fn(request_middleware))
}

/// A console serving on a bound address.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::AbortHandle>,
    sender: Sender,
    denials: Arc<Denials>,
    auditor: Auditor,
    shutdown_timeout: Duration,
    logger: Logger,
}

impl RunningServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully: stops accepting connections, lets requests in
    /// flight finish and every send in flight be stored (its client gone or
    /// not), within the shutdown timeout; then returns.
    ///
    /// # Errors
    ///
    /// The server's I/O error, if it failed.
    pub async fn stop(self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        info!(
            self.logger, "stopping: no new connections; letting requests and sends in flight finish";
            "sends_in_flight" => self.sender.running(),
            "shutdown_timeout_secs" => self.shutdown_timeout.as_secs(),
        );
        let (_, unfinished) = tokio::join!(self.handle.stop(true), self.sender.drain(deadline));
        for task in &self.background {
            task.abort();
        }
        // Refusals counted but not written yet go into the trail now.
        write_denials(&self.denials, &self.auditor, true).await;
        if unfinished > 0 {
            error!(
                self.logger,
                "the shutdown timeout passed with sends still running; they stop here, and a retry with their key resumes or reruns them";
                "sends_cut" => unfinished,
            );
        }
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully (see
    /// [`stop`](Self::stop)). A second signal during the stop stops at once.
    ///
    /// # Errors
    ///
    /// The server's I/O error, if it failed.
    pub async fn wait(mut self) -> std::io::Result<()> {
        tokio::select! {
            result = &mut self.task => {
                for task in &self.background {
                    task.abort();
                }
                return result.map_err(std::io::Error::other)?;
            }
            signal = shutdown_signal() => {
                info!(self.logger, "signal received"; "signal" => signal);
            }
        }
        let logger = self.logger.clone();
        let handle = self.handle.clone();
        tokio::select! {
            result = self.stop() => result,
            signal = shutdown_signal() => {
                warn!(logger, "second signal: stopping now, without waiting for sends in flight"; "signal" => signal);
                handle.stop(false).await;
                Ok(())
            }
        }
    }
}

/// The next SIGTERM or SIGINT, by name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: never resolves, the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// How often refusals counted in windows that ended are written.
const DENIALS_INTERVAL: Duration = Duration::from_secs(5);

/// Writes the aggregate `auth.denied` events of windows that ended (of
/// every window, with `all`).
async fn write_denials(denials: &Denials, auditor: &Auditor, all: bool) {
    for aggregate in denials.drain(std::time::Instant::now(), all) {
        let meta = RequestMeta {
            source_ip: aggregate.source,
            ..RequestMeta::default()
        };
        // A failure is counted and logged by the auditor; the counts are
        // lost then, as the refusals themselves were answered already.
        let _ = auditor
            .record(&meta, crate::auth::aggregate_event(&aggregate))
            .await;
    }
}

/// Writes refusals every [`DENIALS_INTERVAL`], until aborted.
async fn run_denials_writer(denials: Arc<Denials>, auditor: Auditor) {
    let mut interval = tokio::time::interval(DENIALS_INTERVAL);
    loop {
        interval.tick().await;
        write_denials(&denials, &auditor, false).await;
    }
}

/// Removes expired idempotency keys every [`PURGE_INTERVAL`], until aborted.
async fn run_janitor(idempotency: Idempotency, logger: Logger) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        interval.tick().await;
        loop {
            match idempotency.store().purge_expired(PURGE_BATCH).await {
                Ok(n) if n as usize >= PURGE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(logger, "could not remove expired idempotency keys"; "error" => error_chain(&e));
                    break;
                }
            }
        }
    }
}

/// Binds `settings.bind` and serves `state` on the current runtime.
///
/// The server does not handle signals itself: [`RunningServer::wait`] does,
/// so that a stop waits for sends as well as connections.
///
/// # Errors
///
/// [`StartError::Bind`] if the address cannot be bound.
pub fn start(settings: &Settings, state: AppState) -> Result<RunningServer, StartError> {
    let bind_error = |source| StartError::Bind {
        addr: settings.bind,
        source,
    };
    let listener = TcpListener::bind(settings.bind).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let logger = state.logger.clone();
    let sender = state.sender.clone();
    let denials = state.denials.clone();
    let auditor = state.auditor.clone();
    let background = vec![
        tokio::spawn(crate::health::run_prober(state.readiness.clone())).abort_handle(),
        tokio::spawn(run_janitor(state.idempotency.clone(), logger.clone())).abort_handle(),
        tokio::spawn(run_denials_writer(denials.clone(), auditor.clone())).abort_handle(),
    ];
    let workers = settings
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    // Limits a reverse proxy would otherwise have to supply: a client that
    // sends its head slowly is cut off (408), idle connections close, and
    // connections are capped (actix-web counts them per worker). Request
    // heads are capped by actix-web itself: 96 headers, 128 KiB (431).
    let server = HttpServer::new(move || build_app(state.clone()))
        .disable_signals()
        .workers(workers)
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .client_request_timeout(settings.client_request_timeout)
        .keep_alive(if settings.keep_alive.is_zero() {
            actix_web::http::KeepAlive::Disabled
        } else {
            actix_web::http::KeepAlive::Timeout(settings.keep_alive)
        })
        .max_connections(settings.max_connections.div_ceil(workers).max(1))
        // Each event of a streamed reply leaves when written: with Nagle's
        // algorithm a small event waits for the client's delayed ACK.
        .tcp_nodelay(true)
        .listen(listener)
        .map_err(bind_error)?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    info!(logger, "listening"; "addr" => addr.to_string(), "version" => VERSION, "git_sha" => GIT_SHA);
    Ok(RunningServer {
        addr,
        handle,
        task,
        background,
        sender,
        denials,
        auditor,
        shutdown_timeout: settings.shutdown_timeout,
        logger,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_send_asks_each_remote_server_once_before_its_node() {
        let remote = |vars: &[(&str, &str)]| {
            let all: BTreeMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let r = remote_stores(&Settings::from_vars(&all).unwrap());
            (r.chat_index, r.audit)
        };
        assert_eq!(remote(&[]), (false, false), "embedded defaults");
        let pg = [
            ("SOFIIA_AUDIT_BACKEND", "postgres"),
            ("SOFIIA_CHAT_INDEX_BACKEND", "postgres"),
        ];
        assert_eq!(remote(&pg), (true, false), "one pool, one question");
        assert_eq!(remote(&pg[..1]), (false, true));
        assert_eq!(
            remote(&[("SOFIIA_CHAT_INDEX_BACKEND", "redis")]),
            (true, false)
        );
        // The key's reservation has just used the one Redis connection.
        assert_eq!(
            remote(&[
                ("SOFIIA_CHAT_INDEX_BACKEND", "redis"),
                ("SOFIIA_IDEMPOTENCY_BACKEND", "redis"),
            ]),
            (false, false)
        );
        // Not on a cluster: the index's slot has a primary of its own.
        assert_eq!(
            remote(&[
                ("SOFIIA_CHAT_INDEX_BACKEND", "redis"),
                ("SOFIIA_IDEMPOTENCY_BACKEND", "redis"),
                ("SOFIIA_REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
            ]),
            (true, false)
        );
    }

    async fn open_in(dir: &Path, vars: &[(&str, &str)]) -> Stores {
        let mut all: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("SOFIIA_DATA_DIR".to_owned(), dir.display().to_string());
        let settings = Settings::from_vars(&all).unwrap();
        let logger = Logger::root(slog::Discard, slog::o!());
        open_stores(&settings, Arc::new(SystemClock), &logger)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_embedded_stores_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let stores = open_in(dir.path(), &[]).await;
        assert!(stores.one_sqlite_file);
        assert!(dir.path().join(DATABASE_FILE).exists());
        for own in [AUDIT_DB, CHAT_INDEX_DB, IDEMPOTENCY_DB] {
            assert!(!dir.path().join(own).exists(), "{own}");
            assert_eq!(sqlite_file(dir.path(), own), dir.path().join(DATABASE_FILE));
        }
        let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        for store in ["audit", "chat_index", "idempotency"] {
            assert_eq!(
                sofiia_sqlite_support::schema_version(&conn, store).unwrap(),
                Some(1),
                "{store}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_with_a_file_of_an_earlier_release_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        // An earlier release's audit trail (an empty file is an empty
        // database): the trail stays there, the others share the new file.
        std::fs::write(dir.path().join(AUDIT_DB), b"").unwrap();
        let stores = open_in(dir.path(), &[]).await;
        assert!(!stores.one_sqlite_file, "the keys cannot sync the trail");
        assert_eq!(sqlite_file(dir.path(), AUDIT_DB), dir.path().join(AUDIT_DB));
        let conn = rusqlite::Connection::open(dir.path().join(AUDIT_DB)).unwrap();
        assert_eq!(
            sofiia_sqlite_support::schema_version(&conn, "audit").unwrap(),
            Some(1)
        );
        assert_eq!(
            sofiia_sqlite_support::schema_version(&conn, "chat_index").unwrap(),
            None
        );
        assert!(dir.path().join(DATABASE_FILE).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_elsewhere_leave_every_write_synced() {
        let dir = tempfile::tempdir().unwrap();
        let stores = open_in(dir.path(), &[("SOFIIA_IDEMPOTENCY_BACKEND", "inmemory")]).await;
        assert!(!stores.one_sqlite_file);
        let stores = open_in(dir.path(), &[("SOFIIA_CHAT_INDEX_BACKEND", "inmemory")]).await;
        assert!(!stores.one_sqlite_file);
    }
}
