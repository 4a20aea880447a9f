//! The `Idempotency-Key` header parser against arbitrary header values:
//! nothing panics, an accepted key keeps the documented shape, and its
//! sf-string spelling names the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sofiia_idempotency::IdempotencyKey;

fuzz_target!(|value: &str| {
    let Ok(key) = IdempotencyKey::parse_header(value) else {
        return;
    };
    let k = key.as_str();
    assert!((IdempotencyKey::MIN_LEN..=IdempotencyKey::MAX_LEN).contains(&k.len()));
    assert!(k.bytes().all(|b| b.is_ascii_graphic()));
    let mut quoted = String::from("\"");
    for c in k.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    assert_eq!(IdempotencyKey::parse_header(&quoted).as_ref(), Ok(&key));
    if !k.starts_with('"') {
        assert_eq!(IdempotencyKey::parse_header(k).as_ref(), Ok(&key));
    }
});
