//! The node protocol over HTTP.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Client, Response, Url, redirect};
use serde::Deserialize;
use sofiia_core_domain::NodeId;

use crate::config::{ConfigError, NodesConfig};
use crate::protocol::{
    HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, INFER_PATH, InferBody, MAX_REPLY_BYTES, REQUEST_ID_HEADER,
};
use crate::{InferReply, InferRequest, NodeRouter, RouterError};

/// Longest time spent opening a TCP connection when the call timeout is
/// longer: a node that does not accept within this is treated as unreachable
/// instead of eating the whole call budget.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound of a probe's timeout: readiness checks must answer quickly even
/// when infer calls may take long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an unused pooled connection is kept. Below the usual server-side
/// keep-alive limits would be ideal, but nodes vary; stale connections are
/// retried by the client library when the server closed them first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`NodeRouter`] speaking the node protocol over HTTP/1.1 to the nodes of a
/// [`NodesConfig`].
///
/// One pooled client serves every node, so consecutive sends to a node reuse
/// connections. Each infer call has one deadline covering connecting, sending,
/// waiting and reading the whole reply; the reply body is read up to
/// [`MAX_REPLY_BYTES`]. Redirects are not followed (a 3xx is a
/// [`RouterError::Status`]) so the operator's text never goes anywhere but the
/// configured node, and proxy environment variables are ignored for the same
/// reason.
///
/// Errors: an unconfigured node is [`RouterError::UnknownNode`] before any
/// I/O; a refused, reset or unresolvable connection, or one not accepted
/// within 5 s when the call timeout is longer, is
/// [`RouterError::Unreachable`]; the call deadline expiring at any stage is
/// [`RouterError::Timeout`]; a non-2xx answer is [`RouterError::Status`]; a
/// 2xx body over the cap or without a string `text` is
/// [`RouterError::InvalidReply`], whose source says what was wrong but never
/// repeats the body.
///
/// ```
/// use std::time::Duration;
/// use sofiia_router_client::{HttpRouter, NodeRouter, NodesConfig};
///
/// let nodes = NodesConfig::parse("NODA1=http://127.0.0.1:9001")?;
/// let router = HttpRouter::new(nodes, Duration::from_millis(30_000))?;
/// assert_eq!(router.default_node().as_str(), "NODA1");
/// assert_eq!(router.timeout(), Duration::from_secs(30));
/// # Ok::<(), sofiia_router_client::ConfigError>(())
/// ```
pub struct HttpRouter {
    config: NodesConfig,
    // Parallel to `config.nodes()`, parsed once so a call does no URL work.
    endpoints: Vec<Endpoints>,
    client: Client,
    timeout: Duration,
    probe_timeout: Duration,
}

struct Endpoints {
    infer: Url,
    health: Url,
}

