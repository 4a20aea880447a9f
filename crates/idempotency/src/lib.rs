//! At most one execution per idempotency key, on one instance or many.
//!
//! A client marks a request with an `Idempotency-Key` header (IETF
//! `draft-ietf-httpapi-idempotency-key-header`) so that retrying it, after a
//! timeout or a dropped connection, never runs it twice. This crate keeps the
//! state machine of each key in an [`IdempotencyStore`]:
//!
//! ```text
//!             reserve                 hold_pending                complete
//!   absent ───────────> in flight ─────────────────> pending ─────────────> completed
//!     ^                    │  │    (upstream answered)  │  ^                    │
//!     │  release (upstream │  │ lease expires           │  │ lease expires:     │ TTL
//!     └── failed) ─────────┘  └──────> absent           │  │ the next reserve   │ expires
//!                                                       └──┘ resumes it         v
//!                                                                             absent
//! ```
//!
//! - **reserve** atomically answers one of: acquired (the caller runs the
//!   request and holds a *lease*), in flight (someone else holds an unexpired
//!   lease: answer 409), pending (the request ran, and its holder is still
//!   storing its result: answer 503), resume (the request ran, but its
//!   holder stopped before finishing: the caller takes over with a fresh
//!   lease and the pending result), completed (replay the stored answer) or
//!   mismatch (the key was used for a different request: answer 422). A key
//!   is scoped by its principal (the operator), so equal keys of two
//!   principals never interact.
//! - **hold_pending** records, once the upstream has answered, what the
//!   caller needs to finish the request (its *pending result*), and renews
//!   the lease. From then on the key is never freed: `release` refuses it,
//!   and a lease that ends only lets the next reservation *resume* the
//!   request from the pending result, never run it again.
//! - **complete** stores the answer, but only while the caller's lease still
//!   holds the key (*fencing*): a lease that expired and lost the key to
//!   another caller can never overwrite that caller's result.
//! - **release** frees a key in flight after an upstream failure, so a retry
//!   runs again.
//!
//! Backends: [`SqliteIdempotencyStore`] (feature `sqlite`; one file,
//! durable across restarts and crashes), [`MemoryIdempotencyStore`] (one
//! process, bounded; forgets everything on restart) and
//! [`RedisIdempotencyStore`] (feature `redis`; many processes sharing one
//! Redis). Every backend passes the behavioural suite in [`testing`], which
//! an embedder can run against a backend of their own with
//! [`idempotency_store_tests!`].
//!
//! [`Idempotency`] is the framework-agnostic front door most callers want, and
//! the `actix` feature adds an actix-web helper (see [`actix`] and
//! `examples/idempotency_actix.rs`).
//!
//! A request is recognised by its [`Fingerprint`], a SHA-256 digest of a
//! canonical form of what it means (method, route, resource, body), so that
//! a key reused for a different request is a mismatch (422), not a replay.
//!
//! # Embedding
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sofiia_idempotency::{
//!     Begin, Fingerprint, Idempotency, IdempotencyKey, MemoryIdempotencyStore, ScopedKey,
//!     StoredResponse,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One per process; `RedisIdempotencyStore` instead when instances share keys.
//! let idempotency = Idempotency::new(
//!     Arc::new(MemoryIdempotencyStore::with_system_clock(100_000)),
//!     Duration::from_secs(60),       // lease: longer than the slowest execution
//!     Duration::from_secs(24 * 3600), // how long answers are replayed
//! );
//!
//! // Per request: the principal from authentication, the key from the header.
//! let key = ScopedKey::new("alice", IdempotencyKey::parse_header("\"order-0001\"")?);
//! let body = br#"{"item":42}"#;
//! let fingerprint = Fingerprint::builder().part("POST").part("/orders").part(body).finish();
//!
//! for attempt in 0..2 {
//!     match idempotency.begin(&key, &fingerprint).await? {
//!         Begin::Execute(guard) => {
//!             assert_eq!(attempt, 0);
//!             // ... run the request; on an error worth retrying, `guard.release().await`.
//!             let answer = StoredResponse {
//!                 status: 201,
//!                 headers: vec![("content-type".into(), "application/json".into())],
//!                 body: br#"{"order":1}"#.to_vec(),
//!             };
//!             guard.complete(answer).await?;
//!         }
//!         Begin::Replay(answer) => {
//!             assert_eq!(attempt, 1);
//!             assert_eq!(answer.status, 201); // answer it again, byte for byte
//!         }
//!         Begin::InFlight { .. } => { /* 409 with Retry-After */ }
//!         Begin::Pending { .. } => { /* 503 with Retry-After: being stored */ }
//!         Begin::Resume(_) => { /* finish from the pending result, then complete */ }
//!         Begin::Mismatch => { /* 422 */ }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Failure modes
//!
//! - The store is unreachable: [`IdempotencyError::Unavailable`]. Callers
//!   must fail closed (answer 503) and run nothing, or at-most-once is lost.
//! - The process dies while holding a lease: the key stays in flight until
//!   the lease expires, then the next retry runs. Choose a lease longer than
//!   the longest execution.
//! - The lease expires while the request still runs (it took longer than the
//!   lease): a retry may run concurrently, and the late `complete` fails with
//!   [`IdempotencyError::LeaseLost`]. Pass the key downstream so the upstream
//!   can deduplicate as well.
//! - The store fails after the upstream answered: hold the answer with
//!   [`Guard::answered`] and keep retrying [`PendingGuard::hold`] and your
//!   own storage until they succeed. Meanwhile retries see the key pending
//!   (503); once the pending result is held, a crash of the holder only
//!   delays the request (the next retry after the lease resumes it), it
//!   never runs it twice.
//! - The request is cancelled (the client went away) or its handler
//!   panics: the dropped [`Guard`] releases the key in the background, so a
//!   retry need not wait for the lease.
//! - A [`MemoryIdempotencyStore`] is full of live leases: new keys get
//!   [`IdempotencyError::Unavailable`]; a live lease is never evicted.
//!
//! # Features
//!
//! - `sqlite`: [`SqliteIdempotencyStore`] (on `rusqlite`, SQLite built in);
//! - `redis`: [`RedisIdempotencyStore`] (on `deadpool-redis`);
//! - `actix`: the [`actix`] module, an `Idempotency-Key` extractor and
//!   `run_idempotent` for actix-web services;
//! - `testing`: the [`testing`] module and [`idempotency_store_tests!`]; it
//!   brings in tokio's multi-threaded runtime.
//!
// Where a feature is off, its items do not exist; point their links at the
// section that says how to enable them instead of leaving them broken.
#![cfg_attr(not(feature = "redis"), doc = "[`RedisIdempotencyStore`]: #features")]
#![cfg_attr(not(feature = "sqlite"), doc = "[`SqliteIdempotencyStore`]: #features")]
#![cfg_attr(not(feature = "actix"), doc = "[`actix`]: #features")]
#![cfg_attr(
    not(any(test, feature = "testing")),
    doc = "[`testing`]: #features\n[`idempotency_store_tests!`]: #features"
)]

