//! Fingerprints, lease tokens, their hex forms, and the digest that names a
//! scoped key in a backend.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{Fingerprint, IdempotencyError, LeaseToken, ScopedKey};

/// Why a hex string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexError {
    /// Not exactly two hex digits per byte of the value.
    #[error("expected {expected} hex digits, found {found} characters")]
    WrongLength {
        /// How many digits the value has.
        expected: usize,
        /// How many characters were given.
        found: usize,
    },
    /// A character other than `0-9`, `a-f`, `A-F`.
    #[error("not a hex digit")]
    InvalidDigit,
}

/// Feeds a [`Fingerprint`], one part at a time.
///
/// Each part is hashed with its length in front of it, so part boundaries
/// are unambiguous: `["ab", "c"]` and `["a", "bc"]` give different
/// fingerprints, as do `["a", ""]` and `["a"]`.
#[derive(Clone)]
pub struct FingerprintBuilder {
    hasher: Sha256,
}

impl std::fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FingerprintBuilder").finish_non_exhaustive()
    }
}

impl FingerprintBuilder {
    /// Adds one part.
    #[must_use]
    pub fn part(mut self, bytes: impl AsRef<[u8]>) -> Self {
        update_part(&mut self.hasher, bytes.as_ref());
        self
    }

    /// The fingerprint of the parts added so far, in order.
    #[must_use]
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }
}

