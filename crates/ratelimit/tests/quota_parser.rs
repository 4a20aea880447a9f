//! Properties of the quota parser (`SOFIIA_RATE_LIMIT_*` values): every
//! quota it accepts prints back as the same text, every spelling it refuses
//! is refused, and nothing panics.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use sofiia_ratelimit::{Quota, QuotaError};

fn period_of(unit: &str) -> Duration {
    match unit {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        _ => Duration::from_secs(3600),
    }
}

proptest! {
    #[test]
    fn accepted_quotas_print_back_as_written(
        count in 1u32..=1_000_000,
        unit in prop_oneof![Just("s"), Just("min"), Just("h")],
    ) {
        let text = format!("{count}/{unit}");
        let quota = Quota::parse(&text).unwrap();
        prop_assert_eq!(quota.count().get(), count);
        prop_assert_eq!(quota.period(), period_of(unit));
        prop_assert_eq!(quota.to_string(), text.clone());
        prop_assert_eq!(text.parse::<Quota>().unwrap(), quota);
    }

    #[test]
    fn the_limiter_never_allows_more_than_the_quota(
        count in 1u32..=1_000_000,
        unit in prop_oneof![Just("s"), Just("min"), Just("h")],
    ) {
        let quota = Quota::parse(&format!("{count}/{unit}")).unwrap();
        // count · T never exceeds the period, and T is at least 1 µs.
        prop_assert!(quota.emission_interval() >= Duration::from_micros(1));
        prop_assert!(quota.emission_interval() * count <= quota.period());
        prop_assert!(quota.burst_tolerance() < quota.period());
    }

    #[test]
    fn leading_zeros_signs_and_spaces_are_refused(
        count in 1u32..=1_000_000,
        unit in prop_oneof![Just("s"), Just("min"), Just("h")],
        spoil in 0usize..4,
    ) {
        let text = match spoil {
            0 => format!("0{count}/{unit}"),
            1 => format!("+{count}/{unit}"),
            2 => format!("{count} /{unit}"),
            _ => format!("{count}/{}", unit.to_uppercase()),
        };
        prop_assert!(Quota::parse(&text).is_err(), "{text} was accepted");
    }

    #[test]
    fn counts_beyond_the_resolution_are_too_fine(count in 1_000_001u32..) {
        prop_assert_eq!(Quota::parse(&format!("{count}/s")), Err(QuotaError::TooFine));
    }

    #[test]
    fn any_text_parses_exactly_when_it_prints_back(s in "[0-9]{0,12}/(s|min|h|m|sec)|\\PC{0,40}") {
        // Nothing panics, and an accepted text is its own canonical spelling.
        if let Ok(quota) = Quota::parse(&s) {
            prop_assert_eq!(quota.to_string(), s);
        }
    }
}
