//! Properties of the canonical JSON of audit events, the bytes the hash
//! chain covers: it is JSON that reads back as the event, it does not depend
//! on the order details were inserted in, it is its own canonical form, and
//! every change to an event changes its hash.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Map, Value};
use sofiia_audit_store::{GENESIS_HASH, NewEvent, Outcome, canonical_form, compute_hash};
use sofiia_core_domain::Timestamp;

/// Any JSON value serde_json can hold, a few levels deep, with strings that
/// include quotes, backslashes, control characters and non-ASCII text.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON holds finite numbers", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}|[\"\\\\\\x00-\\x1f]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,8}", inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Details as distinct (name, value) entries, in the order they are inserted.
fn details() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map("[a-z_]{1,8}|\\PC{1,6}", json_value(), 0..6)
        .prop_map(|map| map.into_iter().collect())
        .prop_shuffle()
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}|[\"\\\\\\x00-\\x1f\\u{2028}\\u{10000}]{0,8}"
}

fn event() -> impl Strategy<Value = (NewEvent, Vec<(String, Value)>)> {
    (
        0i64..4_102_444_800_000,
        (text(), text(), text()),
        prop_oneof![
            Just(Outcome::Ok),
            Just(Outcome::Denied),
            Just(Outcome::Error)
        ],
        proptest::option::of(100u16..600),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        details(),
    )
        .prop_map(
            |(millis, (actor, action, target), outcome, status, optional, entries)| {
                let (request_id, node, source_ip, user_agent) = optional;
                let event = NewEvent {
                    ts: Timestamp::from_unix_millis(millis).unwrap(),
                    actor,
                    action,
                    target,
                    outcome,
                    status,
                    request_id,
                    node,
                    source_ip,
                    user_agent,
                    details: entries.iter().cloned().collect(),
                };
                (event, entries)
            },
        )
}

/// JSON equality as RFC 8785 sees it: numbers are equal when they are the
/// same number (`1.0` and `1` are), everything else structurally.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn the_canonical_form_reads_back_as_the_event((event, _) in event()) {
        let form = canonical_form(&event);
        let parsed: Value = serde_json::from_str(&form).unwrap();
        let original = serde_json::to_value(&event).unwrap();
        prop_assert!(same_json(&parsed, &original), "{parsed} is not {original}");
    }

    #[test]
    fn the_canonical_form_is_its_own_canonical_form((event, _) in event()) {
        let form = canonical_form(&event);
        let again: NewEvent = serde_json::from_str(&form).unwrap();
        prop_assert_eq!(canonical_form(&again), form);
    }

    #[test]
    fn insertion_order_of_details_does_not_change_the_hash(
        (event, entries) in event(),
    ) {
        // The same details inserted in the reverse order.
        let reordered = NewEvent {
            details: entries.into_iter().rev().collect::<Map<String, Value>>(),
            ..event.clone()
        };
        prop_assert_eq!(canonical_form(&reordered), canonical_form(&event));
        prop_assert_eq!(
            compute_hash(GENESIS_HASH, &reordered),
            compute_hash(GENESIS_HASH, &event)
        );
    }

    #[test]
    fn no_raw_control_character_reaches_the_form((event, _) in event()) {
        let form = canonical_form(&event);
        prop_assert!(!form.chars().any(|c| c < ' '), "{form:?}");
    }

    #[test]
    fn every_change_to_an_event_changes_its_hash(
        (event, _) in event(),
        field in 0usize..5,
        extra in "\\PC{1,4}",
    ) {
        let mut changed = event.clone();
        match field {
            0 => changed.actor.push_str(&extra),
            1 => changed.action.push_str(&extra),
            2 => changed.target.push_str(&extra),
            3 => {
                changed.status = Some(changed.status.map_or(200, |s| s ^ 1));
            }
            _ => {
                changed.details.insert(format!("{extra}!"), Value::Null);
            }
        }
        prop_assert_ne!(
            compute_hash(GENESIS_HASH, &changed),
            compute_hash(GENESIS_HASH, &event)
        );
    }
}
