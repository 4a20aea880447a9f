//! What refused credentials may cost: bounded, whoever sends them.
//!
//! Each refusal (a missing, malformed or unknown operator token, a missing
//! or wrong audit key) is noted per source address. In each window of
//! [`WINDOW`] a source's first refusal of each reason is recorded in the
//! audit trail in full; the later ones are only counted, and written as one
//! `auth.denied` event with a `count` when the window ends (or the console
//! stops). A source refused more than its limit within a window is answered
//! 429 with `Retry-After` until the window ends, without any audit or log
//! write. A valid credential is never looked up here: an operator is never
//! throttled for someone else's garbage from the same address.
//!
//! At most [`MAX_SOURCES`] addresses are tracked at once; past that, new
//! addresses share one bucket (and its limit) until windows end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a source's refusals are counted together.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How many sources are tracked at once.
pub const MAX_SOURCES: usize = 10_000;

/// Longest target (path) kept for an aggregate event.
const MAX_TARGET: usize = 256;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer it (401) and write its `auth.denied` event now: the source's
    /// first refusal of this reason in the window.
    Record,
    /// Answer it (401); it is counted into the window's aggregate event.
    Count,
    /// The source is past its limit: answer 429 with this `Retry-After`;
    /// it is counted into the aggregate event too.
    Throttle {
        /// Until the source's window ends.
        retry_after: Duration,
    },
}

/// Refusals counted but not written yet, for one source and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// The source address (`None`: the shared bucket of sources past
    /// [`MAX_SOURCES`], or a peer without an address).
    pub source: Option<IpAddr>,
    /// Why they were refused.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
    /// Of those, how many were answered 429.
    pub throttled: u64,
    /// The path of the latest one, cut to 256 characters.
    pub target: String,
    /// How long the window lasted when it was written.
    pub window: Duration,
}

#[derive(Debug)]
struct Source {
    started: Instant,
    refusals: u32,
    pending: HashMap<&'static str, Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    count: u64,
    throttled: u64,
    target: String,
}

/// The refusals of every source, per window.
#[derive(Debug)]
pub struct Denials {
    limit: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sources: HashMap<Option<IpAddr>, Source>,
    /// Counts of windows that ended before the next drain, as found when
    /// their source's next refusal started a new window.
    ended: Vec<Aggregate>,
}

impl Source {
    /// The counted refusals of this window, as aggregates, `now`.
    fn take(&mut self, source: Option<IpAddr>, now: Instant, out: &mut Vec<Aggregate>) {
        let window = now.duration_since(self.started).min(WINDOW);
        for (reason, pending) in self.pending.drain() {
            if pending.count > 0 {
                out.push(Aggregate {
                    source,
                    reason,
                    count: pending.count,
                    throttled: pending.throttled,
                    target: pending.target,
                    window,
                });
            }
        }
    }
}

impl Denials {
    /// Throttles a source past `limit` refusals in a window.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The limit per source and window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Notes a refusal from `source` for `reason` on `target`, at `now`.
    pub fn note(
        &self,
        source: Option<IpAddr>,
        reason: &'static str,
        target: &str,
        now: Instant,
    ) -> Verdict {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner { sources, ended } = &mut *inner;
        let key = if sources.contains_key(&source) || sources.len() < MAX_SOURCES {
            source
        } else {
            None
        };
        let entry = sources.entry(key).or_insert_with(|| Source {
            started: now,
            refusals: 0,
            pending: HashMap::new(),
        });
        if now.duration_since(entry.started) >= WINDOW {
            // A new window; what the old one counted waits for the next
            // drain, as the old window's aggregates.
            entry.take(key, entry.started + WINDOW, ended);
            entry.started = now;
            entry.refusals = 0;
        }
        entry.refusals = entry.refusals.saturating_add(1);
        let first_of_reason = !entry.pending.contains_key(reason);
        let pending = entry.pending.entry(reason).or_default();
        let verdict = if entry.refusals > self.limit {
            Verdict::Throttle {
                retry_after: WINDOW.saturating_sub(now.duration_since(entry.started)),
            }
        } else if first_of_reason {
            // Written now, so not counted into the aggregate.
            return Verdict::Record;
        } else {
            Verdict::Count
        };
        pending.count += 1;
        if matches!(verdict, Verdict::Throttle { .. }) {
            pending.throttled += 1;
        }
        pending.target = target.chars().take(MAX_TARGET).collect();
        verdict
    }

