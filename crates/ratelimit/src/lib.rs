//! Exact rate limits over several policies at once.
//!
//! A request is usually limited by more than one quota: in sofiia-console a
//! send counts against its chat's quota and its operator's quota. A
//! [`RateLimiter`] decides all of them as one: either every bucket is charged
//! or none is, so a request refused by one policy never spends another's
//! quota. The answer carries, per policy, what remains and how long to wait,
//! for `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields
//! ([`policy_header`], [`ratelimit_header`]).
//!
//! Quotas are `N/s`, `N/min` or `N/h` with a burst of N ([`Quota`]), enforced
//! with GCRA (the generic cell rate algorithm): N requests may come at once,
//! then one more every period/N.
//!
//! Backends: [`MemoryRateLimiter`] (one process, bounded memory) and
//! [`RedisRateLimiter`] (feature `redis`; exact across any number of
//! processes sharing one Redis). Both pass the behavioural suite in
//! [`testing`], which an embedder can run against a backend of their own with
//! [`rate_limiter_tests!`].
//!
//! ```
//! use std::sync::Arc;
//! use sofiia_core_domain::SystemClock;
//! use sofiia_ratelimit::{
//!     Charge, DynRateLimiter, MemoryRateLimiter, Quota, policy_header, ratelimit_header,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start: quotas from configuration, one limiter for the process.
//! let chat_quota: Quota = "20/min".parse()?;
//! let operator_quota: Quota = "60/min".parse()?;
//! let limiter: Arc<DynRateLimiter> =
//!     Arc::new(MemoryRateLimiter::new(Arc::new(SystemClock), 100_000));
//!
//! // Per request: one decision over both policies.
//! let decision = limiter
//!     .check(&[
//!         Charge::new("chat", "incident-42", chat_quota),
//!         Charge::new("operator", "alice", operator_quota),
//!     ])
//!     .await?;
//! assert!(decision.allowed);
//! assert_eq!(
//!     policy_header(&decision.policies),
//!     r#""chat";q=20;w=60, "operator";q=60;w=60"#
//! );
//! assert_eq!(
//!     ratelimit_header(&decision.policies),
//!     r#""chat";r=19;t=3, "operator";r=59;t=1"#
//! );
//! if let Some(wait) = decision.retry_after_secs() {
//!     // Refused: answer 429 with `Retry-After: {wait}`; no bucket was charged.
//!     # let _ = wait;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Why not `governor`
//!
//! The in-memory backend implements GCRA itself instead of using the
//! `governor` crate. governor charges a keyed limiter in one step
//! (`check_key`) and offers neither a peek nor a refund, so charging the chat
//! limiter and then finding the operator limiter spent leaves the chat
//! charged: the all-or-none decision this crate promises cannot be built on
//! it without a second, shadow copy of its state. Its `StateStore` updates one
//! key at a time, it measures time against its own monotonic `Clock` rather
//! than the injected [`Clock`](sofiia_core_domain::Clock), and its cleanup
//! (`retain_recent`) has no capacity bound. The arithmetic is a few lines
//! (see [`Quota::emission_interval`]), and the Redis backend's Lua script
//! must repeat it anyway; one implementation here, checked by one suite for
//! both backends, is the safer choice.
//!
//! # Time and precision
//!
//! GCRA state is one *theoretical arrival time* (TAT) per bucket, kept in
//! whole microseconds, so that the Redis script's Lua numbers (doubles) hold
//! it exactly. The emission interval is the quota's period divided by its
//! count, rounded down to a microsecond, and the burst window is exactly
//! `count` intervals, so `count` requests at once are always allowed and the
//! `count + 1`-th never is, whatever the rounding.
//!
//! # Features
//!
//! - `redis` (default): [`RedisRateLimiter`], [`RedisOptions`] and
//!   [`TimeSource`];
//! - `actix`: the [`actix`] module, response headers and a
//!   `429 application/problem+json` for actix-web embedders;
//! - `testing`: the [`testing`] module and [`rate_limiter_tests!`]; it brings
//!   in tokio's multi-threaded runtime.
//!
// Where a feature is off, its items do not exist; point their links at the
// section that says how to enable them instead of leaving them broken.
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisRateLimiter`]: #features\n[`RedisOptions`]: #features\n[`TimeSource`]: #features"
)]
#![cfg_attr(not(feature = "actix"), doc = "[`actix`]: #features")]
#![cfg_attr(
    not(any(test, feature = "testing")),
    doc = "[`testing`]: #features\n[`rate_limiter_tests!`]: #features"
)]

use std::error::Error as StdError;
use std::fmt::{self, Debug, Write as _};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "actix")]
pub mod actix;
mod gcra;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::memory::MemoryRateLimiter;
#[cfg(feature = "redis")]
pub use crate::redis::{RedisOptions, RedisRateLimiter, TimeSource};
#[cfg(feature = "redis")]
/// The shared Redis connection the Redis backend is built on.
pub use sofiia_redis_support::RedisConnection;

/// The name of the IETF field that describes the policies.
pub const RATELIMIT_POLICY_HEADER: &str = "RateLimit-Policy";
/// The name of the IETF field that describes the policies' current state.
pub const RATELIMIT_HEADER: &str = "RateLimit";

/// A quota: `count` requests per `period`, with a burst of `count`.
///
/// Its text form is `N/s`, `N/min` or `N/h`:
///
/// ```
/// use std::time::Duration;
/// use sofiia_ratelimit::Quota;
///
/// let quota: Quota = "20/min".parse()?;
/// assert_eq!(quota, Quota::per_minute(20)?);
/// assert_eq!(quota.count().get(), 20);
/// assert_eq!(quota.period(), Duration::from_secs(60));
/// assert_eq!(quota.emission_interval(), Duration::from_secs(3));
/// assert_eq!(quota.to_string(), "20/min");
/// assert!("20 / min".parse::<Quota>().is_err());
/// # Ok::<(), sofiia_ratelimit::QuotaError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: NonZeroU32,
    period: Duration,
}

