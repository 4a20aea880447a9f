//! The node list: `SOFIIA_NODES` and `SOFIIA_DEFAULT_NODE`.

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use sofiia_core_domain::{NodeId, ValidationError};

/// The configured inference nodes, in configuration order, each with its base
/// URL, and the default node.
///
/// Built from the `SOFIIA_NODES` syntax, `NAME=URL` entries separated by
/// commas, where a node with replicas lists their URLs separated by `|`
/// (`NODA1=http://a:9001|http://b:9001`):
///
/// - every name is a valid [`NodeId`] and appears once;
/// - a node's replicas are distinct;
/// - every URL is absolute `http://host[:port][/path]`, without user info,
///   query or fragment; trailing slashes are dropped, so `http://h:1/` and
///   `http://h:1` are the same base. `https://` needs the crate feature
///   `tls`;
/// - nothing is trimmed: a space anywhere is an error, not a typo silently
///   forgiven.
///
/// The default node is the first one unless [`with_default`](Self::with_default)
/// or [`with_default_name`](Self::with_default_name) (`SOFIIA_DEFAULT_NODE`)
/// says otherwise.
///
/// ```
/// use sofiia_router_client::{ConfigError, NodesConfig};
///
/// let nodes: NodesConfig = "NODA1=http://127.0.0.1:9001,NODA2=http://127.0.0.1:9002/".parse()?;
/// let names: Vec<&str> = nodes.nodes().iter().map(|n| n.as_str()).collect();
/// assert_eq!(names, ["NODA1", "NODA2"]);
/// assert_eq!(nodes.default_node().as_str(), "NODA1");
///
/// assert!(matches!(
///     NodesConfig::parse("NODA1=http://a:1,NODA1=http://b:1"),
///     Err(ConfigError::DuplicateNode { .. })
/// ));
/// assert!(matches!(
///     nodes.with_default_name("NODA3"),
///     Err(ConfigError::UnknownDefault { .. })
/// ));
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NodesConfig {
    // Parallel vectors so `nodes()` can hand out a slice for `NodeRouter::nodes`.
    nodes: Vec<NodeId>,
    /// Each node's replicas, in configuration order; never empty.
    bases: Vec<Vec<String>>,
    default: usize,
}

/// Why a node configuration, or a router built from one, was rejected.
///
/// Messages name the node or the entry's position, never a URL: a URL is
/// configuration an operator may not want in a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node list is empty.
    #[error("the node list is empty")]
    Empty,
    /// An entry between two commas (or before the first, or after the last)
    /// is empty.
    #[error("node entry {entry} is empty")]
    EmptyEntry {
        /// The entry's position, counted from 1.
        entry: usize,
    },
    /// An entry has no `=` between name and URL.
    #[error("node entry {entry} is not NAME=URL")]
    MissingEquals {
        /// The entry's position, counted from 1.
        entry: usize,
    },
    /// An entry's name is not a valid node name.
    #[error("node entry {entry} has an invalid name")]
    InvalidName {
        /// The entry's position, counted from 1.
        entry: usize,
        /// What is wrong with the name.
        #[source]
        source: ValidationError,
    },
    /// A node is listed twice.
    #[error("node {node} is listed more than once")]
    DuplicateNode {
        /// The repeated node.
        node: NodeId,
    },
    /// A node's URL is empty.
    #[error("node {node} has no URL")]
    MissingUrl {
        /// The node.
        node: NodeId,
    },
    /// A node lists the same replica twice.
    #[error("node {node} lists replica {replica} twice")]
    DuplicateReplica {
        /// The node.
        node: NodeId,
        /// The second listing's position, counted from 1.
        replica: usize,
    },
    /// A node's URL is `https://` but this build has no TLS support.
    #[error(
        "node {node} has an https:// URL, but sofiia-router-client was built without its `tls` feature; use http:// or rebuild with `tls`"
    )]
    TlsNotEnabled {
        /// The node.
        node: NodeId,
    },
    /// A node's URL is not a plain base URL.
    #[error("node {node} has an invalid URL: {problem}")]
    InvalidUrl {
        /// The node.
        node: NodeId,
        /// What is wrong with it.
        problem: UrlProblem,
    },
    /// A node's URL does not parse at all.
    #[error("node {node} has a URL that does not parse")]
    UnparseableUrl {
        /// The node.
        node: NodeId,
        /// The parser's complaint (it never repeats the URL).
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The requested default node is not a valid node name.
    #[error("the default node has an invalid name")]
    InvalidDefaultName {
        /// What is wrong with the name.
        #[source]
        source: ValidationError,
    },
    /// The requested default node is not in the node list.
    #[error("the default node {node} is not in the node list")]
    UnknownDefault {
        /// The requested default.
        node: NodeId,
    },
    /// A router's call timeout is zero, which would fail every call.
    #[error("the infer timeout must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (for instance the TLS backend
    /// failed to initialise).
    #[error("the HTTP client could not be built")]
    HttpClient {
        /// The client library's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// What makes a node URL unacceptable as a base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlProblem {
    /// The scheme is neither `http://` nor `https://`, or the `//` is missing.
    UnsupportedScheme,
    /// The URL holds whitespace, a control character or a backslash.
    ForbiddenCharacter,
    /// There is no host after the scheme.
    MissingHost,
    /// The URL carries a user name or password; nodes are not authenticated
    /// this way, and a credential in configuration would end up in logs.
    UserInfo,
    /// The URL has a query (`?...`); the protocol appends paths only.
    Query,
    /// The URL has a fragment (`#...`).
    Fragment,
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlProblem::UnsupportedScheme => "it must start with http://",
            UrlProblem::ForbiddenCharacter => {
                "it contains whitespace, a control character or a backslash"
            }
            UrlProblem::MissingHost => "it has no host",
            UrlProblem::UserInfo => "it must not contain a user name or password",
            UrlProblem::Query => "it must not have a query",
            UrlProblem::Fragment => "it must not have a fragment",
        })
    }
}