use std::error::Error as StdError;
use std::fmt;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(any(feature = "redis", feature = "sqlite"))]
mod codec;
mod facade;
mod fingerprint;
mod key;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::facade::{Begin, Guard, Held, Idempotency, PendingGuard};
pub use crate::fingerprint::{FingerprintBuilder, HexError};
pub use crate::key::{IdempotencyKey, KeyError};
pub use crate::memory::{EVICTIONS_METRIC, MemoryIdempotencyStore};
#[cfg(feature = "redis")]
pub use crate::redis::RedisIdempotencyStore;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteIdempotencyStore, SqliteOptions};
#[cfg(feature = "redis")]
/// The shared Redis connection the Redis backend is built on.
pub use sofiia_redis_support::RedisConnection;
#[cfg(feature = "sqlite")]
pub use sofiia_sqlite_support::{Database, DatabaseOptions};

/// An idempotency key within the scope of one principal.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    principal: String,
    key: IdempotencyKey,
}

impl ScopedKey {
    /// `key` as used by `principal` (an operator id, a tenant, ...).
    pub fn new(principal: impl Into<String>, key: IdempotencyKey) -> Self {
        Self {
            principal: principal.into(),
            key,
        }
    }

    /// The principal.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
}

impl Debug for ScopedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedKey")
            .field("principal", &self.principal)
            .field("key", &self.key.as_str())
            .finish()
    }
}

/// A SHA-256 digest of what a request means: two requests with one key and
/// different fingerprints are a mismatch (422).
///
/// Made with [`Fingerprint::builder`], which documents what to feed it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The owner token of a lease on a key, random per reservation
/// ([`LeaseToken::random`]). Its `Debug` form hides it: whoever knows it can
/// complete or release the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub [u8; 16]);

impl Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken(…)")
    }
}

/// A held lease: the right to execute the request and then complete or
/// release its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Proves ownership to `complete` and `release`.
    pub token: LeaseToken,
    /// How long the lease lasts from the reservation.
    pub ttl: Duration,
}

