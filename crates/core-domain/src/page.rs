//! Keyset pagination: page sizes, opaque cursors and pages.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Field, ValidationError};
use crate::time::Timestamp;

/// How many items one page may hold: 1..=200, 50 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageLimit(u16);

impl PageLimit {
    /// The smallest page.
    pub const MIN: u16 = 1;
    /// The largest page.
    pub const MAX: u16 = 200;
    /// The page size used when the client names none.
    pub const DEFAULT: PageLimit = PageLimit(50);

    /// A page size of `n` items.
    ///
    /// # Errors
    ///
    /// [`ValidationError::OutOfRange`] unless `n` is in `1..=200`.
    pub fn new(n: u64) -> Result<Self, ValidationError> {
        match u16::try_from(n) {
            Ok(n) if (Self::MIN..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ValidationError::OutOfRange {
                field: Field::Limit,
                min: i64::from(Self::MIN),
                max: i64::from(Self::MAX),
            }),
        }
    }

    /// Parses the decimal digits of a query parameter; no sign, no spaces.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] for anything but digits, or a value out of range.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::Malformed {
                field: Field::Limit,
                reason: "must be a whole number between 1 and 200",
            });
        }
        let n: u64 = s.parse().map_err(|_| ValidationError::Malformed {
            field: Field::Limit,
            reason: "must be a whole number between 1 and 200",
        })?;
        Self::new(n)
    }

    /// The size as a count.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The position of the last item of a page in a list ordered by `(ts, id)`.
///
/// The next page starts strictly after this position, in the list's order.
/// On the wire a cursor is opaque and signed: [`CursorKeys::encode`] binds
/// it to a *scope* (the list it came from, such as `messages:<chat id>`)
/// and adds an HMAC, so a cursor that was edited, truncated, taken from
/// another list or made by anyone without the key fails
/// [`CursorKeys::decode`] instead of silently starting somewhere else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    ts: Timestamp,
    id: String,
}

/// Version 2: HMAC-signed. (Version 1, checked by an unkeyed digest, is
/// refused: anyone could mint one.)
const CURSOR_VERSION: u8 = 2;
const CHECK_LEN: usize = 16;
const MAX_ID_LEN: usize = 255;
// version + ts + id length + check value.
const FIXED_LEN: usize = 1 + 8 + 1 + CHECK_LEN;

impl Cursor {
    /// A cursor at the item with timestamp `ts` and id `id`.
    ///
    /// Ids longer than 255 bytes cannot be encoded; every id type in this
    /// crate is shorter.
    pub fn new(ts: Timestamp, id: impl Into<String>) -> Self {
        Self { ts, id: id.into() }
    }

    /// The timestamp of the last item returned.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The id of the last item returned.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Why cursor keys were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorKeyError {
    /// No key at all.
    #[error("at least one cursor key is needed")]
    Empty,
    /// A key shorter than [`CursorKeys::MIN_KEY_LEN`] bytes.
    #[error("a cursor key must have at least {} bytes", CursorKeys::MIN_KEY_LEN)]
    TooShort,
}

/// The keys that sign and verify cursors: the first signs, every one
/// verifies, so a new key can be rolled out before the old one is removed
/// (instances that page each other's lists must share them).
///
/// ```
/// use sofiia_core_domain::{Cursor, CursorKeys, Timestamp};
/// let keys = CursorKeys::new(["a secret of at least 32 bytes...."]).unwrap();
/// let c = Cursor::new(Timestamp::MIN, "chat-1");
/// let wire = keys.encode(&c, "chats");
/// assert_eq!(keys.decode(&wire, "chats").unwrap(), c);
/// assert!(keys.decode(&wire, "messages:chat-1").is_err());
/// let other = CursorKeys::new(["another secret of at least 32 b."]).unwrap();
/// assert!(other.decode(&wire, "chats").is_err());
/// ```
#[derive(Clone)]
pub struct CursorKeys(Arc<[Hmac<Sha256>]>);

impl fmt::Debug for CursorKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CursorKeys")
            .field("keys", &self.0.len())
            .finish_non_exhaustive()
    }
}

impl CursorKeys {
    /// The shortest key accepted.
    pub const MIN_KEY_LEN: usize = 32;

