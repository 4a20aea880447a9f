//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use slog::Logger;
use sofiia_chat_index::DynChatIndexStore;
use sofiia_core_domain::DynClock;
use sofiia_router_client::DynNodeRouter;

use crate::auth::OperatorTokens;

/// The console's composed services. Built once at start by
/// [`crate::server::build_state`] and shared by every worker.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Chats and messages.
    pub chat_index: Arc<DynChatIndexStore>,
    /// The inference nodes.
    pub router: Arc<DynNodeRouter>,
    /// Where "now" comes from.
    pub clock: Arc<DynClock>,
    /// Who may call the operator endpoints.
    pub operators: OperatorTokens,
    /// The JSON logger.
    pub logger: Logger,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}