/// Why a [`Quota`] could not be made or parsed.
///
/// It never carries the rejected text, so it is safe to log and to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The text is not of the form `N/s`, `N/min` or `N/h`.
    #[error("a quota must have the form N/s, N/min or N/h, such as 20/min")]
    Malformed,
    /// `N` is not a decimal integer without sign or leading zeros that fits
    /// in 32 bits.
    #[error("a quota's count must be a positive decimal integer of at most 4294967295")]
    InvalidCount,
    /// `N` is zero.
    #[error("a quota's count must be positive")]
    ZeroCount,
    /// The unit is not `s`, `min` or `h`.
    #[error("a quota's unit must be s, min or h")]
    UnknownUnit,
    /// The period is shorter than a microsecond or longer than
    /// [`Quota::MAX_PERIOD`].
    #[error("a quota's period must be between 1 µs and 366 days")]
    PeriodOutOfRange,
    /// More than one request per microsecond, finer than the limiter's
    /// resolution.
    #[error("a quota may allow at most one request per microsecond")]
    TooFine,
}

impl Quota {
    /// The longest period a quota may have. It keeps every theoretical
    /// arrival time exactly representable in the Redis script's Lua numbers.
    pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

    /// `count` requests per `period`, with a burst of `count`. The period is
    /// truncated to whole microseconds, the limiter's resolution.
    ///
    /// # Errors
    ///
    /// [`QuotaError::PeriodOutOfRange`] for a period under 1 µs or over
    /// [`Quota::MAX_PERIOD`]; [`QuotaError::TooFine`] when `count` exceeds
    /// the period in microseconds.
    pub fn new(count: NonZeroU32, period: Duration) -> Result<Self, QuotaError> {
        let micros = period.as_micros();
        if micros == 0 || period > Self::MAX_PERIOD {
            return Err(QuotaError::PeriodOutOfRange);
        }
        if u128::from(count.get()) > micros {
            return Err(QuotaError::TooFine);
        }
        // In range: at most MAX_PERIOD, about 3.2e13 µs.
        let period = Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
        Ok(Self { count, period })
    }

