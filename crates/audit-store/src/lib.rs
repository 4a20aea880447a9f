//! The audit trail: who did what, when, with which outcome.
//!
//! Every event is appended to a hash chain: each stores the hash of the one
//! before it (`prev_hash`) and its own `hash = sha256(prev_hash || canonical
//! event)`, so editing or deleting an event breaks the chain at that point
//! and [`AuditStore::verify`] names it. Retention pruning deletes the oldest
//! events and records an *anchor* (the hash the oldest kept event chains
//! from), so a pruned chain still verifies from its oldest kept event.
//!
//! An append returns only once the event is durable, so a caller can refuse
//! to answer an action it could not record.
//!
//! Backends: [`SqliteAuditStore`] (feature `sqlite`, on by default: one
//! file), [`PostgresAuditStore`] (feature `postgres`: one trail shared by
//! every instance on a database) and [`MemoryAuditStore`]. All pass the
//! behavioural suite in [`testing`].
//!
//! ```
//! use std::sync::Arc;
//! use sofiia_audit_store::{AuditQuery, AuditStore, DynAuditStore, NewEvent, Outcome, Verification};
//! use sofiia_core_domain::{Clock, ManualClock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # #[cfg(feature = "sqlite")] {
//! let dir = tempfile::tempdir()?;
//! let store: Arc<DynAuditStore> =
//!     Arc::new(sofiia_audit_store::SqliteAuditStore::open(dir.path().join("audit.sqlite3")).await?);
//! let clock = ManualClock::default();
//!
//! let stored = store
//!     .append(NewEvent {
//!         ts: clock.now(),
//!         actor: "alice".into(),
//!         action: "chat.create".into(),
//!         target: "incident-42".into(),
//!         outcome: Outcome::Ok,
//!         status: Some(201),
//!         request_id: Some("0b9e3f4c".into()),
//!         node: None,
//!         source_ip: Some("192.0.2.7".into()),
//!         user_agent: None,
//!         details: Default::default(),
//!     })
//!     .await?;
//! assert_eq!(stored.prev_hash, sofiia_audit_store::GENESIS_HASH);
//!
//! let page = store
//!     .read(&AuditQuery { actor: Some("alice".into()), ..AuditQuery::default() })
//!     .await?;
//! assert_eq!(page.items, vec![stored]);
//! assert_eq!(store.verify().await?, Verification::Intact { events: 1 });
//! # }
//! # Ok(())
//! # }
//! ```
//!
//! # The hash chain
//!
//! This section is the whole specification: a chain can be verified from it
//! alone, for example from the events `GET /api/audit` returns.
//!
//! **Canonical form.** The canonical form of an event is the
//! [RFC 8785](https://www.rfc-editor.org/rfc/rfc8785) (JSON Canonicalization
//! Scheme, JCS) serialisation, in UTF-8, of the JSON object holding exactly
//! these eleven members of the event's JSON: `ts`, `actor`, `action`,
//! `target`, `outcome`, `status`, `request_id`, `node`, `source_ip`,
//! `user_agent`, `details`. That is, the event's JSON without `id`,
//! `prev_hash` and `hash`. Spelled out:
//!
//! - no whitespace between tokens;
//! - the members of every object, the top-level one and any inside
//!   `details`, sorted by name compared as UTF-16 code units; so the
//!   top-level order is always `action`, `actor`, `details`, `node`,
//!   `outcome`, `request_id`, `source_ip`, `status`, `target`, `ts`,
//!   `user_agent`;
//! - every member present: an absent optional value is `null`; `details` is
//!   an object, possibly `{}`;
//! - `ts` is the string form of the time: RFC 3339 in UTC with exactly three
//!   fractional digits and `Z`, such as `"2026-01-01T00:00:00.000Z"`;
//!   `outcome` is `"ok"`, `"denied"` or `"error"`; `status` an integer;
//! - strings: `"` and `\` are escaped as `\"` and `\\`; U+0008, U+0009,
//!   U+000A, U+000C and U+000D as `\b`, `\t`, `\n`, `\f`, `\r`; the other
//!   characters below U+0020 as `\u00xx` with lowercase hex; every other
//!   character (`/`, U+007F, non-ASCII) as itself;
//! - numbers in `details`: integers as decimal digits, with a `-` if
//!   negative and no fraction or exponent; other numbers as ECMAScript's
//!   `Number.prototype.toString` writes them (`1.5`, `1e+21`, `1e-7`; `1.0`
//!   and `-0.0` become `1` and `0`), as RFC 8785 requires. Integers beyond
//!   ±2^53 are not I-JSON and RFC 8785 leaves them undefined; they are written
//!   exactly here, but are best kept out of `details` (use a string).
//!
//! [`canonical_form`] computes it.
//!
//! **Hash.** `hash` is the lowercase hex SHA-256 of the 64 ASCII bytes of
//! `prev_hash` (lowercase hex) followed by the canonical form:
//! `hash = hex(sha256(prev_hash || canonical))`; [`compute_hash`].
//!
//! **Links.** The first event ever stored has `prev_hash` =
//! [`GENESIS_HASH`], 64 `0` characters. Each later event's `prev_hash` is
//! the `hash` of the event with the next lower id. Ids increase strictly in
//! chain order and are never reused, also after pruning; they need not be
//! consecutive.
//!
//! **Pruning.** Retention deletes a *prefix* of the chain, the oldest events
//! in id order, and records an [`Anchor`]: the `hash` of the last deleted
//! event, which the oldest kept event has as its `prev_hash`. A verifier
//! starts from the latest anchor (or the genesis hash if none) and walks
//! the kept events in id order. An event older than the cutoff that follows
//! a newer one (clocks are not monotonic) is kept until everything before it
//! may go, as deleting it would leave a hole in the chain.
//!
//! **What `id` is not part of.** The id is deliberately outside the hash:
//! the chain's order is already fixed by each event naming its predecessor's
//! hash, so deleting, inserting or reordering events breaks a link whatever
//! their ids; the id is the store's locator, assigned by the backend inside
//! the committing transaction, and a caller's [`NewEvent`] cannot know it.
//! Keeping it out lets [`compute_hash`] be a function of what the caller
//! recorded alone, and lets a chain be exported to another store and still
//! verify. What goes undetected is a renumbering that keeps the order, which
//! changes no recorded fact.
//!
//! **What it guarantees.** An edit, deletion or insertion inside the kept
//! chain is detected, and [`AuditStore::verify`] names the first event that
//! does not chain ([`BreakReason`]). Someone able to rewrite the *whole*
//! suffix after an edit, or the anchor together with the oldest events, can
//! forge a chain that verifies; keep a copy of a recent `hash` elsewhere (the
//! prune command prints its anchors) to detect that.
//!
//! **Test vector.** With [`GENESIS_HASH`] as `prev_hash`, the event whose
//! canonical form is
//!
//! ```text
//! {"action":"chat.create","actor":"alice","details":{},"node":null,"outcome":"ok","request_id":null,"source_ip":null,"status":201,"target":"incident-42","ts":"2026-01-01T00:00:00.000Z","user_agent":null}
//! ```
//!
//! has the hash
//! `2e2d7b62d653fb29c04a8e51d8002be94fc773a48667bfd97e3c1923d059dec8`
//! (see the examples of [`canonical_form`] and [`compute_hash`]; the unit
//! tests hold a second vector that exercises escaping, key order and
//! numbers).
//!
//! **A reference verifier.** Because the canonical form is JCS, an
//! independent check needs a dozen lines. In JavaScript (Node.js), for events
//! as `GET /api/audit` returns them:
//!
//! ```js
//! const crypto = require("crypto");
//! const jcs = (v) =>
//!   v === null || typeof v !== "object" ? JSON.stringify(v)
//!   : Array.isArray(v) ? `[${v.map(jcs).join(",")}]`
//!   : `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${jcs(v[k])}`).join(",")}}`;
//! // The event's own hash, from its content and its prev_hash.
//! const hashOf = ({ id, prev_hash, hash, ...body }) =>
//!   crypto.createHash("sha256").update(prev_hash + jcs(body), "utf8").digest("hex");
//! // Then, oldest first: hashOf(e) === e.hash, and each e.prev_hash is the
//! // hash of the event before it (the first: the anchor, or 64 zeros).
//! ```
//!
//! (`JSON.parse` rounds integers beyond ±2^53, so this verifier needs
//! `details` without them, as the canonical form recommends.)
//!
//! # Reads and pagination
//!
//! [`AuditStore::read`] returns events newest (highest id) first. A page's
//! [`Page::next`] cursor is [`AuditEvent::cursor`] of its last event: the
//! event's `ts` and its id in decimal. To read the next page, pass that id as
//! [`AuditQuery::before_id`] with the same filters.
//!
//! # Features
//!
//! - `sqlite` (default): [`SqliteAuditStore`], [`SqliteOptions`] and their
//!   companions;
//! - `postgres`: [`PostgresAuditStore`], [`PostgresOptions`], and the
//!   [`PostgresPool`] it runs on;
//! - `testing`: the [`testing`] module and [`audit_store_tests!`]; it brings
//!   in tokio's multi-threaded runtime.
//!
// Where a feature is off, its items do not exist; point their links at the
// section that says how to enable them instead of leaving them broken.
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`SqliteAuditStore`]: #features\n[`SqliteOptions`]: #features"
)]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "[`PostgresAuditStore`]: #features\n[`PostgresOptions`]: #features\n[`PostgresPool`]: #features"
)]
#![cfg_attr(
    not(any(test, feature = "testing")),
    doc = "[`testing`]: #features\n[`audit_store_tests!`]: #features"
)]

