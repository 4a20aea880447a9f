//! Writing the audit trail.
//!
//! Every operator action, every audit read and every authentication failure
//! becomes an event. An event that cannot be written within the store
//! deadline fails its action ([`AuditUnavailable`], answered 503) and
//! `sofiia_audit_write_failures_total` counts it, so nothing the console
//! answered as done is missing from the trail.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use slog::{Logger, warn};
use sofiia_audit_store::{AuditEvent, AuditQuery, DynAuditStore, NewEvent, Outcome};
use sofiia_core_domain::{DynClock, Page, PageLimit, Timestamp, error_chain};

use crate::request::RequestMeta;
use crate::telemetry::{AUDIT_EVENTS_WRITTEN, AUDIT_WRITE_FAILURES};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An event could not be written (or looked up) in time: the action it
/// records is refused.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail is unavailable")]
pub struct AuditUnavailable {
    #[source]
    source: BoxError,
}

/// One event about to be written.
#[derive(Debug, Clone)]
pub struct Event {
    actor: String,
    action: &'static str,
    target: String,
    outcome: Outcome,
    status: Option<u16>,
    node: Option<String>,
    details: Map<String, Value>,
}

impl Event {
    /// `actor` did `action` to `target`, ending in `outcome`.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            actor: actor.into(),
            action,
            target: target.into(),
            outcome,
            status: None,
            node: None,
            details: Map::new(),
        }
    }

    /// The HTTP status answered.
    #[must_use]
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The node involved.
    #[must_use]
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// A detail. Never message text, tokens or keys.
    #[must_use]
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// The action.
    pub fn action(&self) -> &'static str {
        self.action
    }
}

/// Writes events to the audit store, each within a deadline.
#[derive(Debug, Clone)]
pub struct Auditor {
    store: Arc<DynAuditStore>,
    clock: Arc<DynClock>,
    logger: Logger,
    deadline: Duration,
}

impl Auditor {
    /// Writes to `store`, stamping events by `clock`; a write that takes
    /// longer than `deadline` fails.
    pub fn new(
        store: Arc<DynAuditStore>,
        clock: Arc<DynClock>,
        logger: Logger,
        deadline: Duration,
    ) -> Self {
        Self {
            store,
            clock,
            logger,
            deadline,
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<DynAuditStore> {
        &self.store
    }

    /// Writes `event` about the request `meta` describes.
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when it could not be written within the
    /// deadline; it is counted and logged.
    pub async fn record(&self, meta: &RequestMeta, event: Event) -> Result<(), AuditUnavailable> {
        self.write(meta, event, false).await
    }

    /// [`record`](Self::record), answered once the event is committed,
    /// possibly before it is on disk (see
    /// [`AuditStore::append_committed`](sofiia_audit_store::AuditStore::append_committed)):
    /// for a caller whose next write to the same file is synced before it
    /// answers.
    ///
    /// # Errors
    ///
    /// As for [`record`](Self::record).
    pub async fn record_committed(
        &self,
        meta: &RequestMeta,
        event: Event,
    ) -> Result<(), AuditUnavailable> {
        self.write(meta, event, true).await
    }

    async fn write(
        &self,
        meta: &RequestMeta,
        event: Event,
        committed: bool,
    ) -> Result<(), AuditUnavailable> {
        let action = event.action;
        let new = NewEvent {
            ts: self.clock.now(),
            actor: event.actor,
            action: action.to_owned(),
            target: event.target,
            outcome: event.outcome,
            status: event.status,
            request_id: meta.request_id.clone(),
            node: event.node,
            source_ip: meta.source_ip.map(|ip| ip.to_string()),
            user_agent: meta.user_agent.clone(),
            details: event.details,
        };
        let append = async {
            if committed {
                self.store.append_committed(new).await
            } else {
                self.store.append(new).await
            }
        };
        match self.within(append).await {
            Ok(_) => {
                metrics::counter!(AUDIT_EVENTS_WRITTEN, "action" => action).increment(1);
                Ok(())
            }
            Err(source) => {
                metrics::counter!(AUDIT_WRITE_FAILURES).increment(1);
                warn!(
                    self.logger, "audit write failed; refusing the action";
                    "flow" => "audit",
                    "request_id" => meta.request_id.clone(),
                    "action" => action,
                    "error" => error_chain(&*source),
                );
                Err(AuditUnavailable { source })
            }
        }
    }

    /// A page of the trail, within the deadline.
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when it could not be read in time.
    pub async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>, AuditUnavailable> {
        self.within(self.store.read(query))
            .await
            .map_err(|source| AuditUnavailable { source })
    }

    /// Whether `actor` has an event of `action` since `since` whose
    /// `details` hold `key` = `value`. For finishing work a stopped process
    /// may have half done: an event it already wrote is not written twice.
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when the trail could not be read in time.
    pub async fn has_event(
        &self,
        actor: &str,
        action: &str,
        since: Timestamp,
        key: &str,
        value: &str,
    ) -> Result<bool, AuditUnavailable> {
        let mut query = AuditQuery {
            actor: Some(actor.to_owned()),
            action: Some(action.to_owned()),
            since: Some(since),
            limit: PageLimit::new(200).unwrap_or_default(),
            ..AuditQuery::default()
        };
        loop {
            let page = self.read(&query).await?;
            if page
                .items
                .iter()
                .any(|e| e.event.details.get(key).and_then(Value::as_str) == Some(value))
            {
                return Ok(true);
            }
            match page.items.last() {
                Some(last) if page.next.is_some() => query.before_id = Some(last.id),
                _ => return Ok(false),
            }
        }
    }

    async fn within<T, E>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, BoxError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Box::new(e)),
            Err(_) => Err(format!(
                "the audit store did not answer within {} ms",
                self.deadline.as_millis()
            )
            .into()),
        }
    }
}
