//! Test doubles behind the store traits, for failure injection.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use sofiia_audit_store::{
    AuditError, AuditEvent, AuditQuery, AuditStore, MemoryAuditStore, NewEvent, PruneBatch,
    Verification,
};
use sofiia_core_domain::{Page, Timestamp};

/// How a [`FaultyAudit`] writes, switched while a test runs.
#[derive(Debug, Clone, Default)]
pub struct AuditFault(Arc<AtomicU8>);

impl AuditFault {
    const NONE: u8 = 0;
    const FAILING: u8 = 1;
    const STALLED: u8 = 2;

    /// Writes work.
    pub fn heal(&self) {
        self.0.store(Self::NONE, Ordering::SeqCst);
    }

    /// Writes fail as unavailable: a full disk or a broken file.
    pub fn fail(&self) {
        self.0.store(Self::FAILING, Ordering::SeqCst);
    }

    /// Writes never return: a stalled disk.
    pub fn stall(&self) {
        self.0.store(Self::STALLED, Ordering::SeqCst);
    }
}

/// An in-memory audit store whose writes an [`AuditFault`] switches.
#[derive(Debug)]
pub struct FaultyAudit {
    inner: MemoryAuditStore,
    fault: AuditFault,
}

impl FaultyAudit {
    /// A store, and the switch of its writes.
    pub fn new() -> (Arc<Self>, AuditFault) {
        let fault = AuditFault::default();
        let store = Arc::new(Self {
            inner: MemoryAuditStore::new(),
            fault: fault.clone(),
        });
        (store, fault)
    }
}

#[async_trait]
impl AuditStore for FaultyAudit {
    async fn append(&self, event: NewEvent) -> Result<AuditEvent, AuditError> {
        match self.fault.0.load(Ordering::SeqCst) {
            AuditFault::FAILING => {
                return Err(AuditError::Unavailable {
                    source: "disk full (simulated)".into(),
                });
            }
            AuditFault::STALLED => std::future::pending::<()>().await,
            _ => {}
        }
        self.inner.append(event).await
    }
    async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>, AuditError> {
        self.inner.read(query).await
    }
    async fn count_before(&self, cutoff: Timestamp) -> Result<u64, AuditError> {
        self.inner.count_before(cutoff).await
    }
    async fn prune_batch(&self, cutoff: Timestamp, batch: u32) -> Result<PruneBatch, AuditError> {
        self.inner.prune_batch(cutoff, batch).await
    }
    async fn verify(&self) -> Result<Verification, AuditError> {
        self.inner.verify().await
    }
    async fn check(&self) -> Result<(), AuditError> {
        self.inner.check().await
    }
}