/// Hashes `bytes` preceded by their length, so that a sequence of parts has
/// exactly one encoding.
fn update_part(hasher: &mut Sha256, bytes: &[u8]) {
    // usize → u64 never truncates on the platforms Rust supports.
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

impl Fingerprint {
    /// Separates fingerprints from every other SHA-256 digest of the same
    /// bytes; hashed first, as a length-prefixed part. Changing it changes
    /// every fingerprint, so stored keys would all mismatch: it is versioned.
    pub const DOMAIN: &'static str = "sofiia-idempotency/fingerprint/v1";

    /// Starts a fingerprint: `SHA-256(part(DOMAIN) || part(p1) || part(p2) ...)`
    /// where `part(p)` is the length of `p` as a big-endian `u64`, then `p`.
    ///
    /// Pass a *canonical* form of everything that makes two requests the
    /// same request, typically the method, the route, the resource (the chat)
    /// and the body. Bytes that differ between two retries of one request
    /// must not be included (a timestamp, a request id), and two encodings of
    /// one body should be reduced to one first: sofiia-console passes the
    /// parsed and re-serialised JSON body, so whitespace and key order do not
    /// turn a retry into a mismatch.
    ///
    /// ```
    /// use sofiia_idempotency::Fingerprint;
    ///
    /// let a = Fingerprint::builder().part("POST").part("/api/chats/c1/send").part(b"{}").finish();
    /// let b = Fingerprint::builder().part("POST").part("/api/chats/c2/send").part(b"{}").finish();
    /// assert_ne!(a, b);
    /// assert_eq!(Fingerprint::from_hex(&a.to_hex()), Ok(a));
    /// ```
    pub fn builder() -> FingerprintBuilder {
        let mut hasher = Sha256::new();
        update_part(&mut hasher, Self::DOMAIN.as_bytes());
        FingerprintBuilder { hasher }
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits (either case).
    ///
    /// # Errors
    ///
    /// [`HexError`] when `s` is not exactly that.
    pub fn from_hex(s: &str) -> Result<Self, HexError> {
        let mut bytes = [0; 32];
        from_hex(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl LeaseToken {
    /// A new token from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Backend`] in the rare case that the random source
    /// fails; no lease can be granted without an unguessable token.
    pub fn random() -> Result<Self, IdempotencyError> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes).map_err(|e| IdempotencyError::Backend {
            source: Box::new(e),
        })?;
        Ok(Self(bytes))
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 32 hex digits (either case).
    ///
    /// # Errors
    ///
    /// [`HexError`] when `s` is not exactly that.
    pub fn from_hex(s: &str) -> Result<Self, HexError> {
        let mut bytes = [0; 16];
        from_hex(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl ScopedKey {
    /// `SHA-256(u64_be(len(principal)) || principal || key)`: names the key
    /// in a backend. Fixed-size, so an index entry costs 32 bytes whatever
    /// the key's length, and neither the principal nor the key (a
    /// client-chosen, possibly sensitive value) is stored in clear. The
    /// length prefix keeps `("ab", "c…")` and `("a", "bc…")` apart.
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update((self.principal().len() as u64).to_be_bytes());
        hasher.update(self.principal().as_bytes());
        hasher.update(self.key().as_str().as_bytes());
        hasher.finalize().into()
    }

    /// The key to pass to the upstream the request is sent to (as its own
    /// `Idempotency-Key`), so that it can deduplicate too: `u1-` and 64 hex
    /// digits of `SHA-256("sofiia-upstream-key/v1" || 0 || u64_be(len(principal)) || principal || key)`.
    ///
    /// It is the same for every retry of the key, on every instance, and
    /// differs between principals, so two principals' equal keys never reach
    /// the upstream as one key. Neither the principal nor the client's key
    /// can be read from it.
    pub fn upstream_key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"sofiia-upstream-key/v1\0");
        hasher.update((self.principal().len() as u64).to_be_bytes());
        hasher.update(self.principal().as_bytes());
        hasher.update(self.key().as_str().as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        format!("u1-{}", to_hex(&digest))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn from_hex(s: &str, out: &mut [u8]) -> Result<(), HexError> {
    let digits = s.as_bytes();
    if digits.len() != out.len() * 2 {
        return Err(HexError::WrongLength {
            expected: out.len() * 2,
            found: s.len(),
        });
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(())
}

fn nibble(digit: u8) -> Result<u8, HexError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(HexError::InvalidDigit),
    }
}

/// A TTL in whole milliseconds, rounded up and at least 1: backends keep
/// milliseconds, and a TTL that rounded down to 0 would expire a key the
/// moment it was written (Redis rejects `PX 0` outright).
pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdempotencyKey;

    #[test]
    fn upstream_keys_are_stable_valid_and_apart_per_principal() {
        let key = |p: &str, k: &str| ScopedKey::new(p, IdempotencyKey::new(k).unwrap());
        let alice = key("alice", "retry-00000001").upstream_key();
        assert_eq!(alice, key("alice", "retry-00000001").upstream_key());
        assert_ne!(alice, key("bob", "retry-00000001").upstream_key());
        assert_ne!(alice, key("alice", "retry-00000002").upstream_key());
        // The length prefix keeps a principal that is a prefix of another apart.
        assert_ne!(
            key("ab", "cdefghij").upstream_key(),
            key("a", "bcdefghij").upstream_key()
        );
        // Usable as an Idempotency-Key itself, and revealing neither part.
        assert!(IdempotencyKey::new(alice.clone()).is_ok());
        assert_eq!(alice.len(), 67);
        assert!(alice.starts_with("u1-"));
        assert!(!alice.contains("alice") && !alice.contains("retry"));
        // Not the storage digest either.
        assert!(!alice.contains(&to_hex(&key("alice", "retry-00000001").digest())));
    }

    #[test]
    fn part_boundaries_are_unambiguous() {
        let fp = |parts: &[&[u8]]| {
            parts
                .iter()
                .fold(Fingerprint::builder(), |b, p| b.part(p))
                .finish()
        };
        assert_ne!(fp(&[b"ab", b"c"]), fp(&[b"a", b"bc"]));
        assert_ne!(fp(&[b"abc"]), fp(&[b"ab", b"c"]));
        assert_ne!(fp(&[b"a"]), fp(&[b"a", b""]));
        assert_ne!(fp(&[]), fp(&[b""]));
        assert_eq!(fp(&[b"a", b"b"]), fp(&[b"a", b"b"]));
    }

    #[test]
    fn fingerprint_is_domain_separated_sha256() {
        // The same bytes without the domain part hash differently.
        let plain: [u8; 32] = Sha256::new()
            .chain_update(1u64.to_be_bytes())
            .chain_update(b"x")
            .finalize()
            .into();
        let mut expected = Sha256::new();
        expected.update((Fingerprint::DOMAIN.len() as u64).to_be_bytes());
        expected.update(Fingerprint::DOMAIN.as_bytes());
        expected.update(1u64.to_be_bytes());
        expected.update(b"x");
        let expected: [u8; 32] = expected.finalize().into();
        let got = Fingerprint::builder().part("x").finish();
        assert_eq!(got.0, expected);
        assert_ne!(got.0, plain);
    }

    #[test]
    fn hex_round_trips_and_is_strict() {
        let fp = Fingerprint::builder().part("x").finish();
        let hex = fp.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(Fingerprint::from_hex(&hex), Ok(fp));
        assert_eq!(Fingerprint::from_hex(&hex.to_uppercase()), Ok(fp));
        assert_eq!(
            Fingerprint::from_hex(&hex[..62]),
            Err(HexError::WrongLength {
                expected: 64,
                found: 62
            })
        );
        let bad = format!("g{}", &hex[1..]);
        assert_eq!(Fingerprint::from_hex(&bad), Err(HexError::InvalidDigit));
        // A multi-byte character is not two digits.
        let bad = format!("é{}", &hex[2..]);
        assert_eq!(Fingerprint::from_hex(&bad), Err(HexError::InvalidDigit));

        let token = LeaseToken([0xab; 16]);
        assert_eq!(token.to_hex(), "ab".repeat(16));
        assert_eq!(LeaseToken::from_hex(&token.to_hex()), Ok(token));
        assert!(LeaseToken::from_hex(&hex).is_err());
    }

    #[test]
    fn random_tokens_differ() {
        let a = LeaseToken::random().unwrap();
        let b = LeaseToken::random().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn scoped_digest_separates_principal_from_key() {
        let key = |s: &str| IdempotencyKey::new(s).unwrap();
        let a = ScopedKey::new("ab", key("cdefghijk")).digest();
        let b = ScopedKey::new("a", key("bcdefghijk")).digest();
        assert_ne!(a, b);
        assert_eq!(a, ScopedKey::new("ab", key("cdefghijk")).digest());
    }

    #[test]
    fn ttl_millis_rounds_up_to_at_least_one() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1001)), 2);
        assert_eq!(ttl_millis(Duration::from_millis(300)), 300);
        assert_eq!(ttl_millis(Duration::MAX), u64::MAX);
    }
}
