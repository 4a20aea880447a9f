//! Composition: settings in, a running HTTP server out.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use slog::{Logger, info, warn};
use sofiia_chat_index::{DynChatIndexStore, MemoryChatIndex, RedisChatIndex, SqliteChatIndex};
use std::time::Duration;

use sofiia_audit_store::{DynAuditStore, SqliteAuditStore};
use sofiia_core_domain::{DynClock, SystemClock};
use sofiia_idempotency::{
    DynIdempotencyStore, Idempotency, MemoryIdempotencyStore, RedisIdempotencyStore,
};
use sofiia_ratelimit::{DynRateLimiter, MemoryRateLimiter, RedisRateLimiter};
use sofiia_router_client::{DynNodeRouter, EchoRouter, HttpRouter, Instrumented};

use crate::auth::{OperatorTokens, dev_tokens};
use crate::config::{ChatIndexBackend, Settings, SharedBackend};
use crate::routes;
use crate::state::{AppState, Backends, Quotas};
use crate::telemetry::{metrics_handle, request_middleware};

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
    /// The Redis pool could not be built.
    #[error("redis: {0}")]
    Redis(String),
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

/// Opens every backend named by `settings` and composes the state.
///
/// # Errors
///
/// [`StartError`] when a backend cannot be opened.
pub async fn build_state(settings: &Settings, logger: Logger) -> Result<AppState, StartError> {
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

    // One pool for every Redis backend, opened before them; connections are
    // made on first use, so a Redis that is down at start makes the
    // readiness probe fail, not the start.
    let redis = if settings.uses_redis() {
        info!(logger, "redis backends enabled"; "prefix" => settings.redis_prefix.as_str());
        Some(redis_pool(&settings.redis_url)?)
    } else {
        None
    };

    let chat_index: Arc<DynChatIndexStore> = match (&redis, settings.chat_index_backend) {
        (Some(pool), ChatIndexBackend::Redis) => {
            info!(logger, "chat index: redis; shared by every instance on it"; "prefix" => settings.redis_prefix.as_str());
            Arc::new(RedisChatIndex::new(
                pool.clone(),
                settings.redis_prefix.clone(),
            ))
        }
        (None, ChatIndexBackend::Redis) => {
            // `uses_redis` covers the Redis chat index, so this cannot be.
            return Err(StartError::Redis(
                "the redis chat index needs a redis pool".to_owned(),
            ));
        }
        (_, ChatIndexBackend::Sqlite) => {
            let path = settings.data_dir.join(CHAT_INDEX_DB);
            info!(logger, "chat index: sqlite"; "path" => path.display().to_string());
            Arc::new(SqliteChatIndex::open(&path).await?)
        }
        (_, ChatIndexBackend::InMemory) => {
            warn!(logger, "chat index: inmemory; chats are lost on restart");
            Arc::new(MemoryChatIndex::new())
        }
    };

    let router: Arc<DynNodeRouter> = match &settings.nodes {
        Some(nodes) => {
            info!(
                logger, "nodes configured";
                "nodes" => nodes.nodes().iter().map(|n| n.as_str()).collect::<Vec<_>>().join(","),
                "default_node" => nodes.default_node().as_str(),
            );
            Arc::new(Instrumented::new(HttpRouter::new(
                nodes.clone(),
                settings.infer_timeout,
            )?))
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

    let clock: Arc<DynClock> = Arc::new(SystemClock);

    let idempotency_store: Arc<DynIdempotencyStore> = match (&redis, settings.idempotency_backend) {
        (Some(pool), SharedBackend::Redis) => Arc::new(RedisIdempotencyStore::new(
            pool.clone(),
            settings.redis_prefix.clone(),
        )),
        _ => {
            info!(logger, "idempotency: inmemory; keys are not shared between instances"; "capacity" => settings.idempotency_capacity);
            Arc::new(MemoryIdempotencyStore::new(
                clock.clone(),
                settings.idempotency_capacity,
            ))
        }
    };
    // A lease outlives the longest send: the infer timeout plus time to
    // store, audit and complete.
    let lease_ttl = settings.infer_timeout + Duration::from_secs(60);
    let idempotency = Idempotency::new(idempotency_store, lease_ttl, settings.idempotency_ttl);

    let rate_limiter: Arc<DynRateLimiter> = match (&redis, settings.rate_limit_backend) {
        (Some(pool), SharedBackend::Redis) => Arc::new(RedisRateLimiter::new(
            pool.clone(),
            settings.redis_prefix.clone(),
        )),
        _ => {
            info!(logger, "rate limits: inmemory; quotas are per instance");
            Arc::new(MemoryRateLimiter::new(clock.clone(), RATE_LIMIT_CAPACITY))
        }
    };

    let audit_path = settings.data_dir.join(AUDIT_DB);
    info!(logger, "audit store: sqlite"; "path" => audit_path.display().to_string());
    let audit: Arc<DynAuditStore> = Arc::new(SqliteAuditStore::open(&audit_path).await?);
    if settings.audit_keys.is_empty() {
        warn!(
            logger,
            "SOFIIA_AUDIT_KEYS is unset: /api/audit answers 401 to everyone until a key is configured"
        );
    }
    let metrics = metrics_handle();
    // Present from the start, so dashboards and alerts see a zero, not a gap.
    metrics::counter!(crate::audit::WRITE_FAILURES).increment(0);
    metrics::gauge!(
        "sofiia_build_info",
        "version" => routes::VERSION,
        "git_sha" => routes::GIT_SHA,
    )
    .set(1.0);

    Ok(AppState {
        chat_index,
        router,
        idempotency,
        rate_limiter,
        quotas: Quotas {
            chat: settings.rate_limit_chat,
            operator: settings.rate_limit_operator,
            fail_mode: settings.rate_limit_fail_mode,
        },
        audit,
        audit_keys: settings.audit_keys.clone(),
        clock,
        operators,
        backends: Backends {
            chat_index: settings.chat_index_backend.as_str(),
            idempotency: settings.idempotency_backend.as_str(),
            rate_limiter: settings.rate_limit_backend.as_str(),
            audit: "sqlite",
        },
        logger,
        metrics,
    })
}

/// The audit store's file in the data dir.
pub const AUDIT_DB: &str = "audit.db";

/// The SQLite chat index's file in the data dir.
pub const CHAT_INDEX_DB: &str = "chat-index.db";

/// Most rate-limit buckets the in-memory limiter keeps; idle buckets are
/// dropped first, and a dropped idle bucket is indistinguishable from a new one.
const RATE_LIMIT_CAPACITY: usize = 100_000;

/// One pool for every Redis backend, with timeouts short enough that an
/// unreachable Redis answers 503 quickly instead of holding requests.
///
/// # Errors
///
/// [`StartError::Redis`] for a URL the pool cannot use.
pub fn redis_pool(url: &str) -> Result<deadpool_redis::Pool, StartError> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool = deadpool_redis::PoolConfig::new(64);
    pool.timeouts.wait = Some(Duration::from_secs(2));
    pool.timeouts.create = Some(Duration::from_secs(2));
    pool.timeouts.recycle = Some(Duration::from_secs(1));
    config.pool = Some(pool);
    config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
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
    prober: tokio::task::AbortHandle,
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

    /// Stops accepting, lets requests in flight finish, and waits.
    ///
    /// # Errors
    ///
    /// The server's I/O error, if it failed.
    pub async fn stop(self) -> std::io::Result<()> {
        self.prober.abort();
        self.handle.stop(true).await;
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the server stops (on SIGTERM or SIGINT).
    ///
    /// # Errors
    ///
    /// The server's I/O error, if it failed.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.map_err(std::io::Error::other)?;
        self.prober.abort();
        result
    }
}

/// Binds `settings.bind` and serves `state` on the current runtime.
///
/// The server stops gracefully on SIGTERM or SIGINT, waiting up to
/// `settings.shutdown_timeout` for requests in flight.
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
    let prober = tokio::spawn(crate::health::run_prober(state.clone())).abort_handle();
    let mut server = HttpServer::new(move || build_app(state.clone()))
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .listen(listener)
        .map_err(bind_error)?;
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    info!(logger, "listening"; "addr" => addr.to_string(), "version" => routes::VERSION, "git_sha" => routes::GIT_SHA);
    Ok(RunningServer {
        addr,
        handle,
        task,
        prober,
    })
}