use std::error::Error as StdError;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sofiia_core_domain::{Cursor, Page, PageLimit, Timestamp};

mod canonical;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::canonical::{GENESIS_HASH, canonical_form, compute_hash};
pub use crate::memory::MemoryAuditStore;
#[cfg(feature = "postgres")]
pub use crate::postgres::{ImportedTrail, PostgresAuditStore, PostgresOptions};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{
    Checkpoint, GroupCommitStats, SqliteAuditStore, SqliteOptions, VACUUM_STEP_PAGES, Vacuumed,
};
#[cfg(feature = "postgres")]
pub use sofiia_postgres_support::{PoolOptions, PostgresPool};
#[cfg(feature = "sqlite")]
pub use sofiia_sqlite_support::{Database, DatabaseOptions};

/// What the event records, before the store numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewEvent {
    /// When it happened.
    pub ts: Timestamp,
    /// Who acted: an operator id, `anonymous`, or `system`.
    pub actor: String,
    /// What they did, `noun.verb`: `chat.send`, `audit.read`, ...
    pub action: String,
    /// What they acted on: a chat id, `audit`, ...
    pub target: String,
    /// `ok`, `denied` or `error`.
    pub outcome: Outcome,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// The request's id, if any.
    pub request_id: Option<String>,
    /// The inference node involved, if any.
    pub node: Option<String>,
    /// The client's address, if any.
    pub source_ip: Option<String>,
    /// The client's `User-Agent`, if any.
    pub user_agent: Option<String>,
    /// Further structured detail. Never message text, tokens or keys.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Ok,
    /// It was refused (authentication, authorization, limits, conflicts).
    Denied,
    /// It failed.
    Error,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Position in the trail; strictly increasing, never reused.
    pub id: u64,
    /// The recorded fields.
    #[serde(flatten)]
    pub event: NewEvent,
    /// The previous event's hash (hex), or the chain's anchor.
    pub prev_hash: String,
    /// `sha256(prev_hash || canonical event)`, hex.
    pub hash: String,
}