    /// Takes what the windows that ended by `now` counted (everything, with
    /// `all`, when the console stops), for writing as aggregate events.
    pub fn drain(&self, now: Instant, all: bool) -> Vec<Aggregate> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = std::mem::take(&mut inner.ended);
        inner.sources.retain(|source, entry| {
            let ended = now.duration_since(entry.started) >= WINDOW;
            if !(ended || all) {
                return true;
            }
            entry.take(*source, now, &mut out);
            // An ended window is forgotten; a live one (on `all`) keeps
            // its count, so that a stop does not lift a throttle.
            !ended
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn the_first_of_each_reason_is_recorded_the_rest_counted_then_throttled() {
        let denials = Denials::new(5);
        let t0 = Instant::now();
        assert_eq!(
            denials.note(ip(1), "unknown", "/api/chats", t0),
            Verdict::Record
        );
        assert_eq!(
            denials.note(ip(1), "missing", "/api/chats", t0),
            Verdict::Record
        );
        for _ in 0..3 {
            assert_eq!(
                denials.note(ip(1), "unknown", "/api/chats", t0),
                Verdict::Count
            );
        }
        // The sixth refusal in the window is past the limit of five.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            denials.note(ip(1), "unknown", "/x", later),
            Verdict::Throttle {
                retry_after: Duration::from_secs(40)
            }
        );
        // Another source is not affected.
        assert_eq!(
            denials.note(ip(2), "unknown", "/api/chats", later),
            Verdict::Record
        );

        // Nothing ended yet; a stop takes everything, keeping the windows.
        assert!(denials.drain(later, false).is_empty());
        let all = denials.drain(later, true);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].source, all[0].reason, all[0].count, all[0].throttled),
            (ip(1), "unknown", 4, 1)
        );
        assert_eq!(all[0].target, "/x");
        assert!(matches!(
            denials.note(ip(1), "unknown", "/x", later),
            Verdict::Throttle { .. }
        ));

        // A new window starts over.
        let next = t0 + WINDOW;
        assert_eq!(
            denials.drain(next, false).len(),
            1,
            "the throttled one above"
        );
        assert_eq!(
            denials.note(ip(1), "unknown", "/api/chats", next),
            Verdict::Record
        );
    }

    #[test]
    fn a_window_that_ended_before_a_drain_is_written_on_its_own() {
        let denials = Denials::new(100);
        let t0 = Instant::now();
        assert_eq!(denials.note(ip(1), "unknown", "/a", t0), Verdict::Record);
        for _ in 0..4 {
            assert_eq!(denials.note(ip(1), "unknown", "/a", t0), Verdict::Count);
        }
        // The next refusal comes after the window ended, before any drain:
        // it opens a new window and is recorded in full again.
        let next = t0 + WINDOW + Duration::from_secs(3);
        assert_eq!(denials.note(ip(1), "unknown", "/b", next), Verdict::Record);
        assert_eq!(denials.note(ip(1), "unknown", "/b", next), Verdict::Count);
        let written = denials.drain(next, false);
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(
            (
                written[0].count,
                written[0].window,
                written[0].target.as_str()
            ),
            (4, WINDOW, "/a")
        );
        let at_stop = denials.drain(next + Duration::from_secs(1), true);
        assert_eq!(at_stop.len(), 1, "{at_stop:?}");
        assert_eq!((at_stop[0].count, at_stop[0].target.as_str()), (1, "/b"));
    }

    #[test]
    fn sources_past_the_bound_share_one_bucket() {
        let denials = Denials::new(3);
        let t0 = Instant::now();
        for n in 0..MAX_SOURCES {
            let a = u32::try_from(n).unwrap();
            let source = Some(IpAddr::from(a.to_be_bytes()));
            denials.note(source, "unknown", "/", t0);
        }
        let newcomer = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        assert_eq!(
            denials.note(newcomer(1), "unknown", "/", t0),
            Verdict::Record
        );
        assert_eq!(
            denials.note(newcomer(2), "unknown", "/", t0),
            Verdict::Count
        );
        assert_eq!(
            denials.note(newcomer(3), "unknown", "/", t0),
            Verdict::Count
        );
        assert!(matches!(
            denials.note(newcomer(4), "unknown", "/", t0),
            Verdict::Throttle { .. }
        ));
        let drained = denials.drain(t0 + WINDOW, false);
        assert!(drained.iter().any(|a| a.source.is_none() && a.count == 3));
        assert!(denials.drain(t0 + WINDOW, true).is_empty(), "all forgotten");
    }
}
