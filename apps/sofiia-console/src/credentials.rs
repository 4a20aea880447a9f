//! Credentials: operator tokens and audit keys, kept only as SHA-256
//! digests.
//!
//! A presented token is looked up by its digest, so the time a lookup takes
//! depends on that digest alone, never on how much of a configured token the
//! presented one shares; a presented audit key is compared in constant time
//! against every configured key.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use sofiia_core_domain::{CursorKeys, OperatorId};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

/// Why `SOFIIA_OPERATOR_TOKENS` was rejected. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// An entry is not `operator:token`.
    #[error("entry {0} is not `operator:token`")]
    NotAPair(usize),
    /// An entry's operator id is invalid.
    #[error("entry {index}: {source}")]
    Operator {
        /// 1-based entry number.
        index: usize,
        /// Why the id is invalid.
        source: sofiia_core_domain::ValidationError,
    },
    /// An entry's token is empty or holds characters outside visible ASCII.
    #[error("entry {0}: the token must be non-empty visible ASCII")]
    Token(usize),
    /// Two entries share a token.
    #[error("entry {0} repeats the token of an earlier entry")]
    DuplicateToken(usize),
    /// No entries at all.
    #[error("must list at least one `operator:token` pair")]
    Empty,
}

/// Secrets kept as SHA-256 digests, each with what it grants.
///
/// A presented secret is hashed and its digest looked up in a hash map, in
/// time independent of the number of secrets (a linear constant-time scan
/// cost about 0.1 ms per request with 1 000 operators). This leaks nothing
/// about the secrets: the lookup's timing depends only on the digest of what
/// the client sent, and a client cannot choose a digest without finding a
/// SHA-256 preimage, so it learns nothing about a configured secret from how
/// long a near miss took.
#[derive(Clone)]
struct DigestSet<T> {
    /// In configuration order.
    entries: Vec<(T, [u8; 32])>,
    /// Digest → position in `entries`.
    index: HashMap<[u8; 32], usize>,
    /// Length of the shortest secret, for preflight checks (the secrets
    /// themselves are not kept).
    shortest: usize,
}

impl<T> DigestSet<T> {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            shortest: usize::MAX,
        }
    }

    /// Adds `secret` for `value`; false if the secret is already present.
    fn insert(&mut self, value: T, secret: &str) -> bool {
        let d = digest(secret.as_bytes());
        if self.index.contains_key(&d) {
            return false;
        }
        self.shortest = self.shortest.min(secret.len());
        self.index.insert(d, self.entries.len());
        self.entries.push((value, d));
        true
    }

    /// The value of `presented`, looked up by digest.
    fn find(&self, presented: &str) -> Option<&T> {
        let presented = digest(presented.as_bytes());
        self.index
            .get(&presented)
            .and_then(|&i| self.entries.get(i))
            .map(|(t, _)| t)
    }

    /// The value of `presented`, compared in constant time against every
    /// digest whatever matches, so not even the position of a match shows.
    /// For short lists (the audit keys: one, two during a rotation).
    fn find_constant_time(&self, presented: &str) -> Option<&T> {
        let presented = digest(presented.as_bytes());
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, (_, expected)) in self.entries.iter().enumerate() {
            let hit = expected.ct_eq(&presented);
            index = u32::conditional_select(&index, &u32::try_from(i).unwrap_or(u32::MAX), hit);
            found |= hit;
        }
        if bool::from(found) {
            usize::try_from(index)
                .ok()
                .and_then(|i| self.entries.get(i))
                .map(|(t, _)| t)
        } else {
            None
        }
    }
}

fn valid_secret(secret: &str) -> bool {
    !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_graphic())
}

/// The configured operators and the digests of their tokens; cheap to clone
/// (shared).
#[derive(Clone)]
pub struct OperatorTokens(Arc<DigestSet<OperatorId>>);

