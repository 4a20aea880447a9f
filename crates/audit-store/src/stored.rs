//! An event as a backend stores it, validated into an [`AuditEvent`] in one
//! place, so that every backend reads its rows by the same rules.

use std::error::Error as StdError;

use serde_json::{Map, Value};
use sofiia_core_domain::Timestamp;

use crate::{AuditEvent, NewEvent, Outcome};

/// An event row as stored, its strings already as recorded, before
/// validation.
pub(crate) struct StoredEvent {
    pub(crate) id: i64,
    pub(crate) ts: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) outcome: String,
    pub(crate) status: Option<i64>,
    pub(crate) request_id: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) source_ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) details: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

/// A stored value that is not a valid part of an event: edited outside
/// this crate, or corrupt storage.
#[derive(Debug, thiserror::Error)]
#[error("a stored value of {table}.{column} is invalid")]
pub(crate) struct CorruptColumn {
    table: &'static str,
    column: &'static str,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl CorruptColumn {
    /// `table.column` holds an invalid value, for the reason `source` gives.
    pub(crate) fn new(
        table: &'static str,
        column: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            table,
            column,
            source: Some(source.into()),
        }
    }
}

impl StoredEvent {
    /// The event, if every stored value is valid; `table` names the
    /// backend's table in the error.
    pub(crate) fn into_event(self, table: &'static str) -> Result<AuditEvent, CorruptColumn> {
        let corrupt =
            |column| move |e: Box<dyn StdError + Send + Sync>| CorruptColumn::new(table, column, e);
        let outcome = match self.outcome.as_str() {
            "ok" => Outcome::Ok,
            "denied" => Outcome::Denied,
            "error" => Outcome::Error,
            _ => return Err(corrupt("outcome")("not ok, denied or error".into())),
        };
        let details: Map<String, Value> =
            serde_json::from_str(&self.details).map_err(|e| corrupt("details")(Box::new(e)))?;
        Ok(AuditEvent {
            id: u64::try_from(self.id).map_err(|e| corrupt("id")(Box::new(e)))?,
            event: NewEvent {
                ts: Timestamp::from_unix_millis(self.ts).map_err(|e| corrupt("ts")(Box::new(e)))?,
                actor: self.actor,
                action: self.action,
                target: self.target,
                outcome,
                status: self
                    .status
                    .map(u16::try_from)
                    .transpose()
                    .map_err(|e| corrupt("status")(Box::new(e)))?,
                request_id: self.request_id,
                node: self.node,
                source_ip: self.source_ip,
                user_agent: self.user_agent,
                details,
            },
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}