impl AuditEvent {
    /// The cursor of a page that ends with this event: its `ts` and its id
    /// in decimal. The next page is the query with
    /// [`AuditQuery::before_id`] set to that id.
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.event.ts, self.id.to_string())
    }
}

/// The record a prune batch leaves: where the kept chain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Anchor {
    /// The id of the newest event the batch deleted; every kept event has a
    /// higher id.
    pub last_deleted_id: u64,
    /// That event's `hash`: the `prev_hash` of the oldest kept event.
    pub hash: String,
    /// When the batch ran, by the store's clock.
    pub pruned_at: Timestamp,
    /// The cutoff the batch pruned to: it deleted only events older than this.
    pub cutoff: Timestamp,
    /// How many events the batch deleted.
    pub deleted: u64,
}

/// Which events to read: filters, page size and position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
    /// Page size.
    pub limit: PageLimit,
    /// Only events with a smaller id (the cursor of the previous page).
    pub before_id: Option<u64>,
}

/// What one prune batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    /// Events deleted.
    pub deleted: u64,
    /// Whether events older than the cutoff remain (another batch is due).
    pub more: bool,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every event chains from the anchor to the newest.
    Intact {
        /// Events checked.
        events: u64,
    },
    /// The first event that does not chain.
    Broken {
        /// Its id.
        id: u64,
        /// Why it does not chain.
        reason: BreakReason,
    },
}

