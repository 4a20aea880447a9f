//! Properties of the `Idempotency-Key` header parser: both spellings of a
//! key (bare and RFC 8941 sf-string) name the same key, everything the rules
//! refuse is refused with the reason, and nothing panics.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sofiia_idempotency::{IdempotencyKey, KeyError};

/// The sf-string spelling of a key: quotes around it, `"` and `\` escaped.
fn quoted(key: &str) -> String {
    let mut out = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What the parser must say about a bare value.
fn bare_rule(s: &str) -> Result<(), KeyError> {
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        Err(KeyError::Malformed)
    } else if s.len() < IdempotencyKey::MIN_LEN {
        Err(KeyError::TooShort)
    } else if s.len() > IdempotencyKey::MAX_LEN {
        Err(KeyError::TooLong)
    } else {
        Ok(())
    }
}

proptest! {
    #[test]
    fn a_valid_key_reads_the_same_bare_and_quoted(key in "[!-~]{8,255}") {
        prop_assume!(!key.starts_with('"'));
        let bare = IdempotencyKey::parse_header(&key).unwrap();
        let sf = IdempotencyKey::parse_header(&quoted(&key)).unwrap();
        prop_assert_eq!(bare.as_str(), key.as_str());
        prop_assert_eq!(&bare, &sf);
        prop_assert_eq!(bare.to_string(), key);
    }

    #[test]
    fn a_key_starting_with_a_quote_is_only_spelled_quoted(rest in "[!-~]{7,254}") {
        let key = format!("\"{rest}");
        let parsed = IdempotencyKey::parse_header(&quoted(&key)).unwrap();
        prop_assert_eq!(parsed.as_str(), key.as_str());
    }

    #[test]
    fn bare_values_follow_the_rule(s in "[ -~]{0,300}|\\PC{0,20}|[\\x00-\\x1f\\x7f]{1,10}") {
        prop_assume!(!s.starts_with('"'));
        let got = IdempotencyKey::parse_header(&s).map(|k| k.as_str().to_owned());
        match bare_rule(&s) {
            Ok(()) => prop_assert_eq!(got, Ok(s)),
            Err(e) => prop_assert_eq!(got, Err(e)),
        }
    }

    #[test]
    fn a_quoted_value_with_a_space_is_refused_as_a_key(
        head in "[!-~&&[^\"\\\\]]{4}",
        tail in "[!-~&&[^\"\\\\]]{4}",
    ) {
        // An sf-string may hold spaces; a key may not.
        let value = format!("\"{head} {tail}\"");
        prop_assert_eq!(IdempotencyKey::parse_header(&value), Err(KeyError::Malformed));
    }

    #[test]
    fn broken_sf_strings_are_malformed(
        key in "[!-~&&[^\"\\\\]]{8,40}",
        broken in prop_oneof![
            Just("unterminated"),
            Just("trailing"),
            Just("bad escape"),
        ],
    ) {
        let value = match broken {
            "unterminated" => format!("\"{key}"),
            "trailing" => format!("\"{key}\"x"),
            _ => format!("\"{key}\\n\""),
        };
        prop_assert_eq!(IdempotencyKey::parse_header(&value), Err(KeyError::Malformed));
    }

    #[test]
    fn no_header_value_makes_the_parser_panic(s in "\\PC{0,300}|\"[ -~]{0,300}") {
        let _ = IdempotencyKey::parse_header(&s);
    }
}