impl NodesConfig {
    /// Parses the `SOFIIA_NODES` syntax: `NODA1=http://host:port,NODA2=http://host:port`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first offending entry or node; see the type
    /// docs for the rules.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if s.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut entries = Vec::new();
        for (index, entry) in s.split(',').enumerate() {
            let entry_no = index + 1;
            if entry.is_empty() {
                return Err(ConfigError::EmptyEntry { entry: entry_no });
            }
            let (name, url) = entry
                .split_once('=')
                .ok_or(ConfigError::MissingEquals { entry: entry_no })?;
            entries.push((name, url));
        }
        Self::from_entries(entries)
    }

    /// Builds a configuration from `(name, url)` pairs, with the same rules as
    /// [`parse`](Self::parse); handy when the URLs come from somewhere else,
    /// such as test nodes listening on port 0.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as for [`parse`](Self::parse).
    pub fn from_entries<I, N, U>(entries: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (N, U)>,
        N: AsRef<str>,
        U: AsRef<str>,
    {
        let mut nodes: Vec<NodeId> = Vec::new();
        let mut bases = Vec::new();
        for (index, (name, url)) in entries.into_iter().enumerate() {
            let node = NodeId::new(name.as_ref()).map_err(|source| ConfigError::InvalidName {
                entry: index + 1,
                source,
            })?;
            if nodes.contains(&node) {
                return Err(ConfigError::DuplicateNode { node });
            }
            let mut replicas: Vec<String> = Vec::new();
            for (r, raw) in url.as_ref().split('|').enumerate() {
                let base = match parse_base_url(raw) {
                    Ok(base) => base,
                    Err(problem) => return Err(problem.into_error(node)),
                };
                if replicas.contains(&base) {
                    return Err(ConfigError::DuplicateReplica {
                        node,
                        replica: r + 1,
                    });
                }
                replicas.push(base);
            }
            nodes.push(node);
            bases.push(replicas);
        }
        if nodes.is_empty() {
            return Err(ConfigError::Empty);
        }
        Ok(NodesConfig {
            nodes,
            bases,
            default: 0,
        })
    }

    /// Makes `node` the default node.
    ///
    /// # Errors
    ///
    /// [`ConfigError::UnknownDefault`] when `node` is not configured.
    pub fn with_default(mut self, node: NodeId) -> Result<Self, ConfigError> {
        match self.position(&node) {
            Some(index) => {
                self.default = index;
                Ok(self)
            }
            None => Err(ConfigError::UnknownDefault { node }),
        }
    }

    /// Makes the node named `name` the default node: how `SOFIIA_DEFAULT_NODE`
    /// is applied.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidDefaultName`] when `name` is not a valid node
    /// name, [`ConfigError::UnknownDefault`] when it is not configured.
    pub fn with_default_name(self, name: &str) -> Result<Self, ConfigError> {
        let node =
            NodeId::new(name).map_err(|source| ConfigError::InvalidDefaultName { source })?;
        self.with_default(node)
    }

    /// The configured nodes, in configuration order; never empty.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The node for chats that name none.
    pub fn default_node(&self) -> &NodeId {
        &self.nodes[self.default]
    }

    /// Whether `node` is configured.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.position(node).is_some()
    }

    /// The base URL of `node`'s first replica, without a trailing slash, or
    /// `None` when it is not configured. The protocol's paths are appended
    /// to it.
    pub fn base_url(&self, node: &NodeId) -> Option<&str> {
        self.position(node)
            .and_then(|index| self.bases[index].first())
            .map(String::as_str)
    }

    /// The base URLs of `node`'s replicas, in configuration order (one for
    /// a node without replicas), or `None` when it is not configured.
    pub fn replicas(&self, node: &NodeId) -> Option<&[String]> {
        self.position(node)
            .map(|index| self.bases[index].as_slice())
    }

    /// Every node with its replicas' base URLs, in configuration order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&NodeId, &[String])> + '_ {
        self.nodes.iter().zip(self.bases.iter().map(Vec::as_slice))
    }

    fn position(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }
}