impl HttpRouter {
    /// A router for `config` whose infer calls each get `timeout` in all.
    ///
    /// Probes get `min(timeout, 2 s)`; see
    /// [`with_probe_timeout`](Self::with_probe_timeout).
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout,
    /// [`ConfigError::HttpClient`] when the HTTP client cannot be built.
    pub fn new(config: NodesConfig, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        let mut builder = Client::builder()
            .user_agent(concat!("sofiia-router-client/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(redirect::Policy::none())
            .no_proxy();
        // When the call timeout is shorter, it bounds connecting by itself; a
        // second timer firing at the same instant would make the error kind
        // (unreachable or timeout) a race.
        if CONNECT_TIMEOUT < timeout {
            builder = builder.connect_timeout(CONNECT_TIMEOUT);
        }
        let client = builder.build().map_err(|e| ConfigError::HttpClient {
            source: Box::new(e),
        })?;
        let endpoints = config
            .iter()
            .map(|(node, base)| {
                let join = |path: &str| {
                    Url::parse(&format!("{base}{path}")).map_err(|e| ConfigError::UnparseableUrl {
                        node: node.clone(),
                        source: Box::new(e),
                    })
                };
                Ok(Endpoints {
                    infer: join(INFER_PATH)?,
                    health: join(HEALTH_PATH)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(HttpRouter {
            config,
            endpoints,
            client,
            timeout,
            probe_timeout: timeout.min(PROBE_TIMEOUT),
        })
    }

    /// Sets the timeout of [`probe`](NodeRouter::probe) calls.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero timeout.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        self.probe_timeout = timeout;
        Ok(self)
    }

    /// The configuration this router was built from.
    pub fn config(&self) -> &NodesConfig {
        &self.config
    }

    /// The deadline of each infer call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The deadline of each probe.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    fn endpoints(&self, node: &NodeId) -> Result<&Endpoints, RouterError> {
        self.config
            .nodes()
            .iter()
            .position(|n| n == node)
            .map(|index| &self.endpoints[index])
            .ok_or_else(|| RouterError::UnknownNode { node: node.clone() })
    }

    async fn exchange(
        &self,
        url: &Url,
        req: &InferRequest,
        request_id: HeaderValue,
        idempotency_key: HeaderValue,
        body: Vec<u8>,
    ) -> Result<InferReply, RouterError> {
        let node = &req.node;
        let mut response = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(REQUEST_ID_HEADER, request_id)
            .header(IDEMPOTENCY_KEY_HEADER, idempotency_key)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(node, self.timeout, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(RouterError::Status {
                node: node.clone(),
                status: status.as_u16(),
            });
        }
        let bytes = read_capped(&mut response, MAX_REPLY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => transport_error(node, self.timeout, e),
                ReadError::Reply(e) => RouterError::InvalidReply {
                    node: node.clone(),
                    source: Box::new(e),
                },
            })?;
        let reply: ReplyText =
            serde_json::from_slice(&bytes).map_err(|e| RouterError::InvalidReply {
                node: node.clone(),
                source: Box::new(ReplyError::from_json(&e)),
            })?;
        Ok(InferReply { text: reply.text })
    }
}

#[async_trait]
impl NodeRouter for HttpRouter {
    fn nodes(&self) -> &[NodeId] {
        self.config.nodes()
    }

    fn default_node(&self) -> &NodeId {
        self.config.default_node()
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        let endpoints = self.endpoints(&req.node)?;
        let invalid = |source: Box<dyn StdError + Send + Sync>| RouterError::InvalidRequest {
            node: req.node.clone(),
            source,
        };
        // Checked here rather than left to the client library, whose error
        // for a bad header would be indistinguishable from a transport error.
        let request_id = HeaderValue::from_str(&req.request_id)
            .map_err(|_| invalid(Box::new(BadHeader(REQUEST_ID_HEADER))))?;
        let idempotency_key = HeaderValue::from_str(&req.idempotency_key)
            .map_err(|_| invalid(Box::new(BadHeader(IDEMPOTENCY_KEY_HEADER))))?;
        let body = serde_json::to_vec(&InferBody::from(req)).map_err(|e| invalid(Box::new(e)))?;
        let call = self.exchange(&endpoints.infer, req, request_id, idempotency_key, body);
        // Dropping `call` on expiry aborts the request and closes its
        // connection, so a late reply cannot be mistaken for the next one.
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(RouterError::Timeout {
                    node: req.node.clone(),
                    after: self.timeout,
                })
            })
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        let endpoints = self.endpoints(node)?;
        let call = self
            .client
            .get(endpoints.health.clone())
            .header(ACCEPT, "application/json")
            .send();
        match tokio::time::timeout(self.probe_timeout, call).await {
            // Any status means something speaking HTTP answered; whether the
            // node is healthy beyond that is its own business.
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(transport_error(node, self.probe_timeout, e)),
            Err(_) => Err(RouterError::Timeout {
                node: node.clone(),
                after: self.probe_timeout,
            }),
        }
    }
}

impl fmt::Debug for HttpRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRouter")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .field("probe_timeout", &self.probe_timeout)
            .finish_non_exhaustive()
    }
}

/// The only part of a reply the protocol defines.
#[derive(Deserialize)]
struct ReplyText {
    text: String,
}

fn transport_error(node: &NodeId, after: Duration, e: reqwest::Error) -> RouterError {
    // A connect timeout means the node never accepted: unreachable, like a
    // refused connection, not a node that is slow to answer.
    if e.is_timeout() && !e.is_connect() {
        RouterError::Timeout {
            node: node.clone(),
            after,
        }
    } else {
        RouterError::Unreachable {
            node: node.clone(),
            source: Box::new(e),
        }
    }
}

enum ReadError {
    Transport(reqwest::Error),
    Reply(ReplyError),
}