/// Why an event does not chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakReason {
    /// Its `prev_hash` is not the previous event's hash (or the anchor): an
    /// event before it was deleted or edited.
    PrevHashMismatch,
    /// Its `hash` does not match its content: it was edited.
    HashMismatch,
    /// Its stored content is not a valid event (a time out of range,
    /// `details` that are not a JSON object, ...), so its hash cannot even be
    /// recomputed: it was edited outside this crate, or the storage is
    /// corrupt.
    Unreadable,
    /// The chain ends before the newest event the store recorded: events at
    /// its end were deleted. The id is that newest event's. (Only stores
    /// that record their newest event apart from the events themselves can
    /// tell; the PostgreSQL store does.)
    Missing,
}

/// What can go wrong in an audit store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The backend cannot be reached or is overloaded; the event was not stored.
    #[error("the audit store is unavailable")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The backend failed; the event was not stored.
    #[error("the audit store failed")]
    Backend {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// Result of an audit store operation.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;

/// The audit trail's storage.
///
/// Every backend keeps one chain per store (see the crate documentation for
/// the chain's rules) and passes the behavioural suite in the `testing`
/// module (feature `testing`).
#[async_trait]
pub trait AuditStore: Debug + Send + Sync + 'static {
    /// Numbers, chains and durably stores `event`; returns once it is durable.
    ///
    /// The event gets an id above every id the store ever gave, and chains
    /// from the newest stored event (or the latest anchor, or
    /// [`GENESIS_HASH`]). The returned [`AuditEvent`] is exactly what is
    /// stored. A call whose future is dropped before it completes may or may
    /// not have stored its event.
    ///
    /// # Errors
    ///
    /// A backend error; then the event was not stored.
    async fn append(&self, event: NewEvent) -> Result<AuditEvent>;

    /// [`append`](Self::append), answered once the event is committed but
    /// possibly before it is durable: a backend that tells the two apart
    /// makes it durable with the next durable write to the same storage,
    /// and never keeps a later write without it. (The SQLite store: the
    /// next synced write to its file, by any store sharing the file.)
    /// Backends that do not tell them
    /// apart append durably, which is the default.
    ///
    /// For a caller that makes such a durable write before it relies on
    /// the event, as the console does for a send: its event, then the
    /// completed idempotency key in the same file.
    ///
    /// # Errors
    ///
    /// As for [`append`](Self::append).
    async fn append_committed(&self, event: NewEvent) -> Result<AuditEvent> {
        self.append(event).await
    }

    /// A page of events matching `query`, newest (highest id) first.
    ///
    /// Filters combine with AND: `actor` and `action` match exactly (byte
    /// for byte), `since` is inclusive, `until` exclusive, `before_id`
    /// exclusive. [`Page::next`] is set when more matching events follow and
    /// is the [`AuditEvent::cursor`] of the page's last event.
    ///
    /// # Errors
    ///
    /// A backend error.
    async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>>;

    /// How many events are older than `cutoff` (what a prune would delete).
    ///
    /// Precisely: the length of the longest run of the oldest events (in id
    /// order) whose `ts` are all before `cutoff`, which is what pruning to
    /// `cutoff` deletes (see the crate documentation on pruning). With
    /// timestamps that increase with ids, as one clock gives, that is every
    /// event older than `cutoff`.
    ///
    /// # Errors
    ///
    /// A backend error.
    async fn count_before(&self, cutoff: Timestamp) -> Result<u64>;

    /// Deletes up to `batch` of the oldest events older than `cutoff`, in one
    /// transaction that also records the new anchor.
    ///
    /// Deletes a prefix of the chain: the oldest events in id order, up to
    /// `batch` of them, stopping before the first that is not older than
    /// `cutoff`. [`PruneBatch::more`] tells whether the next event would be
    /// deleted too, so a caller loops until it is `false`. A batch that
    /// deletes nothing records no anchor; `batch` 0 deletes nothing.
    ///
    /// # Errors
    ///
    /// A backend error; then nothing was deleted.
    async fn prune_batch(&self, cutoff: Timestamp, batch: u32) -> Result<PruneBatch>;

    /// Walks the chain from the anchor to the newest event.
    ///
    /// Starts from the latest [`Anchor`] (or [`GENESIS_HASH`]) and checks,
    /// in id order, that each event's `prev_hash` is the hash before it and
    /// that its `hash` is [`compute_hash`] of its content; reports the first
    /// event that fails.
    ///
    /// # Errors
    ///
    /// A backend error (a broken chain is a [`Verification::Broken`], not an error).
    async fn verify(&self) -> Result<Verification>;

    /// Checks that the backend answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// A backend error.
    async fn check(&self) -> Result<()>;
}