impl fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorTokens")
            .field(
                "operators",
                &self
                    .0
                    .entries
                    .iter()
                    .map(|(o, _)| o.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl OperatorTokens {
    /// Parses `alice:TOKEN,bob:TOKEN`. One operator may hold several tokens
    /// (for rotation); a token may belong to one operator only.
    ///
    /// # Errors
    ///
    /// [`TokensError`] naming the entry that is wrong.
    pub fn parse(s: &str) -> Result<Self, TokensError> {
        let mut set = DigestSet::new();
        for (i, entry) in s.split(',').enumerate() {
            let index = i + 1;
            let (operator, token) = entry.split_once(':').ok_or(TokensError::NotAPair(index))?;
            let operator = OperatorId::new(operator.trim())
                .map_err(|source| TokensError::Operator { index, source })?;
            let token = token.trim();
            if !valid_secret(token) {
                return Err(TokensError::Token(index));
            }
            if !set.insert(operator, token) {
                return Err(TokensError::DuplicateToken(index));
            }
        }
        if set.entries.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self(Arc::new(set)))
    }

    /// One operator with one token.
    pub fn single(operator: OperatorId, token: &str) -> Self {
        let mut set = DigestSet::new();
        set.insert(operator, token);
        Self(Arc::new(set))
    }

    /// The operator whose token this is, if any.
    pub fn authenticate(&self, presented: &str) -> Option<OperatorId> {
        self.0.find(presented).cloned()
    }

    /// The configured operator ids.
    pub fn operators(&self) -> impl Iterator<Item = &OperatorId> {
        self.0.entries.iter().map(|(o, _)| o)
    }

    /// The length of the shortest token.
    pub fn shortest(&self) -> usize {
        self.0.shortest
    }
}

/// Why `SOFIIA_AUDIT_KEYS` was rejected. Never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeysError {
    /// An entry is empty or holds characters outside visible ASCII.
    #[error("entry {0}: a key must be non-empty visible ASCII")]
    Key(usize),
    /// Two entries are the same key.
    #[error("entry {0} repeats an earlier key")]
    Duplicate(usize),
}

/// The keys `/api/audit` accepts, as digests. All listed keys are accepted at
/// once, so a new key can be rolled out before the old one is removed.
#[derive(Clone)]
pub struct AuditKeys(Arc<DigestSet<usize>>);

impl fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKeys")
            .field("count", &self.0.entries.len())
            .finish()
    }
}

impl AuditKeys {
    /// No keys: every audit read is refused.
    pub fn none() -> Self {
        Self(Arc::new(DigestSet::new()))
    }

    /// Parses `KEY_NEW,KEY_OLD`.
    ///
    /// # Errors
    ///
    /// [`AuditKeysError`] naming the entry that is wrong.
    pub fn parse(s: &str) -> Result<Self, AuditKeysError> {
        let mut set = DigestSet::new();
        for (i, key) in s.split(',').enumerate() {
            let key = key.trim();
            if !valid_secret(key) {
                return Err(AuditKeysError::Key(i + 1));
            }
            if !set.insert(i + 1, key) {
                return Err(AuditKeysError::Duplicate(i + 1));
            }
        }
        Ok(Self(Arc::new(set)))
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.0.entries.len()
    }

    /// The length of the shortest key (0 when none is configured).
    pub fn shortest(&self) -> usize {
        if self.is_empty() { 0 } else { self.0.shortest }
    }

    /// Whether `presented` is one of the keys, compared in constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        self.matching(presented).is_some()
    }

    /// The 1-based position in `SOFIIA_AUDIT_KEYS` of the key `presented`
    /// is, compared in constant time; audit events name the key by it, so a
    /// rotation can confirm that the old key is no longer used.
    pub fn matching(&self, presented: &str) -> Option<usize> {
        self.0.find_constant_time(presented).copied()
    }
}

/// Where the generated development token lives inside the data dir.
pub const DEV_TOKEN_FILE: &str = "dev-operator-token";

/// The operator id of the generated development token.
pub const DEV_OPERATOR: &str = "dev";

/// Loads the development token from `data_dir`, generating it on first use
/// (readable by the owner only). Returns the tokens and the file's path.
///
/// # Errors
///
/// An I/O error if the file cannot be read or written.
pub fn dev_tokens(data_dir: &Path) -> std::io::Result<(OperatorTokens, PathBuf)> {
    let path = data_dir.join(DEV_TOKEN_FILE);
    let token = generated_secret(&path)?;
    let operator = OperatorId::new(DEV_OPERATOR).map_err(std::io::Error::other)?;
    Ok((OperatorTokens::single(operator, &token), path))
}

/// Where the generated cursor key lives inside the data dir.
pub const CURSOR_SECRET_FILE: &str = "cursor-secret";

/// Parses `SOFIIA_CURSOR_SECRET`: `NEW,OLD`, each at least 32 visible ASCII
/// characters; the first signs cursors, every one verifies them.
///
/// # Errors
///
/// A message naming the entry that is wrong (never a key).
pub fn parse_cursor_keys(s: &str) -> Result<CursorKeys, String> {
    let mut keys = Vec::new();
    for (i, key) in s.split(',').enumerate() {
        let key = key.trim();
        if !valid_secret(key) || key.len() < CursorKeys::MIN_KEY_LEN {
            return Err(format!(
                "entry {}: a key must be at least {} visible ASCII characters",
                i + 1,
                CursorKeys::MIN_KEY_LEN
            ));
        }
        keys.push(key.to_owned());
    }
    CursorKeys::new(keys).map_err(|e| e.to_string())
}

/// Loads the cursor key from `data_dir`, generating it on first use
/// (readable by the owner only): cursors of one console stay valid across
/// its restarts. Returns the keys and the file's path.
///
/// # Errors
///
/// An I/O error if the file cannot be read or written.
pub fn generated_cursor_keys(data_dir: &Path) -> std::io::Result<(CursorKeys, PathBuf)> {
    let path = data_dir.join(CURSOR_SECRET_FILE);
    let secret = generated_secret(&path)?;
    let keys = CursorKeys::new([secret]).map_err(std::io::Error::other)?;
    Ok((keys, path))
}

