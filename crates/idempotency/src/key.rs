use std::fmt;

/// Why an `Idempotency-Key` header value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Shorter than [`IdempotencyKey::MIN_LEN`] characters.
    #[error("the key must have at least {} characters", IdempotencyKey::MIN_LEN)]
    TooShort,
    /// Longer than [`IdempotencyKey::MAX_LEN`] characters.
    #[error("the key must have at most {} characters", IdempotencyKey::MAX_LEN)]
    TooLong,
    /// A character outside visible ASCII, or a broken quoted string.
    #[error("the key must be visible ASCII characters, optionally as a quoted string")]
    Malformed,
}

/// A validated idempotency key: 8..=255 visible ASCII characters.
///
/// The header may carry the key bare (`abc12345`) or as a structured-field
/// string (`"abc12345"`, RFC 8941 §3.3.3); both spell the same key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The shortest accepted key.
    pub const MIN_LEN: usize = 8;
    /// The longest accepted key.
    pub const MAX_LEN: usize = 255;

    /// Parses a header value, bare or quoted.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the value is not such a key.
    pub fn parse_header(value: &str) -> Result<Self, KeyError> {
        let key = match value.strip_prefix('"') {
            Some(rest) => unquote(rest)?,
            None => value.to_owned(),
        };
        Self::new(key)
    }

    /// Validates a bare key.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `key` is not 8..=255 visible ASCII characters.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::Malformed);
        }
        if key.len() < Self::MIN_LEN {
            return Err(KeyError::TooShort);
        }
        if key.len() > Self::MAX_LEN {
            return Err(KeyError::TooLong);
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decodes the rest of an sf-string after its opening quote.
fn unquote(rest: &str) -> Result<String, KeyError> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    loop {
        match chars.next() {
            None => return Err(KeyError::Malformed),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => return Err(KeyError::Malformed),
            },
            Some(c) if c == ' ' || c.is_ascii_graphic() => out.push(c),
            Some(_) => return Err(KeyError::Malformed),
        }
    }
    if chars.next().is_some() {
        return Err(KeyError::Malformed);
    }
    Ok(out)
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_quoted_forms() {
        assert_eq!(
            IdempotencyKey::parse_header("abcd1234").unwrap().as_str(),
            "abcd1234"
        );
        assert_eq!(
            IdempotencyKey::parse_header("\"abcd1234\"")
                .unwrap()
                .as_str(),
            "abcd1234"
        );
        assert_eq!(
            IdempotencyKey::parse_header(r#""ab\"cd\\1234""#)
                .unwrap()
                .as_str(),
            r#"ab"cd\1234"#
        );
        assert_eq!(
            IdempotencyKey::parse_header(&"k".repeat(255))
                .unwrap()
                .as_str()
                .len(),
            255
        );
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            IdempotencyKey::parse_header("short"),
            Err(KeyError::TooShort)
        );
        assert_eq!(IdempotencyKey::parse_header(""), Err(KeyError::TooShort));
        assert_eq!(
            IdempotencyKey::parse_header(&"k".repeat(256)),
            Err(KeyError::TooLong)
        );
        for bad in [
            "has space1",
            "tab\tkey12",
            "ключ12345678",
            "\"unterminated",
            "\"a\"b12345678",
            "\"bad\\escape1\"",
            "\"with space\"",
        ] {
            assert!(IdempotencyKey::parse_header(bad).is_err(), "{bad:?}");
        }
    }
}
