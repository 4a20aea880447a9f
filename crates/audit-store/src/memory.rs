//! The in-process backend.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use async_trait::async_trait;
use sofiia_core_domain::{DynClock, Page, SystemClock, Timestamp};

use crate::canonical::{ChainCheck, GENESIS_HASH, compute_hash};
use crate::{
    Anchor, AuditError, AuditEvent, AuditQuery, AuditStore, NewEvent, PruneBatch, Result,
    Verification,
};

/// An audit trail held in memory, for tests and single-instance demos.
///
/// Same semantics as every backend: ids from a counter that pruning never
/// resets, one hash chain, an [`Anchor`] per prune batch. "Durable" here
/// means stored in this process: everything is lost when it is dropped.
///
/// Calls take a [`Mutex`] that is never held across an `.await`. A read
/// costs O(matching events scanned); that is fine for the sizes this
/// backend is for.
///
/// If code holding the lock ever panicked, the data may be half updated, so
/// from then on every call fails with [`AuditError::Backend`] instead of
/// serving it.
///
/// ```
/// use sofiia_audit_store::{AuditStore, MemoryAuditStore, Verification};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sofiia_audit_store::AuditError> {
/// let store = MemoryAuditStore::new();
/// store.check().await?;
/// assert_eq!(store.verify().await?, Verification::Intact { events: 0 });
/// # Ok(())
/// # }
/// ```
pub struct MemoryAuditStore {
    inner: Mutex<Inner>,
    clock: Arc<DynClock>,
}

#[derive(Default)]
struct Inner {
    /// Ascending by id: the chain in order.
    events: VecDeque<AuditEvent>,
    /// The highest id ever given; pruning does not lower it.
    last_id: u64,
    /// Every prune batch's anchor, oldest first.
    anchors: Vec<Anchor>,
}

impl Inner {
    fn tail_hash(&self) -> &str {
        match (self.events.back(), self.anchors.last()) {
            (Some(event), _) => &event.hash,
            (None, Some(anchor)) => &anchor.hash,
            (None, None) => GENESIS_HASH,
        }
    }

    /// How many of the oldest events pruning to `cutoff` may delete, at most
    /// `limit`.
    fn prunable(&self, cutoff: Timestamp, limit: usize) -> usize {
        self.events
            .iter()
            .take(limit)
            .take_while(|e| e.event.ts < cutoff)
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
enum MemoryError {
    /// The lock was poisoned by a panic while it was held.
    #[error("the in-memory audit store is unusable: a panic interrupted an update")]
    Poisoned,
    /// 2^64 ids were given.
    #[error("the in-memory audit store has run out of ids")]
    IdsExhausted,
}

impl From<MemoryError> for AuditError {
    fn from(err: MemoryError) -> Self {
        AuditError::Backend {
            source: Box::new(err),
        }
    }
}

impl MemoryAuditStore {
    /// An empty store whose anchors take their time from the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose anchors take their time from `clock`.
    pub fn with_clock(clock: Arc<DynClock>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }

    /// The latest prune's anchor, or `None` if nothing was ever pruned.
    ///
    /// # Errors
    ///
    /// [`AuditError::Backend`] if the store is unusable after a panic.
    pub fn anchor(&self) -> Result<Option<Anchor>> {
        Ok(self.lock()?.anchors.last().cloned())
    }

    // A poisoned lock is reported, not recovered with `into_inner`: the panic
    // may have struck between the updates of `events`, `last_id` and
    // `anchors`, and serving such a chain would hide the damage.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, MemoryError> {
        self.inner.lock().map_err(|_| MemoryError::Poisoned)
    }

    /// Lets a test edit the stored chain, as an attacker with access to the
    /// storage could.
    #[cfg(test)]
    pub(crate) fn tamper(&self, f: impl FnOnce(&mut VecDeque<AuditEvent>)) {
        f(&mut self.inner.lock().unwrap().events);
    }
}

impl Default for MemoryAuditStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryAuditStore {
    // Sizes only: a busy lock must not block a `{:?}`, and events do not
    // belong in logs wholesale.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("MemoryAuditStore");
        match self.inner.try_lock() {
            Ok(inner) => s
                .field("events", &inner.events.len())
                .field("last_id", &inner.last_id)
                .field("anchors", &inner.anchors.len()),
            Err(TryLockError::WouldBlock) => s.field("state", &"locked"),
            Err(TryLockError::Poisoned(_)) => s.field("state", &"poisoned"),
        };
        s.finish()
    }
}