    fn per(count: u32, period: Duration) -> Result<Self, QuotaError> {
        let count = NonZeroU32::new(count).ok_or(QuotaError::ZeroCount)?;
        Self::new(count, period)
    }

    /// `count` requests per second (`N/s`).
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`] for 0; [`QuotaError::TooFine`] above one
    /// million.
    pub fn per_second(count: u32) -> Result<Self, QuotaError> {
        Self::per(count, Duration::from_secs(1))
    }

    /// `count` requests per minute (`N/min`).
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`] for 0; [`QuotaError::TooFine`] above 60
    /// million.
    pub fn per_minute(count: u32) -> Result<Self, QuotaError> {
        Self::per(count, Duration::from_secs(60))
    }

    /// `count` requests per hour (`N/h`).
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`] for 0.
    pub fn per_hour(count: u32) -> Result<Self, QuotaError> {
        Self::per(count, Duration::from_secs(3600))
    }

    /// Parses `N/s`, `N/min` or `N/h` strictly: `N` a positive decimal
    /// integer without sign or leading zeros, no spaces, units in lower case.
    ///
    /// # Errors
    ///
    /// A [`QuotaError`] saying what is wrong; it never echoes the input.
    pub fn parse(s: &str) -> Result<Self, QuotaError> {
        let (count, unit) = s.split_once('/').ok_or(QuotaError::Malformed)?;
        let period = match unit {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(QuotaError::UnknownUnit),
        };
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuotaError::InvalidCount);
        }
        if count == "0" {
            return Err(QuotaError::ZeroCount);
        }
        // One spelling per quota: `020/min` is rejected, not read as 20.
        if count.starts_with('0') {
            return Err(QuotaError::InvalidCount);
        }
        let count: u32 = count.parse().map_err(|_| QuotaError::InvalidCount)?;
        Self::per(count, period)
    }

    /// How many requests per period, and how many may come at once.
    pub fn count(&self) -> NonZeroU32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// GCRA's emission interval T: the period divided by the count, rounded
    /// down to a microsecond. A spent bucket gains one request every T.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.interval_micros())
    }

    /// GCRA's burst tolerance τ = (count − 1) · T: how far ahead of now a
    /// bucket's theoretical arrival time may be for a request to still be
    /// allowed. With it `count` requests may come at once.
    pub fn burst_tolerance(&self) -> Duration {
        Duration::from_micros(self.window_micros() - self.interval_micros())
    }

    /// T in microseconds; at least 1 by construction.
    pub(crate) fn interval_micros(&self) -> u64 {
        // `period` is whole microseconds, at most MAX_PERIOD.
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        period / u64::from(self.count.get())
    }

    /// count · T in microseconds: the farthest ahead of now a bucket's
    /// theoretical arrival time may be after a charge.
    pub(crate) fn window_micros(&self) -> u64 {
        self.interval_micros() * u64::from(self.count.get())
    }
}

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quota {
    /// `N/s`, `N/min` or `N/h`; any other period as `N per <period>`, which
    /// [`Quota::parse`] does not accept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_micros() {
            1_000_000 => write!(f, "{}/s", self.count),
            60_000_000 => write!(f, "{}/min", self.count),
            3_600_000_000 => write!(f, "{}/h", self.count),
            _ => write!(f, "{} per {:?}", self.count, self.period),
        }
    }
}

/// One policy of a decision: which bucket, under which quota.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Charge {
    /// The policy's name, such as `chat` or `operator`; names the policy in
    /// answers and headers.
    pub policy: &'static str,
    /// The bucket within the policy, such as the chat id.
    pub key: String,
    /// The policy's quota.
    pub quota: Quota,
}

impl Charge {
    /// A charge of one request to `key`'s bucket of `policy`.
    pub fn new(policy: &'static str, key: impl Into<String>, quota: Quota) -> Self {
        Self {
            policy,
            key: key.into(),
            quota,
        }
    }
}

/// The state of one policy after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy's name.
    pub policy: &'static str,
    /// Its quota.
    pub quota: Quota,
    /// Whether this policy alone would have allowed the request.
    pub allowed: bool,
    /// Requests that could be made right now after this decision.
    pub remaining: u32,
    /// Until the bucket is full again (the quota fully restored).
    pub reset_after: Duration,
    /// When refused: until this policy allows one request again.
    pub retry_after: Duration,
}

/// The answer to one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed; if so, every bucket was charged,
    /// otherwise none was.
    pub allowed: bool,
    /// One entry per charge, in the order given.
    pub policies: Vec<PolicyState>,
}

impl Decision {
    /// The policies that refused the request, in the order given.
    pub fn refusing(&self) -> impl Iterator<Item = &PolicyState> {
        self.policies.iter().filter(|p| !p.allowed)
    }

    /// How long until every refusing policy allows a request again: the
    /// longest `retry_after` among them; zero when nothing refused.
    ///
    /// Retrying then is no promise: other requests may spend the quota
    /// first.
    pub fn retry_after(&self) -> Duration {
        self.refusing()
            .map(|p| p.retry_after)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up and at
    /// least 1, as `Retry-After` wants it; `None` when nothing refused (and
    /// no `Retry-After` is due).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.refusing()
            .next()
            .map(|_| ceil_secs(self.retry_after()).max(1))
    }

    /// The refusing policy that keeps the request waiting longest (the
    /// first such on a tie): the one to name in an answer.
    pub fn refused_by(&self) -> Option<&PolicyState> {
        self.refusing()
            .fold(None, |best: Option<&PolicyState>, p| match best {
                Some(b) if b.retry_after >= p.retry_after => Some(b),
                _ => Some(p),
            })
    }
}

/// Whole seconds in `d`, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Writes `name` as a structured-field string (RFC 9651 §3.3.3).
///
/// Policy names are code, not user input; a character a structured-field
/// string cannot hold (outside printable ASCII) becomes `_` so the field
/// stays well-formed.
fn write_sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

fn sf_list(states: &[PolicyState], mut params: impl FnMut(&mut String, &PolicyState)) -> String {
    let mut out = String::new();
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_sf_string(&mut out, state.policy);
        params(&mut out, state);
    }
    out
}

/// The value of the `RateLimit-Policy` field
/// (draft-ietf-httpapi-ratelimit-headers-10) for these policies: per policy
/// its quota `q` and window `w` in seconds (rounded up).
///
/// ```
/// # use sofiia_ratelimit::{PolicyState, Quota, policy_header};
/// # use std::time::Duration;
/// let state = PolicyState {
///     policy: "chat",
///     quota: Quota::per_minute(20)?,
///     allowed: true,
///     remaining: 19,
///     reset_after: Duration::from_secs(3),
///     retry_after: Duration::ZERO,
/// };
/// assert_eq!(policy_header(&[state]), r#""chat";q=20;w=60"#);
/// # Ok::<(), sofiia_ratelimit::QuotaError>(())
/// ```
pub fn policy_header(states: &[PolicyState]) -> String {
    sf_list(states, |out, s| {
        // Writing to a String cannot fail.
        let _ = write!(out, ";q={};w={}", s.quota.count, ceil_secs(s.quota.period));
    })
}