/// The secret in `path`, generated (64 hex digits) if the file is missing
/// or empty.
fn generated_secret(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(existing) if !existing.trim().is_empty() => Ok(existing.trim().to_owned()),
        Ok(_) => write_new_secret(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new_secret(path),
        Err(e) => Err(e),
    }
}

fn write_new_secret(path: &Path) -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_authenticates() {
        let t = OperatorTokens::parse("alice:tok-a, bob:tok-b,alice:tok-a2").unwrap();
        assert_eq!(t.authenticate("tok-a").unwrap().as_str(), "alice");
        assert_eq!(t.authenticate("tok-a2").unwrap().as_str(), "alice");
        assert_eq!(t.authenticate("tok-b").unwrap().as_str(), "bob");
        assert!(t.authenticate("tok-").is_none());
        assert!(t.authenticate("").is_none());
        assert!(!format!("{t:?}").contains("tok-a"));
    }

    #[test]
    fn many_operators_each_get_their_own_id() {
        let list: Vec<String> = (0..1_000).map(|i| format!("op{i}:token-{i:04}")).collect();
        let t = OperatorTokens::parse(&list.join(",")).unwrap();
        assert_eq!(t.operators().count(), 1_000);
        for i in [0, 1, 499, 999] {
            let op = t.authenticate(&format!("token-{i:04}")).unwrap();
            assert_eq!(op.as_str(), format!("op{i}"));
        }
        assert!(t.authenticate("token-1000").is_none());
        assert!(t.authenticate("token-000").is_none());
        assert_eq!(t.shortest(), "token-0000".len());
    }

    #[test]
    fn rejects_bad_lists() {
        assert!(matches!(
            OperatorTokens::parse(""),
            Err(TokensError::NotAPair(1))
        ));
        assert!(matches!(
            OperatorTokens::parse("alice"),
            Err(TokensError::NotAPair(1))
        ));
        assert!(matches!(
            OperatorTokens::parse("alice:"),
            Err(TokensError::Token(1))
        ));
        assert!(matches!(
            OperatorTokens::parse("al ice:x"),
            Err(TokensError::Operator { .. })
        ));
        assert!(matches!(
            OperatorTokens::parse("alice:x,bob:x"),
            Err(TokensError::DuplicateToken(2))
        ));
        assert!(matches!(
            OperatorTokens::parse("alice:a b"),
            Err(TokensError::Token(1))
        ));
    }

    #[test]
    fn audit_keys_accept_every_listed_key_and_nothing_else() {
        let keys = AuditKeys::parse("key-new-1,key-old-2").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("key-new-1"));
        assert_eq!(keys.matching("key-old-2"), Some(2));
        assert_eq!(keys.matching("key-new-1"), Some(1));
        for bad in [
            "",
            "key-new",
            "key-new-1 ",
            "KEY-NEW-1",
            "key-new-1,key-old-2",
        ] {
            assert!(!keys.accepts(bad), "{bad:?}");
        }
        assert!(!AuditKeys::none().accepts(""));
        assert!(matches!(
            AuditKeys::parse("a,,b"),
            Err(AuditKeysError::Key(2))
        ));
        assert!(matches!(
            AuditKeys::parse("a,a"),
            Err(AuditKeysError::Duplicate(2))
        ));
        assert!(!format!("{keys:?}").contains("key-new"));
    }

    #[test]
    fn cursor_keys_rotate_and_the_generated_one_persists() {
        let keys = parse_cursor_keys(&format!("{},{}", "n".repeat(32), "o".repeat(40))).unwrap();
        assert!(!format!("{keys:?}").contains("nnnn"));
        for bad in ["", "short", &format!("{},", "n".repeat(32)), "a b"] {
            assert!(parse_cursor_keys(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let (first, path) = generated_cursor_keys(dir.path()).unwrap();
        let (again, _) = generated_cursor_keys(dir.path()).unwrap();
        let c = sofiia_core_domain::Cursor::new(sofiia_core_domain::Timestamp::MIN, "x");
        assert_eq!(again.decode(&first.encode(&c, "s"), "s").unwrap(), c);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the key file must not be readable by others"
            );
        }
    }

    #[test]
    fn dev_token_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, path) = dev_tokens(dir.path()).unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.trim().len(), 64);
        assert_eq!(
            tokens.authenticate(token.trim()).unwrap().as_str(),
            DEV_OPERATOR
        );
        let (again, _) = dev_tokens(dir.path()).unwrap();
        assert!(
            again.authenticate(token.trim()).is_some(),
            "the token must survive restarts"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the token file must not be readable by others"
            );
        }
    }
}
