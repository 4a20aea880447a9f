//! Keyset pagination: page sizes, opaque cursors and pages.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

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
/// On the wire a cursor is opaque: [`Cursor::encode`] binds it to a *scope*
/// (the list it came from, such as `messages:<chat id>`) and adds a check
/// value, so a cursor that was edited, truncated or taken from another list
/// fails [`Cursor::decode`] instead of silently starting somewhere else.
///
/// ```
/// use sofiia_core_domain::{Cursor, Timestamp};
/// let c = Cursor::new(Timestamp::MIN, "chat-1");
/// let wire = c.encode("chats");
/// assert_eq!(Cursor::decode(&wire, "chats").unwrap(), c);
/// assert!(Cursor::decode(&wire, "messages:chat-1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    ts: Timestamp,
    id: String,
}

const CURSOR_VERSION: u8 = 1;
const CHECK_LEN: usize = 8;
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

    fn check_value(scope: &str, payload: &[u8]) -> [u8; CHECK_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(b"sofiia-cursor\0");
        hasher.update(scope.as_bytes());
        hasher.update(b"\0");
        hasher.update(payload);
        let digest = hasher.finalize();
        let mut out = [0u8; CHECK_LEN];
        out.copy_from_slice(&digest[..CHECK_LEN]);
        out
    }

    /// The opaque, URL-safe text form of this cursor for the list `scope`.
    pub fn encode(&self, scope: &str) -> String {
        let id = &self.id.as_bytes()[..self.id.len().min(MAX_ID_LEN)];
        let mut buf = Vec::with_capacity(FIXED_LEN + id.len());
        buf.push(CURSOR_VERSION);
        buf.extend_from_slice(&self.ts.as_unix_millis().to_be_bytes());
        // Truncation cannot happen: the id was cut to MAX_ID_LEN above.
        buf.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        buf.extend_from_slice(id);
        let check = Self::check_value(scope, &buf);
        buf.extend_from_slice(&check);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes a cursor made by [`Cursor::encode`] with the same `scope`.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] for `Field::Cursor` when `s` is not exactly such a
    /// cursor: bad base64, an unknown version, trailing bytes, a check value
    /// that does not match (edited, or from another list), a bad timestamp or id.
    pub fn decode(s: &str, scope: &str) -> Result<Self, ValidationError> {
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
        if Self::check_value(scope, payload) != check {
            return Err(invalid("was altered or belongs to another list"));
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
        Ok(Self::new(ts, id))
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

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_scope() {
        let c = Cursor::new(
            Timestamp::from_unix_millis(1_700_000_000_000).unwrap(),
            "a:b",
        );
        let wire = c.encode("chats");
        assert!(
            wire.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&wire, "chats").unwrap(), c);
        assert!(Cursor::decode(&wire, "messages:x").is_err());
    }

    #[test]
    fn cursor_rejects_every_single_character_edit() {
        let wire = Cursor::new(Timestamp::MIN, "chat-9").encode("chats");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..wire.len() {
            for &b in alphabet {
                let mut edited = wire.clone().into_bytes();
                if edited[i] == b {
                    continue;
                }
                edited[i] = b;
                let edited = String::from_utf8(edited).unwrap();
                assert!(Cursor::decode(&edited, "chats").is_err(), "{edited}");
            }
        }
    }

    #[test]
    fn cursor_rejects_garbage() {
        let wire = Cursor::new(Timestamp::MIN, "chat-9").encode("chats");
        for bad in [
            "",
            "x",
            "!!!!",
            &format!("{wire}="),
            &format!("{wire}A"),
            &wire[..wire.len() - 1],
            &"A".repeat(10_000),
        ] {
            assert!(Cursor::decode(bad, "chats").is_err(), "{bad:?}");
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