/// The stored answer of a completed request, replayed byte for byte.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// Headers to replay, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What `reserve` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free: the caller must now execute, then complete or release.
    Acquired(Lease),
    /// Another caller holds an unexpired lease.
    InFlight {
        /// When the lease ends at the latest.
        lease_remaining: Duration,
    },
    /// The request ran and its upstream answered; another caller holds the
    /// lease and is finishing it (storing its result).
    Pending {
        /// When that caller's lease ends at the latest; after that the key
        /// can be resumed.
        lease_remaining: Duration,
    },
    /// The request ran and its upstream answered, but the caller that held
    /// it stopped before finishing (its lease ended). The key is now the
    /// caller's, under this new lease: finish the request from `pending`
    /// (never run it again), then complete.
    Resume {
        /// The new lease.
        lease: Lease,
        /// The pending result, as given to
        /// [`hold_pending`](IdempotencyStore::hold_pending).
        pending: Vec<u8>,
    },
    /// The request already completed: replay this.
    Completed(StoredResponse),
    /// The key is in use (in flight or completed) for a different request.
    Mismatch,
}

/// What can go wrong in an idempotency store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The lease no longer holds the key (it expired, or was released).
    #[error("the lease no longer holds the idempotency key")]
    LeaseLost,
    /// The key holds a pending result, so it cannot be released: the
    /// request ran, and can only be completed.
    #[error("the idempotency key holds a pending result and cannot be released")]
    ResultPending,
    /// The store cannot be reached or is full; nothing may execute.
    #[error("the idempotency store is unavailable")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The backend failed in a way a retry will not fix.
    #[error("the idempotency store failed")]
    Backend {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// Result of an idempotency store operation.
pub type Result<T, E = IdempotencyError> = std::result::Result<T, E>;

/// Where the state of each key lives. Every operation is atomic.
#[async_trait]
pub trait IdempotencyStore: Debug + Send + Sync + 'static {
    /// Looks `key` up and, if it is free (absent, or its lease expired),
    /// takes it in flight with a new lease of `lease_ttl`.
    ///
    /// A fingerprint that differs from the stored one is
    /// [`Reservation::Mismatch`], whether the key is in flight or completed.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Unavailable`] or [`IdempotencyError::Backend`].
    async fn reserve(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
    ) -> Result<Reservation>;

    /// Records that the request's upstream answered: keeps `pending` (what
    /// the caller needs to finish the request) with the key, renews the
    /// lease for `lease_ttl` from now and keeps the key for `keep_ttl` from
    /// now, if `lease` still holds the key.
    ///
    /// A lease holds a key in flight under its token until the lease
    /// expires, and a pending key under its token until another caller
    /// resumes it (which gives the key a new token): so a holder whose lease
    /// ran out may still renew it as long as nobody took over. Calling it
    /// again replaces the pending result and renews the lease again.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`] if the lease does not hold the key
    /// (nothing changes), or a backend error.
    async fn hold_pending(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        pending: &[u8],
        lease_ttl: Duration,
        keep_ttl: Duration,
    ) -> Result<()>;

    /// Stores `response` for `key`, kept for `ttl`, if `lease` still holds
    /// the key (in flight or pending, as for
    /// [`hold_pending`](IdempotencyStore::hold_pending)): fencing. After
    /// that the lease is spent and any pending result is dropped.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`] if it does not (nothing changes), or a
    /// backend error.
    async fn complete(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<()>;

    /// Frees `key` if `lease` still holds it in flight, so the next
    /// reservation runs.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::ResultPending`] if the key holds a pending result
    /// under this lease (it is never freed: the request ran);
    /// [`IdempotencyError::LeaseLost`] if the lease does not hold the key.
    /// Nothing changes in either case. Or a backend error.
    async fn release(&self, key: &ScopedKey, lease: &LeaseToken) -> Result<()>;

    /// Removes up to `limit` entries whose time has passed (completed
    /// results past their TTL, leases that ended, pending results past their
    /// keep time) and returns how many it removed. Expired entries already
    /// count as absent; this returns their space. Never removes an entry
    /// whose time has not passed.
    ///
    /// A backend that expires entries by itself (Redis) removes nothing
    /// here; the default does that.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Unavailable`] or [`IdempotencyError::Backend`].
    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        let _ = limit;
        Ok(0)
    }

    /// Checks that the backend answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Unavailable`] or [`IdempotencyError::Backend`].
    async fn check(&self) -> Result<()>;
}

/// An idempotency store as a trait object.
pub type DynIdempotencyStore = dyn IdempotencyStore;