/// The value of the `RateLimit` field
/// (draft-ietf-httpapi-ratelimit-headers-10) for these policies: per policy
/// the requests remaining `r` and the seconds `t` until its quota is fully
/// restored (rounded up).
///
/// ```
/// # use sofiia_ratelimit::{PolicyState, Quota, ratelimit_header};
/// # use std::time::Duration;
/// let state = PolicyState {
///     policy: "chat",
///     quota: Quota::per_minute(20)?,
///     allowed: true,
///     remaining: 19,
///     reset_after: Duration::from_millis(2500),
///     retry_after: Duration::ZERO,
/// };
/// assert_eq!(ratelimit_header(&[state]), r#""chat";r=19;t=3"#);
/// # Ok::<(), sofiia_ratelimit::QuotaError>(())
/// ```
pub fn ratelimit_header(states: &[PolicyState]) -> String {
    sf_list(states, |out, s| {
        // Writing to a String cannot fail.
        let _ = write!(out, ";r={};t={}", s.remaining, ceil_secs(s.reset_after));
    })
}

/// What can go wrong in a rate limiter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The backend cannot be reached.
    #[error("the rate limiter is unavailable")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The backend failed in a way a retry will not fix.
    #[error("the rate limiter failed")]
    Backend {
        /// What the backend reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// Result of a rate limiter operation.
pub type Result<T, E = RateLimitError> = std::result::Result<T, E>;

/// Decides requests against several policies at once.
#[async_trait]
pub trait RateLimiter: Debug + Send + Sync + 'static {
    /// Checks every charge and, if all allow, charges each bucket one
    /// request; otherwise charges none. Atomic with respect to every other
    /// decision on the same buckets.
    ///
    /// Buckets are named by `(policy, key)`. A bucket named twice in one
    /// decision is charged twice, the second charge seeing the first. No
    /// charges at all is an allowed decision with no policies.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Unavailable`] or [`RateLimitError::Backend`].
    async fn check(&self, charges: &[Charge]) -> Result<Decision>;

    /// Checks that the backend answers, for readiness probes.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Unavailable`] or [`RateLimitError::Backend`].
    async fn ping(&self) -> Result<()>;
}

