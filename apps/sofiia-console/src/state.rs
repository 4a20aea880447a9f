//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use slog::Logger;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_core_domain::{CursorKeys, DynClock};
use sofiia_idempotency::Idempotency;
use sofiia_router_client::DynNodeRouter;

use crate::auditor::Auditor;
use crate::credentials::{AuditKeys, OperatorTokens};
use crate::denials::Denials;
use crate::health::Readiness;
use crate::send::Sender;

/// The console's composed services. Built once at start by
/// [`crate::server::compose`] and shared by every worker.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// Idempotency keys of sends (for the removal of expired keys; sends
    /// use `sender`).
    pub idempotency: Idempotency,
    /// Runs sends.
    pub sender: Sender,
    /// Writes and reads the audit trail.
    pub auditor: Auditor,
    /// Keys accepted by `/api/audit`.
    pub audit_keys: AuditKeys,
    /// Keys that sign and verify cursors.
    pub cursor_keys: CursorKeys,
    /// Refused credentials, per source.
    pub denials: Arc<Denials>,
    /// Where "now" comes from.
    pub clock: Arc<DynClock>,
    /// Who may call the operator endpoints.
    pub operators: OperatorTokens,
    /// Readiness probes, cached.
    pub readiness: Arc<Readiness>,
    /// The JSON logger.
    pub logger: Logger,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// How long a streamed answer may stay silent before a keep-alive
    /// comment is sent.
    pub sse_keep_alive: std::time::Duration,
    /// `/api/openapi.json`, made once at start.
    pub openapi: actix_web::web::Bytes,
}
