//! Points in time and the injected clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::error::{Field, ValidationError};

/// A point in time with millisecond precision, in UTC.
///
/// Its text form is RFC 3339 with exactly three fractional digits and a `Z`
/// suffix (`2026-11-26T15:00:00.000Z`), which also sorts as text in time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest representable time, the Unix epoch.
    pub const MIN: Timestamp = Timestamp(0);
    /// The latest representable time, `9999-12-31T23:59:59.999Z`.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The time `millis` milliseconds after the Unix epoch.
    ///
    /// # Errors
    ///
    /// [`ValidationError::OutOfRange`] outside [`Timestamp::MIN`]..=[`Timestamp::MAX`].
    pub fn from_unix_millis(millis: i64) -> Result<Self, ValidationError> {
        if (Self::MIN.0..=Self::MAX.0).contains(&millis) {
            Ok(Self(millis))
        } else {
            Err(ValidationError::OutOfRange {
                field: Field::Timestamp,
                min: Self::MIN.0,
                max: Self::MAX.0,
            })
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_unix_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 time with any offset; a finer fraction than
    /// milliseconds is truncated.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] when `s` is not RFC 3339 or lies outside the
    /// representable range.
    pub fn parse_rfc3339(s: &str) -> Result<Self, ValidationError> {
        let parsed =
            OffsetDateTime::parse(s, &Rfc3339).map_err(|_| ValidationError::Malformed {
                field: Field::Timestamp,
                reason: "must be an RFC 3339 date-time such as 2026-11-26T15:00:00Z",
            })?;
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        let millis = i64::try_from(millis).map_err(|_| ValidationError::OutOfRange {
            field: Field::Timestamp,
            min: Self::MIN.0,
            max: Self::MAX.0,
        })?;
        Self::from_unix_millis(millis)
    }

    /// This time moved forward by `d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let add = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(add).min(Self::MAX.0))
    }

    /// This time moved back by `d`, saturating at [`Timestamp::MIN`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        let sub = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(sub).max(Self::MIN.0))
    }

    /// How long after `earlier` this time is; zero if it is not later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    fn to_offset_date_time(self) -> OffsetDateTime {
        // In range by construction: MIN..=MAX are valid `time` values.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_offset_date_time();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&value).map_err(serde::de::Error::custom)
    }
}

/// Where domain code gets the current time.
///
/// Production uses [`SystemClock`]; tests use [`ManualClock`] to freeze time,
/// for example to create many rows with one timestamp.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A clock as a trait object.
pub type DynClock = dyn Clock;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let millis = i64::try_from(millis).unwrap_or(Timestamp::MAX.0);
        Timestamp(millis.clamp(Timestamp::MIN.0, Timestamp::MAX.0))
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.0))
    }

    /// Sets the time to `t` (which may move it backwards).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let add = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(add).min(Timestamp::MAX.0))
            });
    }
}

impl Default for ManualClock {
    /// A clock frozen at `2026-01-01T00:00:00.000Z`.
    fn default() -> Self {
        Self::new(Timestamp(1_767_225_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc_with_millis() {
        assert_eq!(Timestamp::MIN.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        let t = Timestamp::from_unix_millis(1_764_169_200_123).unwrap();
        assert_eq!(t.to_string(), "2025-11-26T15:00:00.123Z");
    }

    #[test]
    fn parses_any_offset_and_round_trips() {
        let t = Timestamp::parse_rfc3339("2025-11-26T17:00:00.123456+02:00").unwrap();
        assert_eq!(t.to_string(), "2025-11-26T15:00:00.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
        for bad in ["", "yesterday", "2025-11-26", "1969-12-31T23:59:59Z"] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::default();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(
            clock.now().duration_since(start),
            Duration::from_millis(1500)
        );
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn system_clock_is_after_2025() {
        assert!(SystemClock.now() > Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap());
    }
}
