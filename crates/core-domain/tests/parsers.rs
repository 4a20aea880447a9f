//! Properties of every parser of client input in this crate: what the rules
//! accept is accepted, anything else is refused with a validation error,
//! and nothing panics.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sofiia_core_domain::{
    ChatId, ChatTitle, Cursor, CursorKeys, NodeId, OperatorText, PageLimit, Timestamp,
};

fn keys() -> CursorKeys {
    CursorKeys::new(["the property tests' cursor key, 32+"]).unwrap()
}

fn chat_id_rule(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
}

proptest! {
    #[test]
    fn chat_ids_of_the_pattern_are_accepted(s in "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}") {
        let id = ChatId::new(s.clone()).unwrap();
        prop_assert_eq!(id.as_str(), s.as_str());
    }

    #[test]
    fn any_string_is_a_chat_id_exactly_when_it_matches(s in "\\PC{0,140}|[A-Za-z0-9._:/ -]{0,140}") {
        prop_assert_eq!(ChatId::new(s.clone()).is_ok(), chat_id_rule(&s));
    }

    #[test]
    fn node_names_follow_their_pattern(s in "[A-Za-z0-9_-]{0,40}") {
        let rule = !s.is_empty()
            && s.len() <= 32
            && s.as_bytes()[0].is_ascii_alphanumeric();
        prop_assert_eq!(NodeId::new(s).is_ok(), rule);
    }

    #[test]
    fn page_limits_are_1_to_200_in_plain_digits(n in 0u64..100_000) {
        let parsed = PageLimit::parse(&n.to_string());
        prop_assert_eq!(parsed.is_ok(), (1..=200).contains(&n));
        if let Ok(limit) = parsed {
            prop_assert_eq!(limit.get() as u64, n);
        }
    }

    #[test]
    fn page_limits_refuse_anything_but_digits(s in "[ +.eE0-9a-z-]{0,8}") {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits {
            prop_assert!(PageLimit::parse(&s).is_err());
        }
    }

    #[test]
    fn cursors_round_trip_and_any_other_string_is_refused(
        ts in 0i64..=253_402_300_799_999,
        id in "[A-Za-z0-9._:-]{1,255}",
        scope in "[a-z:0-9-]{1,40}",
        garbage in "\\PC{0,80}",
    ) {
        let cursor = Cursor::new(Timestamp::from_unix_millis(ts).unwrap(), id);
        let wire = keys().encode(&cursor, &scope);
        prop_assert_eq!(keys().decode(&wire, &scope).unwrap(), cursor);
        let other_scope = format!("{scope}x");
        prop_assert!(keys().decode(&wire, &other_scope).is_err());
        if garbage != wire {
            prop_assert!(keys().decode(&garbage, &scope).is_err());
        }
    }

    #[test]
    fn a_cursor_with_any_byte_changed_is_refused(
        id in "[a-z0-9-]{1,40}",
        at in any::<prop::sample::Index>(),
        with in "[A-Za-z0-9_-]",
    ) {
        let wire = keys().encode(&Cursor::new(Timestamp::MIN, id), "chats");
        let i = at.index(wire.len());
        let mut edited = wire.clone().into_bytes();
        edited[i] = with.as_bytes()[0];
        let edited = String::from_utf8(edited).unwrap();
        if edited != wire {
            prop_assert!(keys().decode(&edited, "chats").is_err());
        }
    }

    #[test]
    fn times_round_trip_through_rfc_3339(ts in 0i64..=253_402_300_799_999) {
        let t = Timestamp::from_unix_millis(ts).unwrap();
        prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn times_with_offsets_are_the_same_instant(
        ts in 0i64..4_102_444_800_000,
        offset_min in -1439i32..=1439,
    ) {
        let t = Timestamp::from_unix_millis(ts).unwrap();
        let shifted = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1_000_000)
            .unwrap()
            .to_offset(time::UtcOffset::from_whole_seconds(offset_min * 60).unwrap());
        let text = shifted.format(&time::format_description::well_known::Rfc3339).unwrap();
        prop_assert_eq!(Timestamp::parse_rfc3339(&text).unwrap(), t);
    }

    #[test]
    fn time_parsing_never_panics(s in "\\PC{0,40}|[0-9T:.Z+-]{0,40}") {
        let _ = Timestamp::parse_rfc3339(&s);
    }

    #[test]
    fn operator_text_is_1_to_16000_characters_without_control_characters(
        s in "\\PC{0,64}|[\\x00-\\x1f a-z]{0,16}",
    ) {
        let ok = !s.is_empty()
            && s.chars().count() <= 16_000
            && !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
        prop_assert_eq!(OperatorText::new(s).is_ok(), ok);
    }

    #[test]
    fn titles_are_one_line(s in "[a-z\\n\\t ]{1,20}") {
        let ok = !s.chars().any(char::is_control);
        prop_assert_eq!(ChatTitle::new(s).is_ok(), ok);
    }
}