impl FromStr for NodesConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for NodesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodesConfig")
            .field("nodes", &DebugNodes(self))
            .field("default", self.default_node())
            .finish()
    }
}

struct DebugNodes<'a>(&'a NodesConfig);

impl fmt::Debug for DebugNodes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(node, base)| (node.as_str(), base)))
            .finish()
    }
}

/// Why [`parse_base_url`] refused, before a node name is attached.
enum BaseUrlError {
    Missing,
    TlsNotEnabled,
    Invalid(UrlProblem),
    Unparseable(Box<dyn StdError + Send + Sync>),
}

impl BaseUrlError {
    fn into_error(self, node: NodeId) -> ConfigError {
        match self {
            BaseUrlError::Missing => ConfigError::MissingUrl { node },
            BaseUrlError::TlsNotEnabled => ConfigError::TlsNotEnabled { node },
            BaseUrlError::Invalid(problem) => ConfigError::InvalidUrl { node, problem },
            BaseUrlError::Unparseable(source) => ConfigError::UnparseableUrl { node, source },
        }
    }
}

/// Validates a node URL and returns it normalised, without trailing slash.
fn parse_base_url(raw: &str) -> Result<String, BaseUrlError> {
    if raw.is_empty() {
        return Err(BaseUrlError::Missing);
    }
    // The URL parser silently strips surrounding whitespace and reads `\` as
    // `/`; rejecting them first keeps "what you wrote is what is used".
    if raw
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(BaseUrlError::Invalid(UrlProblem::ForbiddenCharacter));
    }
    // The parser also accepts `http:host` and `http:///host`; insist on the
    // literal `scheme://host` form.
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(raw, "http://") {
        (false, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(raw, "https://") {
        (true, rest)
    } else {
        return Err(BaseUrlError::Invalid(UrlProblem::UnsupportedScheme));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(BaseUrlError::Invalid(UrlProblem::MissingHost));
    }
    if authority.contains('@') {
        return Err(BaseUrlError::Invalid(UrlProblem::UserInfo));
    }
    if https && !cfg!(feature = "tls") {
        return Err(BaseUrlError::TlsNotEnabled);
    }
    let url = reqwest::Url::parse(raw).map_err(|e| BaseUrlError::Unparseable(Box::new(e)))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(BaseUrlError::Invalid(UrlProblem::MissingHost));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BaseUrlError::Invalid(UrlProblem::UserInfo));
    }
    if url.query().is_some() {
        return Err(BaseUrlError::Invalid(UrlProblem::Query));
    }
    if url.fragment().is_some() {
        return Err(BaseUrlError::Invalid(UrlProblem::Fragment));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn parses_nodes_in_order_with_first_as_default() {
        let config =
            NodesConfig::parse("NODA1=http://10.0.0.1:9000,NODA2=http://nodes.internal:9001/")
                .unwrap();
        assert_eq!(config.nodes(), [node("NODA1"), node("NODA2")]);
        assert_eq!(config.default_node(), &node("NODA1"));
        assert_eq!(
            config.base_url(&node("NODA1")),
            Some("http://10.0.0.1:9000")
        );
        assert_eq!(
            config.base_url(&node("NODA2")),
            Some("http://nodes.internal:9001")
        );
        assert_eq!(config.base_url(&node("NODA3")), None);
        assert!(config.contains(&node("NODA2")));
        let pairs: Vec<(&str, &[String])> = config.iter().map(|(n, u)| (n.as_str(), u)).collect();
        assert_eq!(
            pairs,
            [
                ("NODA1", &["http://10.0.0.1:9000".to_owned()][..]),
                ("NODA2", &["http://nodes.internal:9001".to_owned()][..])
            ]
        );
    }

    #[test]
    fn a_node_may_list_replicas() {
        let config =
            NodesConfig::parse("NODA1=http://a:9001|http://b:9001/,NODA2=http://c:9002").unwrap();
        assert_eq!(
            config.replicas(&node("NODA1")).unwrap(),
            ["http://a:9001", "http://b:9001"]
        );
        assert_eq!(config.base_url(&node("NODA1")), Some("http://a:9001"));
        assert_eq!(config.replicas(&node("NODA2")).unwrap(), ["http://c:9002"]);
        assert!(config.replicas(&node("NODA3")).is_none());
        for (bad, problem) in [
            ("NODA1=http://a:1|", "no URL"),
            ("NODA1=|http://a:1", "no URL"),
            ("NODA1=http://a:1|http://a:1/", "replica 2 twice"),
            ("NODA1=http://a:1|ftp://b:1", "invalid URL"),
            ("NODA1=http://a:1||http://b:1", "no URL"),
        ] {
            let err = NodesConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains(problem), "{bad}: {err}");
            assert!(!err.contains("a:1"), "no URL in messages: {err}");
        }
    }

    #[test]
    fn normalises_urls() {
        for (raw, want) in [
            ("http://h:1", "http://h:1"),
            ("http://h:1/", "http://h:1"),
            ("http://h:1///", "http://h:1"),
            ("http://H:80/", "http://h"),
            ("HTTP://h:1", "http://h:1"),
            ("http://h:1/prefix/", "http://h:1/prefix"),
            ("http://[::1]:9000", "http://[::1]:9000"),
            ("http://127.0.0.1:0", "http://127.0.0.1:0"),
        ] {
            let config = NodesConfig::parse(&format!("N={raw}")).unwrap();
            assert_eq!(config.base_url(&node("N")), Some(want), "{raw}");
        }
    }

    #[test]
    fn rejects_empty_lists_and_entries() {
        assert!(matches!(NodesConfig::parse(""), Err(ConfigError::Empty)));
        assert!(matches!(
            NodesConfig::from_entries(Vec::<(&str, &str)>::new()),
            Err(ConfigError::Empty)
        ));
        assert!(matches!(
            NodesConfig::parse("A=http://a:1,"),
            Err(ConfigError::EmptyEntry { entry: 2 })
        ));
        assert!(matches!(
            NodesConfig::parse(",A=http://a:1"),
            Err(ConfigError::EmptyEntry { entry: 1 })
        ));
        assert!(matches!(
            NodesConfig::parse("A=http://a:1,,B=http://b:1"),
            Err(ConfigError::EmptyEntry { entry: 2 })
        ));
        assert!(matches!(
            NodesConfig::parse("A=http://a:1,B"),
            Err(ConfigError::MissingEquals { entry: 2 })
        ));
        assert!(matches!(
            NodesConfig::parse("A="),
            Err(ConfigError::MissingUrl { .. })
        ));
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        for bad in [
            "=http://a:1",
            " A=http://a:1",
            "A =http://a:1",
            "NODA.1=http://a:1",
        ] {
            assert!(
                matches!(
                    NodesConfig::parse(bad),
                    Err(ConfigError::InvalidName { entry: 1, .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            NodesConfig::parse("A=http://a:1, B=http://b:1"),
            Err(ConfigError::InvalidName { entry: 2, .. })
        ));
        match NodesConfig::parse("A=http://a:1,B=http://b:1,A=http://c:1") {
            Err(ConfigError::DuplicateNode { node: n }) => assert_eq!(n, node("A")),
            other => panic!("unexpected {other:?}"),
        }
        // Names are case-sensitive, as NodeId is.
        assert!(NodesConfig::parse("a=http://a:1,A=http://b:1").is_ok());
    }

    #[test]
    fn rejects_urls_that_are_not_plain_http_bases() {
        let cases: &[(&str, UrlProblem)] = &[
            ("ftp://a:1", UrlProblem::UnsupportedScheme),
            ("a:1", UrlProblem::UnsupportedScheme),
            ("http:a:1", UrlProblem::UnsupportedScheme),
            ("/v1", UrlProblem::UnsupportedScheme),
            ("http://", UrlProblem::MissingHost),
            ("http:///a", UrlProblem::MissingHost),
            ("http://?x", UrlProblem::MissingHost),
            ("http://user@a:1", UrlProblem::UserInfo),
            ("http://user:pw@a:1", UrlProblem::UserInfo),
            ("http://a:1/?x=1", UrlProblem::Query),
            ("http://a:1?", UrlProblem::Query),
            ("http://a:1/#frag", UrlProblem::Fragment),
            ("http://a:1 ", UrlProblem::ForbiddenCharacter),
            (" http://a:1", UrlProblem::ForbiddenCharacter),
            ("http://a:1/\tx", UrlProblem::ForbiddenCharacter),
            ("http:\\\\a:1", UrlProblem::ForbiddenCharacter),
        ];
        for (raw, want) in cases {
            match NodesConfig::parse(&format!("N={raw}")) {
                Err(ConfigError::InvalidUrl { node: n, problem }) => {
                    assert_eq!(n, node("N"), "{raw}");
                    assert_eq!(problem, *want, "{raw}");
                }
                other => panic!("{raw:?}: unexpected {other:?}"),
            }
        }
        for raw in ["http://a:notaport", "http://a:99999", "http://[::1"] {
            assert!(
                matches!(
                    NodesConfig::parse(&format!("N={raw}")),
                    Err(ConfigError::UnparseableUrl { .. })
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn errors_name_the_node_but_never_the_url() {
        let err = NodesConfig::parse("N=http://user:hunter2@a:1").unwrap_err();
        let text = err.to_string();
        assert!(text.contains('N'), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = NodesConfig::parse("N=http://secret-host:99999").unwrap_err();
        let mut chain = err.to_string();
        let mut source = StdError::source(&err);
        while let Some(s) = source {
            chain.push_str(&s.to_string());
            source = s.source();
        }
        assert!(!chain.contains("secret-host"), "{chain}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let err = NodesConfig::parse("NODA1=https://a:443").unwrap_err();
        assert!(matches!(err, ConfigError::TlsNotEnabled { .. }));
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_is_accepted_with_the_tls_feature() {
        let config = NodesConfig::parse("NODA1=https://a:443/").unwrap();
        assert_eq!(config.base_url(&node("NODA1")), Some("https://a"));
    }

    #[test]
    fn default_node_can_be_chosen_among_configured_nodes() {
        let config = NodesConfig::parse("A=http://a:1,B=http://b:1").unwrap();
        let b = config.clone().with_default(node("B")).unwrap();
        assert_eq!(b.default_node(), &node("B"));
        assert_eq!(b.nodes(), config.nodes(), "order is kept");
        assert_eq!(
            config
                .clone()
                .with_default_name("A")
                .unwrap()
                .default_node(),
            &node("A")
        );
        assert!(matches!(
            config.clone().with_default(node("C")),
            Err(ConfigError::UnknownDefault { .. })
        ));
        assert!(matches!(
            config.clone().with_default_name("a"),
            Err(ConfigError::UnknownDefault { .. })
        ));
        assert!(matches!(
            config.with_default_name("not valid"),
            Err(ConfigError::InvalidDefaultName { .. })
        ));
    }

    #[test]
    fn from_entries_applies_the_same_rules() {
        let config =
            NodesConfig::from_entries([("NODA1", "http://127.0.0.1:1/"), ("NODA2", "http://b:2")])
                .unwrap();
        assert_eq!(config.base_url(&node("NODA1")), Some("http://127.0.0.1:1"));
        assert!(matches!(
            NodesConfig::from_entries([("NODA1", "http://a:1"), ("bad name", "http://b:2")]),
            Err(ConfigError::InvalidName { entry: 2, .. })
        ));
    }

    #[test]
    fn debug_lists_nodes_and_default() {
        let config = NodesConfig::parse("A=http://a:1,B=http://b:2")
            .unwrap()
            .with_default_name("B")
            .unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains(r#""A": ["http://a:1"]"#), "{debug}");
        assert!(debug.contains(r#"default: NodeId("B")"#), "{debug}");
    }
}
