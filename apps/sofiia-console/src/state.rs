//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use slog::Logger;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_core_domain::DynClock;
use sofiia_idempotency::Idempotency;
use sofiia_ratelimit::DynRateLimiter;
use sofiia_router_client::DynNodeRouter;

use crate::auditor::Auditor;
use crate::credentials::{AuditKeys, OperatorTokens};
use crate::send::Sender;

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
/// [`crate::server::compose`] and shared by every worker.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// Idempotency keys of sends (for readiness; sends use `sender`).
    pub idempotency: Idempotency,
    /// Send quotas (for readiness; sends use `sender`).
    pub rate_limiter: Arc<DynRateLimiter>,
    /// Runs sends.
    pub sender: Sender,
    /// Writes and reads the audit trail.
    pub auditor: Auditor,
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
