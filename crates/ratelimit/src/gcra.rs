//! The GCRA arithmetic both backends share.
//!
//! A bucket's state is its theoretical arrival time (TAT), in microseconds
//! since the Unix epoch; no state means "TAT ≤ now", a full bucket. With T
//! the quota's emission interval and W = count · T its window, a request at
//! `now` is allowed when `max(TAT, now) + T − now ≤ W`, and charging it moves
//! the TAT to `max(TAT, now) + T`. The Redis script (`redis.lua`) repeats
//! exactly this; keep them in step.

use std::time::Duration;

use sofiia_core_domain::Timestamp;

use crate::{Charge, Decision, PolicyState};

/// `t` in microseconds since the epoch (never negative: `Timestamp` starts
/// at the epoch).
pub(crate) fn micros(t: Timestamp) -> u64 {
    u64::try_from(t.as_unix_millis())
        .unwrap_or(0)
        .saturating_mul(1000)
}

/// Whether a charge under `charge.quota` is allowed when the bucket's TAT,
/// raised to at least `now`, is `tat`.
pub(crate) fn admits(charge: &Charge, now: u64, tat: u64) -> bool {
    let q = &charge.quota;
    (tat.saturating_add(q.interval_micros())).saturating_sub(now) <= q.window_micros()
}

/// The TAT after charging `charge` on a bucket whose TAT, raised to at least
/// `now`, is `tat`.
pub(crate) fn charged(charge: &Charge, tat: u64) -> u64 {
    tat.saturating_add(charge.quota.interval_micros())
}

/// The decision over `charges`, given each bucket's TAT (raised to at least
/// `now`) just before its charge, as a backend computed them in one atomic
/// step. A bucket named twice has, for its second charge, the TAT after its
/// first.
pub(crate) fn decide(charges: &[Charge], now: u64, tats: &[u64]) -> Decision {
    decide_at(charges, &vec![now; charges.len()], tats)
}

/// [`decide`] where each charge's bucket was read at its own time
/// (`nows[i]`): buckets on different Redis Cluster primaries, each read on
/// its primary's clock.
pub(crate) fn decide_at(charges: &[Charge], nows: &[u64], tats: &[u64]) -> Decision {
    let allowed = charges
        .iter()
        .zip(nows.iter().zip(tats))
        .all(|(c, (&now, &tat))| admits(c, now, tat));
    let policies = charges
        .iter()
        .zip(nows.iter().zip(tats))
        .map(|(c, (&now, &tat))| state(c, now, tat, allowed))
        .collect();
    Decision { allowed, policies }
}

/// One policy's state after a decision that charged its bucket (`applied`)
/// or charged nothing.
fn state(charge: &Charge, now: u64, tat: u64, applied: bool) -> PolicyState {
    let q = &charge.quota;
    let interval = q.interval_micros();
    let window = q.window_micros();
    let allowed = admits(charge, now, tat);
    let after = if applied { charged(charge, tat) } else { tat };
    // Room left in the window, in whole intervals. A TAT beyond the window
    // (left by a larger quota before a configuration change) leaves none.
    let remaining = (now.saturating_add(window)).saturating_sub(after) / interval;
    let retry_after = if allowed {
        0
    } else {
        // The wait until `tat + T − now ≤ W` holds.
        (tat.saturating_add(interval))
            .saturating_sub(window)
            .saturating_sub(now)
    };
    PolicyState {
        policy: charge.policy,
        quota: charge.quota,
        allowed,
        // At most `count`, which is a u32.
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_after: Duration::from_micros(after.saturating_sub(now)),
        retry_after: Duration::from_micros(retry_after),
    }
}