/// An audit store as a trait object.
pub type DynAuditStore = dyn AuditStore;

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn stored() -> AuditEvent {
        let event = NewEvent {
            ts: Timestamp::from_unix_millis(1_767_225_600_000).unwrap(),
            actor: "alice".into(),
            action: "chat.create".into(),
            target: "incident-42".into(),
            outcome: Outcome::Ok,
            status: Some(201),
            request_id: None,
            node: None,
            source_ip: None,
            user_agent: None,
            details: Map::new(),
        };
        AuditEvent {
            id: 7,
            hash: compute_hash(GENESIS_HASH, &event),
            event,
            prev_hash: GENESIS_HASH.into(),
        }
    }

    /// The contract's event JSON, member for member and in its order.
    #[test]
    fn an_event_serialises_as_the_contract_says() {
        let json = serde_json::to_string(&stored()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"id":7,"ts":"2026-01-01T00:00:00.000Z","actor":"alice","action":"chat.create","#,
                r#""target":"incident-42","outcome":"ok","status":201,"request_id":null,"node":null,"#,
                r#""source_ip":null,"user_agent":null,"details":{},"#,
                r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
                r#""hash":"2e2d7b62d653fb29c04a8e51d8002be94fc773a48667bfd97e3c1923d059dec8"}"#
            )
        );
        let back: AuditEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored());
    }

    #[test]
    fn outcomes_are_lowercase() {
        for (outcome, text) in [
            (Outcome::Ok, "ok"),
            (Outcome::Denied, "denied"),
            (Outcome::Error, "error"),
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), json!(text));
        }
    }

    #[test]
    fn the_cursor_is_the_time_and_decimal_id() {
        let cursor = stored().cursor();
        assert_eq!(cursor.id(), "7");
        assert_eq!(cursor.ts(), stored().event.ts);
    }
}
