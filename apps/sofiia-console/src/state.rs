//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use slog::Logger;
use sofiia_audit_store::DynAuditStore;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_core_domain::DynClock;
use sofiia_idempotency::Idempotency;
use sofiia_ratelimit::{DynRateLimiter, Quota};
use sofiia_router_client::DynNodeRouter;

use crate::auth::{AuditKeys, OperatorTokens};
use crate::config::RateLimitFailMode;

/// The send quotas and what to do when the limiter is unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Per chat.
    pub chat: Quota,
    /// Per operator.
    pub operator: Quota,
    /// Closed (503) or open (unlimited) when the limiter is unreachable.
    pub fail_mode: RateLimitFailMode,
}

/// Which backend serves each store, as named in the configuration
/// (`sqlite`, `inmemory`, `redis`); reported by `/api/ready`.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// The chat index.
    pub chat_index: &'static str,
    /// Idempotency keys.
    pub idempotency: &'static str,
    /// Rate-limit buckets.
    pub rate_limiter: &'static str,
    /// The audit trail.
    pub audit: &'static str,
}

/// The console's composed services. Built once at start by
/// [`crate::server::build_state`] and shared by every worker.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// Idempotency keys of sends.
    pub idempotency: Idempotency,
    /// Send quotas.
    pub rate_limiter: Arc<DynRateLimiter>,
    /// The quotas it enforces.
    pub quotas: Quotas,
    /// The audit trail.
    pub audit: Arc<DynAuditStore>,
    /// Keys accepted by `/api/audit`.
    pub audit_keys: AuditKeys,
    /// Where "now" comes from.
    pub clock: Arc<DynClock>,
    /// Who may call the operator endpoints.
    pub operators: OperatorTokens,
    /// Which backend serves each store.
    pub backends: Backends,
    /// The JSON logger.
    pub logger: Logger,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}
