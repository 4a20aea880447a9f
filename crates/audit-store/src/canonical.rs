//! The canonical form of an event and the hash chain over it.
//!
//! The form is specified in the crate documentation (section "The hash
//! chain"); this module is its only implementation, used by every backend
//! on append and by every `verify`.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::{AuditEvent, BreakReason, NewEvent, Outcome, Verification};

/// The `prev_hash` of the first event of a chain that was never pruned: 64
/// zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical form of `event`: the bytes its hash covers after the
/// previous hash.
///
/// This is the RFC 8785 (JSON Canonicalization Scheme) serialisation of the
/// JSON object with the members `ts`, `actor`, `action`, `target`, `outcome`,
/// `status`, `request_id`, `node`, `source_ip`, `user_agent` and `details`,
/// exactly as they appear in the event's JSON (absent optional values are
/// `null`). See the crate documentation for the precise rules.
///
/// ```
/// use sofiia_audit_store::{NewEvent, Outcome, canonical_form};
/// use sofiia_core_domain::Timestamp;
///
/// let event = NewEvent {
///     ts: Timestamp::from_unix_millis(1_767_225_600_000)?,
///     actor: "alice".into(),
///     action: "chat.create".into(),
///     target: "incident-42".into(),
///     outcome: Outcome::Ok,
///     status: Some(201),
///     request_id: None,
///     node: None,
///     source_ip: None,
///     user_agent: None,
///     details: Default::default(),
/// };
/// assert_eq!(
///     canonical_form(&event),
///     r#"{"action":"chat.create","actor":"alice","details":{},"node":null,"outcome":"ok","request_id":null,"source_ip":null,"status":201,"target":"incident-42","ts":"2026-01-01T00:00:00.000Z","user_agent":null}"#
/// );
/// # Ok::<(), sofiia_core_domain::ValidationError>(())
/// ```
pub fn canonical_form(event: &NewEvent) -> String {
    let mut out = String::with_capacity(256);
    // The members in RFC 8785 order: sorted by UTF-16 code units, which for
    // these ASCII names is plain byte order (a unit test checks it).
    out.push_str("{\"action\":");
    write_string(&mut out, &event.action);
    out.push_str(",\"actor\":");
    write_string(&mut out, &event.actor);
    out.push_str(",\"details\":");
    write_object(&mut out, &event.details);
    out.push_str(",\"node\":");
    write_opt_string(&mut out, event.node.as_deref());
    out.push_str(",\"outcome\":");
    write_string(&mut out, outcome_str(event.outcome));
    out.push_str(",\"request_id\":");
    write_opt_string(&mut out, event.request_id.as_deref());
    out.push_str(",\"source_ip\":");
    write_opt_string(&mut out, event.source_ip.as_deref());
    out.push_str(",\"status\":");
    match event.status {
        Some(status) => {
            let _ = write!(out, "{status}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"target\":");
    write_string(&mut out, &event.target);
    out.push_str(",\"ts\":");
    write_string(&mut out, &event.ts.to_string());
    out.push_str(",\"user_agent\":");
    write_opt_string(&mut out, event.user_agent.as_deref());
    out.push('}');
    out
}

/// The hash of `event` when it follows an event whose hash is `prev_hash`
/// (or the anchor, or [`GENESIS_HASH`]): the lowercase hex SHA-256 of the
/// ASCII bytes of `prev_hash` followed by the UTF-8 bytes of
/// [`canonical_form`]`(event)`.
///
/// Every backend computes stored hashes with this function and
/// [`AuditStore::verify`](crate::AuditStore::verify) recomputes them with it.
///
/// ```
/// use sofiia_audit_store::{GENESIS_HASH, NewEvent, Outcome, compute_hash};
/// use sofiia_core_domain::Timestamp;
///
/// let event = NewEvent {
///     ts: Timestamp::from_unix_millis(1_767_225_600_000)?,
///     actor: "alice".into(),
///     action: "chat.create".into(),
///     target: "incident-42".into(),
///     outcome: Outcome::Ok,
///     status: Some(201),
///     request_id: None,
///     node: None,
///     source_ip: None,
///     user_agent: None,
///     details: Default::default(),
/// };
/// assert_eq!(
///     compute_hash(GENESIS_HASH, &event),
///     "2e2d7b62d653fb29c04a8e51d8002be94fc773a48667bfd97e3c1923d059dec8"
/// );
/// # Ok::<(), sofiia_core_domain::ValidationError>(())
/// ```
pub fn compute_hash(prev_hash: &str, event: &NewEvent) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical_form(event).as_bytes());
    hex(&hasher.finalize())
}

