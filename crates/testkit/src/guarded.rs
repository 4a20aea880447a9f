//! A subject under test kept together with what must outlive it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A subject under test (a store, a limiter, a router) together with a
/// guard that must live as long as it: a temporary directory holding its
/// file, a [`RedisTestContext`](crate::RedisTestContext) owning its key
/// prefix, a node server it talks to.
///
/// The subject is dropped before the guard, so a guard may remove what the
/// subject used. A guard's `Drop` also runs when the case panics; one that
/// must do async work can use `tokio::task::block_in_place` there on a
/// multi-threaded runtime. A clone of [`shared`](Self::shared) handed to a
/// task that outlives the `Guarded` keeps the subject alive, not the guard.
///
/// Each domain crate's behavioural suite wraps one in its own fixture type
/// (`TestStore`, `TestLimiter`, `Subject`), which names the subject after
/// its trait.
///
/// ```
/// use std::sync::Arc;
/// use sofiia_testkit::Guarded;
///
/// let dir = std::env::temp_dir();
/// let subject: Guarded<str> = Guarded::with_guard(Arc::from("a store"), dir);
/// assert_eq!(subject.get(), "a store");
/// ```
pub struct Guarded<T: ?Sized> {
    // Field order is drop order: the subject first, then its guard.
    subject: Arc<T>,
    _guard: Box<dyn Any + Send>,
}

impl<T: ?Sized> Guarded<T> {
    /// A subject that needs nothing kept alive.
    pub fn new(subject: Arc<T>) -> Self {
        Self::with_guard(subject, ())
    }

    /// A subject and a guard to drop after it.
    pub fn with_guard(subject: Arc<T>, guard: impl Any + Send) -> Self {
        Self {
            subject,
            _guard: Box::new(guard),
        }
    }

    /// The subject.
    pub fn get(&self) -> &T {
        &self.subject
    }

    /// The subject, to share with spawned tasks.
    pub fn shared(&self) -> &Arc<T> {
        &self.subject
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records its name in a shared log when dropped.
    struct Noisy(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl Drop for Noisy {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    impl fmt::Debug for Noisy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    #[test]
    fn the_subject_is_dropped_before_its_guard() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let guarded = Guarded::with_guard(
            Arc::new(Noisy("subject", Arc::clone(&log))),
            Noisy("guard", Arc::clone(&log)),
        );
        assert_eq!(guarded.get().0, "subject");
        assert_eq!(Arc::strong_count(guarded.shared()), 1);
        drop(guarded);
        assert_eq!(*log.lock().unwrap(), ["subject", "guard"]);
    }

    #[test]
    fn debug_shows_the_subject() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let guarded = Guarded::new(Arc::new(Noisy("store", log)));
        assert_eq!(format!("{guarded:?}"), "Guarded { subject: store, .. }");
    }
}