    /// Keys, the first of which signs.
    ///
    /// # Errors
    ///
    /// [`CursorKeyError`] for no key, or one shorter than
    /// [`MIN_KEY_LEN`](Self::MIN_KEY_LEN) bytes.
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self, CursorKeyError> {
        let macs = keys
            .into_iter()
            .map(|key| {
                let key = key.as_ref();
                if key.len() < Self::MIN_KEY_LEN {
                    return Err(CursorKeyError::TooShort);
                }
                // HMAC takes a key of any length.
                <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| CursorKeyError::TooShort)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if macs.is_empty() {
            return Err(CursorKeyError::Empty);
        }
        Ok(Self(macs.into()))
    }

    /// How many keys verify cursors (the first of them signs).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: there is always a signing key. Here for the `len` idiom.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The HMAC of `payload` for `scope` under `key`, not finalised yet.
    fn mac(key: &Hmac<Sha256>, scope: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = key.clone();
        mac.update(b"sofiia-cursor\0");
        mac.update(scope.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    /// The opaque, URL-safe, signed text form of `cursor` for the list
    /// `scope`.
    pub fn encode(&self, cursor: &Cursor, scope: &str) -> String {
        let id = &cursor.id.as_bytes()[..cursor.id.len().min(MAX_ID_LEN)];
        let mut buf = Vec::with_capacity(FIXED_LEN + id.len());
        buf.push(CURSOR_VERSION);
        buf.extend_from_slice(&cursor.ts.as_unix_millis().to_be_bytes());
        // Truncation cannot happen: the id was cut to MAX_ID_LEN above.
        buf.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        buf.extend_from_slice(id);
        let tag = Self::mac(&self.0[0], scope, &buf).finalize().into_bytes();
        buf.extend_from_slice(&tag[..CHECK_LEN]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes a cursor made by [`encode`](Self::encode) with one of these
    /// keys and the same `scope`.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] for `Field::Cursor` when `s` is not exactly such a
    /// cursor: bad base64, an unknown version, trailing bytes, a check value
    /// that no key makes (edited, from another list, or not issued here), a
    /// bad timestamp or id.
    pub fn decode(&self, s: &str, scope: &str) -> Result<Cursor, ValidationError> {
        let invalid = |reason| ValidationError::Malformed {
            field: Field::Cursor,
            reason,
        };
        if s.is_empty() {
            return Err(ValidationError::Empty {
                field: Field::Cursor,
            });
        }
        if s.len() > 4 * (FIXED_LEN + MAX_ID_LEN) / 3 + 4 {
            return Err(invalid("is not a cursor this list issued"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| invalid("is not a cursor this list issued"))?;
        if bytes.len() < FIXED_LEN {
            return Err(invalid("is truncated"));
        }
        if bytes[0] != CURSOR_VERSION {
            return Err(invalid("has an unsupported version"));
        }
        let id_len = usize::from(bytes[9]);
        if bytes.len() != FIXED_LEN + id_len {
            return Err(invalid("has the wrong length"));
        }
        let (payload, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        // Every key is tried, whatever matches, and each comparison takes
        // constant time, so the time taken does not tell how close a forgery
        // came.
        let matches = self.0.iter().fold(false, |found, key| {
            let ok = Self::mac(key, scope, payload)
                .verify_truncated_left(check)
                .is_ok();
            found | ok
        });
        if !matches {
            return Err(invalid("was not issued by this console for this list"));
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[1..9]);
        let ts = Timestamp::from_unix_millis(i64::from_be_bytes(ts))
            .map_err(|_| invalid("holds an impossible time"))?;
        let id = std::str::from_utf8(&payload[10..])
            .map_err(|_| invalid("holds an id that is not UTF-8"))?;
        if id.is_empty() {
            return Err(invalid("holds an empty id"));
        }
        Ok(Cursor::new(ts, id))
    }
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` items fetched in list order: the
    /// extra item, if present, only proves that another page exists and is
    /// dropped; `key` gives the cursor of the last kept item.
    pub fn from_overfetch(mut items: Vec<T>, limit: PageLimit, key: impl Fn(&T) -> Cursor) -> Self {
        if items.len() > limit.get() {
            items.truncate(limit.get());
            let next = items.last().map(&key);
            Self { items, next }
        } else {
            Self { items, next: None }
        }
    }

    /// Applies `f` to every item, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// Which page of a list to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items at most.
    pub limit: PageLimit,
    /// Start strictly after this position; `None` for the first page.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// The first page, of `limit` items.
    pub fn first(limit: PageLimit) -> Self {
        Self { limit, after: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds_and_parsing() {
        assert_eq!(PageLimit::default().get(), 50);
        assert!(PageLimit::new(0).is_err());
        assert!(PageLimit::new(201).is_err());
        assert_eq!(PageLimit::new(200).unwrap().get(), 200);
        assert_eq!(PageLimit::parse("7").unwrap().get(), 7);
        for bad in [
            "",
            "0",
            "201",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "99999999999999999999",
        ] {
            assert!(PageLimit::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn keys() -> CursorKeys {
        CursorKeys::new(["0123456789abcdef0123456789abcdef"]).unwrap()
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_scope() {
        let c = Cursor::new(
            Timestamp::from_unix_millis(1_700_000_000_000).unwrap(),
            "a:b",
        );
        let wire = keys().encode(&c, "chats");
        assert!(
            wire.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(keys().decode(&wire, "chats").unwrap(), c);
        assert!(keys().decode(&wire, "messages:x").is_err());
    }

    #[test]
    fn only_the_keys_verify_and_the_first_signs() {
        let new = "a new key of at least thirty-two bytes";
        let old = "an old key of at least thirty-two bytes";
        let c = Cursor::new(Timestamp::MIN, "chat-1");
        let by_old = CursorKeys::new([old]).unwrap().encode(&c, "chats");
        let rotating = CursorKeys::new([new, old]).unwrap();
        // During a rotation both verify; the new one signs.
        assert_eq!(rotating.decode(&by_old, "chats").unwrap(), c);
        let by_rotating = rotating.encode(&c, "chats");
        assert_eq!(
            CursorKeys::new([new])
                .unwrap()
                .decode(&by_rotating, "chats")
                .unwrap(),
            c
        );
        assert!(
            CursorKeys::new([old])
                .unwrap()
                .decode(&by_rotating, "chats")
                .is_err()
        );
        // A well-formed cursor made without the key: what anyone could mint.
        assert!(keys().decode(&by_old, "chats").is_err());
        assert_eq!(
            CursorKeys::new::<&str>([]).unwrap_err(),
            CursorKeyError::Empty
        );
        assert_eq!(
            CursorKeys::new(["short"]).unwrap_err(),
            CursorKeyError::TooShort
        );
        assert!(!format!("{rotating:?}").contains("key of"));
    }

    #[test]
    fn cursor_rejects_every_single_character_edit() {
        let wire = keys().encode(&Cursor::new(Timestamp::MIN, "chat-9"), "chats");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..wire.len() {
            for &b in alphabet {
                let mut edited = wire.clone().into_bytes();
                if edited[i] == b {
                    continue;
                }
                edited[i] = b;
                let edited = String::from_utf8(edited).unwrap();
                assert!(keys().decode(&edited, "chats").is_err(), "{edited}");
            }
        }
    }

    #[test]
    fn cursor_rejects_garbage() {
        let wire = keys().encode(&Cursor::new(Timestamp::MIN, "chat-9"), "chats");
        for bad in [
            "",
            "x",
            "!!!!",
            &format!("{wire}="),
            &format!("{wire}A"),
            &wire[..wire.len() - 1],
            &"A".repeat(10_000),
        ] {
            assert!(keys().decode(bad, "chats").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_from_overfetch() {
        let limit = PageLimit::new(2).unwrap();
        let key = |n: &i64| Cursor::new(Timestamp::from_unix_millis(*n).unwrap(), n.to_string());
        let p = Page::from_overfetch(vec![3, 2, 1], limit, key);
        assert_eq!(p.items, vec![3, 2]);
        assert_eq!(p.next.unwrap().id(), "2");
        let p = Page::from_overfetch(vec![3, 2], limit, key);
        assert_eq!(p.items, vec![3, 2]);
        assert!(p.next.is_none());
    }
}