pub(crate) fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Denied => "denied",
        Outcome::Error => "error",
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn write_opt_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => write_string(out, s),
        None => out.push_str("null"),
    }
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and U+0000..U+001F are escaped, the
/// latter with the short forms where JSON has one and lowercase `\u00xx`
/// otherwise; everything else is written as its UTF-8 bytes.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 8785 §3.2.3: members sorted by their names as UTF-16 code units.
/// Sorted here rather than trusting the map's order, which is insertion
/// order if any crate in the build enables serde_json's `preserve_order`.
fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Integers exactly, in decimal (RFC 8785's form for every integer of
/// magnitude up to 2^53; larger ones are outside I-JSON, and written exactly
/// rather than rounded); other numbers as ECMAScript's `Number.prototype.toString`.
fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(f) = n.as_f64() {
        write_double(out, f);
    } else {
        // Unreachable without serde_json's `arbitrary_precision`, where the
        // number's own text is the best available form.
        out.push_str(&n.to_string());
    }
}

/// ECMAScript's Number::toString(x) (ECMA-262 §6.1.6.1.20), which RFC 8785
/// §3.2.2.3 prescribes.
fn write_double(out: &mut String, x: f64) {
    if x == 0.0 {
        // Also -0, which ECMAScript writes as "0".
        out.push('0');
        return;
    }
    if !x.is_finite() {
        // serde_json cannot hold these; JSON.stringify writes them as null.
        out.push_str("null");
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` without a precision gives the shortest digits that round
    // trip, nearest to x: the `s` and `k` of the ECMAScript algorithm.
    let sci = format!("{:e}", x.abs());
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        out.push_str(&sci);
        return;
    };
    let Ok(exponent) = exponent.parse::<i64>() else {
        out.push_str(&sci);
        return;
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // x = 0.d1d2...dk × 10^n
    let n = exponent + 1;
    let zeros = |count: i64| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&zeros(n - k));
    } else if 0 < n && n <= 21 {
        let split = usize::try_from(n).unwrap_or(0);
        out.push_str(&digits[..split]);
        out.push('.');
        out.push_str(&digits[split..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.push_str(&zeros(-n));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// Walks a chain in id order from its anchor, the one algorithm behind
/// every backend's `verify`.
#[derive(Debug)]
pub(crate) struct ChainCheck {
    expected_prev: String,
    events: u64,
}

impl ChainCheck {
    /// A walk that expects the first event to chain from `anchor`, or from
    /// [`GENESIS_HASH`] if nothing was ever pruned.
    pub(crate) fn new(anchor: Option<&str>) -> Self {
        Self {
            expected_prev: anchor.unwrap_or(GENESIS_HASH).to_owned(),
            events: 0,
        }
    }

    /// Checks the link to `prev_hash`, before the event is decoded: a row
    /// whose content is unreadable still has its link checked first.
    pub(crate) fn check_link(&self, prev_hash: &str) -> Option<BreakReason> {
        (prev_hash != self.expected_prev).then_some(BreakReason::PrevHashMismatch)
    }

    /// Checks the next event; what is wrong with it, if anything.
    pub(crate) fn check(&mut self, event: &AuditEvent) -> Option<BreakReason> {
        if let Some(reason) = self.check_link(&event.prev_hash) {
            return Some(reason);
        }
        if compute_hash(&event.prev_hash, &event.event) != event.hash {
            return Some(BreakReason::HashMismatch);
        }
        self.expected_prev.clone_from(&event.hash);
        self.events += 1;
        None
    }

    /// The verdict when every event passed.
    pub(crate) fn intact(&self) -> Verification {
        Verification::Intact {
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sofiia_core_domain::Timestamp;

    use super::*;

    fn vector_event() -> NewEvent {
        let details = json!({
            "zeta": [true, false, null, 1.5, -0.0, 100.0, 1e21, 1e-7, 123456789012_i64, -7],
            "alpha": {"b": "x\ny\u{1}\u{7f}é\"\\/", "a": {}},
            "\u{e000}": 1,
            "\u{1f600}": 2,
            "": "empty key"
        });
        let Value::Object(details) = details else {
            unreachable!()
        };
        NewEvent {
            ts: Timestamp::from_unix_millis(1_767_225_600_123).unwrap(),
            actor: "alice".into(),
            action: "chat.send".into(),
            target: "incident-42".into(),
            outcome: Outcome::Denied,
            status: Some(429),
            request_id: Some("req-1".into()),
            node: Some("NODA1".into()),
            source_ip: Some("127.0.0.1".into()),
            user_agent: None,
            details,
        }
    }

    /// The published test vector: an independent implementation must produce
    /// these exact bytes and hashes.
    #[test]
    fn test_vector() {
        let event = vector_event();
        let canonical = canonical_form(&event);
        assert_eq!(
            canonical,
            concat!(
                r#"{"action":"chat.send","actor":"alice","details":{"":"empty key","#,
                r#""alpha":{"a":{},"b":"x\ny\u0001"#,
                "\u{7f}é",
                r#"\"\\/"},"zeta":[true,false,null,1.5,0,100,1e+21,1e-7,123456789012,-7],"#,
                "\"\u{1f600}\":2,\"\u{e000}\":1},",
                r#""node":"NODA1","outcome":"denied","request_id":"req-1","source_ip":"127.0.0.1","#,
                r#""status":429,"target":"incident-42","ts":"2026-01-01T00:00:00.123Z","user_agent":null}"#
            )
        );
        // Also computed by an independent JavaScript implementation (keys
        // sorted with `Array.prototype.sort`, values with `JSON.stringify`).
        let first = compute_hash(GENESIS_HASH, &event);
        assert_eq!(
            first,
            "277fae85e1624c167175deebeb35f118a634f71571056f4edd92c6406ef439cf"
        );
        let second = compute_hash(&first, &event);
        assert_eq!(
            second,
            "719adcc8d28bcf8ec78d0d3ca8dac3af2970438e4878dc8b5b79f28bfb46ef9f"
        );
    }

    #[test]
    fn top_level_members_are_in_rfc8785_order() {
        let canonical = canonical_form(&vector_event());
        let parsed: Value = serde_json::from_str(&canonical).unwrap();
        let names: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 11);
    }

    #[test]
    fn the_canonical_form_is_the_event_json_without_id_and_hashes() {
        let event = vector_event();
        let stored = AuditEvent {
            id: 7,
            event: event.clone(),
            prev_hash: GENESIS_HASH.into(),
            hash: compute_hash(GENESIS_HASH, &event),
        };
        let mut json = serde_json::to_value(&stored).unwrap();
        let object = json.as_object_mut().unwrap();
        for member in ["id", "prev_hash", "hash"] {
            assert!(object.remove(member).is_some(), "{member}");
        }
        let mut canonical = String::new();
        write_value(&mut canonical, &json);
        assert_eq!(canonical, canonical_form(&event));
    }

    #[test]
    fn numbers_follow_ecmascript() {
        let cases: [(f64, &str); 16] = [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e-6, "0.000001"),
            (1.25e-6, "0.00000125"),
            (1e-7, "1e-7"),
            (-1.25e-7, "-1.25e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (0.000_123, "0.000123"),
            (-0.0, "0"),
        ];
        for (x, expected) in cases {
            let mut out = String::new();
            write_double(&mut out, x);
            assert_eq!(out, expected, "{x:e}");
        }
        let mut out = String::new();
        write_number(&mut out, &Number::from(u64::MAX));
        write_number(&mut out, &Number::from(i64::MIN));
        assert_eq!(out, "18446744073709551615-9223372036854775808");
    }

    #[test]
    fn strings_escape_only_what_rfc8785_escapes() {
        let mut out = String::new();
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        write_string(&mut out, &all_controls);
        assert_eq!(
            out,
            concat!(
                r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
                r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f""#
            )
        );
        let mut out = String::new();
        write_string(&mut out, "</script> \u{2028} ü 😀");
        assert_eq!(out, "\"</script> \u{2028} ü 😀\"");
    }

    #[test]
    fn details_order_does_not_matter() {
        let a = vector_event();
        let mut b = a.clone();
        let reversed: Map<String, Value> = a
            .details
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b.details = reversed;
        assert_eq!(canonical_form(&a), canonical_form(&b));
    }

    #[test]
    fn every_field_is_covered() {
        let base = vector_event();
        let hash = compute_hash(GENESIS_HASH, &base);
        type Edit = Box<dyn Fn(&mut NewEvent)>;
        let edits: Vec<Edit> = vec![
            Box::new(|e| e.ts = Timestamp::from_unix_millis(1).unwrap()),
            Box::new(|e| e.actor.push('x')),
            Box::new(|e| e.action.push('x')),
            Box::new(|e| e.target.push('x')),
            Box::new(|e| e.outcome = Outcome::Ok),
            Box::new(|e| e.status = None),
            Box::new(|e| e.request_id = None),
            Box::new(|e| e.node = None),
            Box::new(|e| e.source_ip = None),
            Box::new(|e| e.user_agent = Some(String::new())),
            Box::new(|e| {
                e.details.remove("zeta");
            }),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut edited = base.clone();
            edit(&mut edited);
            assert_ne!(compute_hash(GENESIS_HASH, &edited), hash, "edit {i}");
        }
        assert_ne!(compute_hash(&hash, &base), hash, "the previous hash counts");
    }
}