async fn read_capped(response: &mut Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(ReadError::Reply(ReplyError::TooLarge { limit }));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::Reply(ReplyError::TooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What is wrong with a 2xx reply body. Deliberately says where, never what:
/// the body is agent text, which must not reach logs through an error chain.
#[derive(Debug, thiserror::Error)]
enum ReplyError {
    #[error("the reply body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the reply body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("the reply body is JSON but not an object with a string `text`")]
    NoText,
}

impl ReplyError {
    fn from_json(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => ReplyError::NoText,
            _ => ReplyError::NotJson {
                line: e.line(),
                column: e.column(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} header value is not a valid HTTP header value")]
struct BadHeader(&'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;

    fn router(timeout: Duration) -> HttpRouter {
        // Loopback discard port; none of these tests gets as far as connecting.
        let config = NodesConfig::parse("NODA1=http://127.0.0.1:9,NODA2=http://127.0.0.2:9/base/")
            .unwrap()
            .with_default_name("NODA2")
            .unwrap();
        HttpRouter::new(config, timeout).unwrap()
    }

    #[test]
    fn builds_endpoint_urls_from_bases() {
        let router = router(Duration::from_secs(30));
        let noda2 = NodeId::new("NODA2").unwrap();
        let endpoints = router.endpoints(&noda2).unwrap();
        assert_eq!(endpoints.infer.as_str(), "http://127.0.0.2:9/base/v1/infer");
        assert_eq!(
            endpoints.health.as_str(),
            "http://127.0.0.2:9/base/v1/health"
        );
        assert_eq!(router.default_node(), &noda2);
        assert_eq!(router.probe_timeout(), PROBE_TIMEOUT);
    }

    #[test]
    fn rejects_zero_timeouts() {
        let config = NodesConfig::parse("NODA1=http://127.0.0.1:9").unwrap();
        assert!(matches!(
            HttpRouter::new(config.clone(), Duration::ZERO),
            Err(ConfigError::ZeroTimeout)
        ));
        let router = HttpRouter::new(config, Duration::from_millis(500)).unwrap();
        assert_eq!(router.probe_timeout(), Duration::from_millis(500));
        assert!(matches!(
            router.with_probe_timeout(Duration::ZERO),
            Err(ConfigError::ZeroTimeout)
        ));
    }

    #[tokio::test]
    async fn unknown_node_fails_without_io() {
        // Any I/O would surface as an unreachable error instead of UnknownNode.
        let router = router(Duration::from_secs(30));
        let other = NodeId::new("NODA3").unwrap();
        let err = router.infer(&request(&other, "hi")).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
        let err = router.probe(&other).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn header_values_are_checked_before_sending() {
        let router = router(Duration::from_secs(30));
        let node = router.default_node().clone();
        let mut req = request(&node, "hi");
        req.idempotency_key = "bad\nkey".into();
        let err = router.infer(&req).await.unwrap_err();
        assert!(matches!(err, RouterError::InvalidRequest { .. }), "{err:?}");
        assert_eq!(err.kind(), "invalid_request");
        let source = StdError::source(&err).unwrap().to_string();
        assert!(source.contains("idempotency-key"), "{source}");
    }

    fn json_error(body: &[u8]) -> serde_json::Error {
        match serde_json::from_slice::<ReplyText>(body) {
            Ok(_) => panic!("body should not parse"),
            Err(e) => e,
        }
    }

    #[test]
    fn reply_errors_do_not_repeat_the_body() {
        for body in [
            r#""secret reply""#,
            r#"{"text": ["secret reply"]}"#,
            "secret reply",
        ] {
            let e = json_error(body.as_bytes());
            let text = ReplyError::from_json(&e).to_string();
            assert!(!text.contains("secret"), "{text}");
        }
        let e = json_error(b"{\"txt\":1}");
        assert!(matches!(ReplyError::from_json(&e), ReplyError::NoText));
        let e = json_error(b"<html>");
        assert!(matches!(
            ReplyError::from_json(&e),
            ReplyError::NotJson { .. }
        ));
    }

    #[test]
    fn debug_shows_configuration_only() {
        let debug = format!("{:?}", router(Duration::from_secs(30)));
        assert!(debug.contains("NODA1"), "{debug}");
        assert!(debug.contains("timeout"), "{debug}");
    }
}