fn matches(query: &AuditQuery, event: &NewEvent) -> bool {
    query.actor.as_ref().is_none_or(|a| *a == event.actor)
        && query.action.as_ref().is_none_or(|a| *a == event.action)
        && query.since.is_none_or(|t| event.ts >= t)
        && query.until.is_none_or(|t| event.ts < t)
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn append(&self, event: NewEvent) -> Result<AuditEvent> {
        let mut inner = self.lock()?;
        let id = inner
            .last_id
            .checked_add(1)
            .ok_or(MemoryError::IdsExhausted)?;
        let prev_hash = inner.tail_hash().to_owned();
        let hash = compute_hash(&prev_hash, &event);
        let stored = AuditEvent {
            id,
            event,
            prev_hash,
            hash,
        };
        inner.last_id = id;
        inner.events.push_back(stored.clone());
        Ok(stored)
    }

    async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let inner = self.lock()?;
        // Events are sorted by id, so the start of the page is a binary
        // search away.
        let end = match query.before_id {
            Some(before) => inner.events.partition_point(|e| e.id < before),
            None => inner.events.len(),
        };
        let items: Vec<AuditEvent> = inner
            .events
            .range(..end)
            .rev()
            .filter(|e| matches(query, &e.event))
            .take(query.limit.get() + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, query.limit, AuditEvent::cursor))
    }

    async fn count_before(&self, cutoff: Timestamp) -> Result<u64> {
        let inner = self.lock()?;
        let n = inner.prunable(cutoff, usize::MAX);
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn prune_batch(&self, cutoff: Timestamp, batch: u32) -> Result<PruneBatch> {
        let limit = usize::try_from(batch).unwrap_or(usize::MAX);
        let mut inner = self.lock()?;
        let n = inner.prunable(cutoff, limit);
        let more = inner
            .events
            .get(n)
            .is_some_and(|next| n == limit && next.event.ts < cutoff);
        // Everything is computed before anything changes, so the update
        // below cannot stop half-way.
        let Some(last) = n.checked_sub(1).and_then(|i| inner.events.get(i)) else {
            return Ok(PruneBatch { deleted: 0, more });
        };
        let deleted = u64::try_from(n).unwrap_or(u64::MAX);
        let anchor = Anchor {
            last_deleted_id: last.id,
            hash: last.hash.clone(),
            pruned_at: self.clock.now(),
            cutoff,
            deleted,
        };
        inner.events.drain(..n);
        inner.anchors.push(anchor);
        Ok(PruneBatch { deleted, more })
    }

    async fn verify(&self) -> Result<Verification> {
        let inner = self.lock()?;
        let mut chain = ChainCheck::new(inner.anchors.last().map(|a| a.hash.as_str()));
        for event in &inner.events {
            if let Some(reason) = chain.check(event) {
                return Ok(Verification::Broken {
                    id: event.id,
                    reason,
                });
            }
        }
        Ok(chain.intact())
    }

    async fn check(&self) -> Result<()> {
        drop(self.lock()?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BreakReason;

    crate::audit_store_tests!(
        async fn store() -> crate::testing::TestStore {
            crate::testing::TestStore::new(MemoryAuditStore::new())
        }
    );

    #[tokio::test]
    async fn verify_names_an_edited_and_a_missing_event() {
        let store = MemoryAuditStore::new();
        let fx = crate::testing::Fixture::new();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(store.append(fx.event(i)).await.unwrap().id);
        }
        store.tamper(|events| events[2].event.action = "chat.edited".into());
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: ids[2],
                reason: BreakReason::HashMismatch
            }
        );
        store.tamper(|events| events[2].event.action = "chat.send".into());
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 5 }
        );
        store.tamper(|events| {
            events.remove(1);
        });
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: ids[2],
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[tokio::test]
    async fn anchors_record_each_prune_with_the_clock() {
        let fx = crate::testing::Fixture::new();
        let clock = Arc::new(sofiia_core_domain::ManualClock::new(fx.at(1000)));
        let store = MemoryAuditStore::with_clock(clock.clone());
        assert_eq!(store.anchor().unwrap(), None);
        let mut stored = Vec::new();
        for i in 0..4 {
            stored.push(store.append(fx.event(i)).await.unwrap());
        }
        let batch = store.prune_batch(fx.at(3), 2).await.unwrap();
        assert_eq!(
            batch,
            PruneBatch {
                deleted: 2,
                more: true
            }
        );
        assert_eq!(
            store.anchor().unwrap(),
            Some(Anchor {
                last_deleted_id: stored[1].id,
                hash: stored[1].hash.clone(),
                pruned_at: fx.at(1000),
                cutoff: fx.at(3),
                deleted: 2,
            })
        );
    }

    #[test]
    fn debug_shows_sizes_only() {
        let store = MemoryAuditStore::new();
        assert_eq!(
            format!("{store:?}"),
            "MemoryAuditStore { events: 0, last_id: 0, anchors: 0 }"
        );
    }
}
