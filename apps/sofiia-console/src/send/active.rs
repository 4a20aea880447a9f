//! The sends this process is running, by idempotency key.
//!
//! The idempotency store already keeps a key from running twice; this
//! registry answers a retry from the same process without asking the store
//! (it attaches to the running send's [`Live`] reply),
//! and, more to the point, keeps answering it while the store cannot be
//! asked or its lease has run out: a send whose node answered and whose
//! storing waits for a full disk to clear is never run a second time by a
//! retry that arrives the moment the disk frees up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sofiia_idempotency::{Fingerprint, ScopedKey};

use super::live::Live;

/// What a send of this process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before its node answered.
    Running,
    /// Its node answered; it is storing the exchange.
    Storing,
}

/// Why a send cannot start here now.
#[derive(Debug)]
pub(crate) enum Busy {
    /// The same request is running here, in this phase, with this reply.
    Same(Phase, Arc<Live>),
    /// Another request with this key is running here.
    Other,
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    storing: Arc<AtomicBool>,
    live: Arc<Live>,
}

/// The registry.
#[derive(Debug, Default)]
pub(crate) struct ActiveSends {
    sends: Mutex<HashMap<ScopedKey, Entry>>,
}

impl ActiveSends {
    /// Registers a send of `key`, unless one is running here already.
    pub(crate) fn enter(
        self: &Arc<Self>,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
    ) -> Result<Active, Busy> {
        let mut sends = self.sends.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = sends.get(key) {
            return Err(if entry.fingerprint != *fingerprint {
                Busy::Other
            } else if entry.storing.load(Ordering::SeqCst) {
                Busy::Same(Phase::Storing, Arc::clone(&entry.live))
            } else {
                Busy::Same(Phase::Running, Arc::clone(&entry.live))
            });
        }
        let storing = Arc::new(AtomicBool::new(false));
        let live = Live::new();
        sends.insert(
            key.clone(),
            Entry {
                fingerprint: *fingerprint,
                storing: Arc::clone(&storing),
                live: Arc::clone(&live),
            },
        );
        Ok(Active {
            registry: Arc::clone(self),
            key: key.clone(),
            storing,
            live,
        })
    }

    /// How many sends are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A registered send; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct Active {
    registry: Arc<ActiveSends>,
    key: ScopedKey,
    storing: Arc<AtomicBool>,
    live: Arc<Live>,
}

impl Active {
    /// The send's reply.
    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The send's node answered.
    pub(crate) fn storing(&self) {
        self.storing.store(true, Ordering::SeqCst);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.registry
            .sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use sofiia_idempotency::IdempotencyKey;

    use super::*;

    fn key(principal: &str) -> ScopedKey {
        ScopedKey::new(principal, IdempotencyKey::new("send-00000001").unwrap())
    }

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::builder().part(s).finish()
    }

    #[test]
    fn one_send_per_key_until_it_ends() {
        let registry = Arc::new(ActiveSends::default());
        let active = registry.enter(&key("alice"), &fp("a")).unwrap();
        match registry.enter(&key("alice"), &fp("a")).unwrap_err() {
            Busy::Same(Phase::Running, live) => assert!(Arc::ptr_eq(&live, active.live())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            registry.enter(&key("alice"), &fp("b")).unwrap_err(),
            Busy::Other
        ));
        let bob = registry.enter(&key("bob"), &fp("a")).unwrap();
        assert!(!Arc::ptr_eq(bob.live(), active.live()));
        active.storing();
        assert!(matches!(
            registry.enter(&key("alice"), &fp("a")).unwrap_err(),
            Busy::Same(Phase::Storing, _)
        ));
        assert_eq!(registry.len(), 2);
        drop(active);
        drop(bob);
        assert_eq!(registry.len(), 0);
        registry.enter(&key("alice"), &fp("a")).unwrap();
    }
}