/// A rate limiter as a trait object.
pub type DynRateLimiter = dyn RateLimiter;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_displays_them_back() {
        for (text, count, secs) in [
            ("1/s", 1, 1),
            ("20/min", 20, 60),
            ("60/min", 60, 60),
            ("4/h", 4, 3600),
            ("1000000/s", 1_000_000, 1),
            ("3600000000/h", 3_600_000_000, 3600),
        ] {
            let quota = Quota::parse(text).unwrap();
            assert_eq!(quota.count().get(), count, "{text}");
            assert_eq!(quota.period(), Duration::from_secs(secs), "{text}");
            assert_eq!(quota.to_string(), text);
            assert_eq!(text.parse::<Quota>().unwrap(), quota);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_precise_error() {
        use QuotaError::*;
        for (text, err) in [
            ("", Malformed),
            ("20", Malformed),
            ("20min", Malformed),
            ("20/", UnknownUnit),
            ("20/m", UnknownUnit),
            ("20/MIN", UnknownUnit),
            ("20/min ", UnknownUnit),
            ("20/sec", UnknownUnit),
            ("20/d", UnknownUnit),
            ("20/min/s", UnknownUnit),
            ("/min", InvalidCount),
            (" 20/min", InvalidCount),
            ("20 /min", InvalidCount),
            ("+20/min", InvalidCount),
            ("-20/min", InvalidCount),
            ("2_0/min", InvalidCount),
            ("020/min", InvalidCount),
            ("1.5/s", InvalidCount),
            ("٣/s", InvalidCount),
            ("4294967296/h", InvalidCount),
            ("0/min", ZeroCount),
            ("1000001/s", TooFine),
            ("4294967295/h", TooFine),
        ] {
            assert_eq!(Quota::parse(text), Err(err), "{text:?}");
        }
    }

    #[test]
    fn constructors_validate_and_truncate_to_microseconds() {
        let one = NonZeroU32::MIN;
        assert_eq!(
            Quota::new(one, Duration::ZERO),
            Err(QuotaError::PeriodOutOfRange)
        );
        assert_eq!(
            Quota::new(one, Duration::from_nanos(999)),
            Err(QuotaError::PeriodOutOfRange)
        );
        assert_eq!(
            Quota::new(one, Quota::MAX_PERIOD + Duration::from_micros(1)),
            Err(QuotaError::PeriodOutOfRange)
        );
        assert!(Quota::new(one, Quota::MAX_PERIOD).is_ok());
        assert_eq!(
            Quota::new(one, Duration::from_nanos(1_500))
                .unwrap()
                .period(),
            Duration::from_micros(1)
        );
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroCount));
        assert_eq!(Quota::per_second(1_000_001), Err(QuotaError::TooFine));
        assert_eq!(Quota::per_minute(20), Quota::parse("20/min"));
        assert_eq!(Quota::per_hour(4), Quota::parse("4/h"));
        let odd = Quota::new(NonZeroU32::new(3).unwrap(), Duration::from_millis(1500)).unwrap();
        assert_eq!(odd.to_string(), "3 per 1.5s");
        assert!(odd.to_string().parse::<Quota>().is_err());
    }

    #[test]
    fn gcra_parameters_allow_exactly_count_at_once() {
        let q = Quota::per_minute(20).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_secs(3));
        assert_eq!(q.burst_tolerance(), Duration::from_secs(57));
        // Rounded down, the window is count intervals, never above the period.
        let q = Quota::per_second(3).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_micros(333_333));
        assert_eq!(q.burst_tolerance(), Duration::from_micros(666_666));
        assert_eq!(q.window_micros(), 999_999);
        let q = Quota::per_second(1).unwrap();
        assert_eq!(q.burst_tolerance(), Duration::ZERO);
    }

    fn state(policy: &'static str, quota: &str, allowed: bool, retry_ms: u64) -> PolicyState {
        PolicyState {
            policy,
            quota: quota.parse().unwrap(),
            allowed,
            remaining: if allowed { 7 } else { 0 },
            reset_after: Duration::from_millis(2_001),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let states = [
            state("chat", "20/min", true, 0),
            state("operator", "60/h", false, 1),
        ];
        assert_eq!(
            policy_header(&states),
            r#""chat";q=20;w=60, "operator";q=60;w=3600"#
        );
        assert_eq!(
            ratelimit_header(&states),
            r#""chat";r=7;t=3, "operator";r=0;t=3"#
        );
        assert_eq!(policy_header(&[]), "");
        let odd = [state("a\"b\\c\u{e9}", "1/s", true, 0)];
        assert_eq!(policy_header(&odd), r#""a\"b\\c_";q=1;w=1"#);
    }

    #[test]
    fn retry_after_is_the_longest_refusal() {
        let allowed = Decision {
            allowed: true,
            policies: vec![state("chat", "20/min", true, 0)],
        };
        assert_eq!(allowed.retry_after(), Duration::ZERO);
        assert_eq!(allowed.retry_after_secs(), None);
        assert!(allowed.refused_by().is_none());

        let refused = Decision {
            allowed: false,
            policies: vec![
                state("chat", "20/min", false, 1_500),
                state("big", "1/s", true, 0),
                state("operator", "60/min", false, 2_001),
                state("other", "60/min", false, 2_001),
            ],
        };
        assert_eq!(refused.retry_after(), Duration::from_millis(2_001));
        assert_eq!(refused.retry_after_secs(), Some(3));
        assert_eq!(refused.refused_by().map(|p| p.policy), Some("operator"));
        assert_eq!(refused.refusing().count(), 3);

        let tiny = Decision {
            allowed: false,
            policies: vec![state("chat", "20/min", false, 0)],
        };
        assert_eq!(tiny.retry_after_secs(), Some(1));
    }
}
