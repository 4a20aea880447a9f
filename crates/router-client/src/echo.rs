//! The built-in local echo node.

use async_trait::async_trait;
use sofiia_core_domain::NodeId;

use crate::{InferObserver, InferReply, InferRequest, NodeRouter, RouterError};

/// The built-in echo node, **for local runs only**: what the console uses
/// when `SOFIIA_NODES` is unset, so a fresh checkout answers sends without
/// any inference node running.
///
/// It knows exactly one node, [`EchoRouter::NODE`] (`echo`), and answers
/// every send in-process with `echo: <text>`; its probe always succeeds. It
/// talks to no agent at all, which is why the console logs a loud warning
/// whenever it runs with it.
///
/// ```
/// use sofiia_router_client::{EchoRouter, NodeRouter};
///
/// let router = EchoRouter::new();
/// assert_eq!(router.default_node().as_str(), "echo");
/// assert_eq!(router.nodes().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct EchoRouter {
    nodes: [NodeId; 1],
}

impl EchoRouter {
    /// The echo node's name.
    pub const NODE: &'static str = "echo";

    /// The echo router.
    pub fn new() -> Self {
        let node = NodeId::new(Self::NODE).expect("`echo` is a valid node name");
        EchoRouter { nodes: [node] }
    }
}

impl Default for EchoRouter {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl NodeRouter for EchoRouter {
    fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    fn default_node(&self) -> &NodeId {
        &self.nodes[0]
    }

    async fn infer(&self, req: &InferRequest) -> Result<InferReply, RouterError> {
        self.infer_observed(req, &()).await
    }

    /// Streamed, the echo comes word by word (each piece a word and the
    /// whitespace after it).
    async fn infer_observed(
        &self,
        req: &InferRequest,
        observer: &dyn InferObserver,
    ) -> Result<InferReply, RouterError> {
        if !self.knows(&req.node) {
            return Err(RouterError::UnknownNode {
                node: req.node.clone(),
            });
        }
        let text = format!("echo: {}", req.text.as_str());
        if observer.wants_stream() {
            for word in text.split_inclusive(char::is_whitespace) {
                observer.delta(word);
            }
        }
        Ok(InferReply { text })
    }

    async fn probe(&self, node: &NodeId) -> Result<(), RouterError> {
        if self.knows(node) {
            Ok(())
        } else {
            Err(RouterError::UnknownNode { node: node.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Subject, request};

    async fn subject() -> Subject {
        Subject::new(std::sync::Arc::new(EchoRouter::new()))
    }

    crate::node_router_tests!(subject);

    #[derive(Default)]
    struct Pieces(std::sync::Mutex<Vec<String>>);

    impl InferObserver for Pieces {
        fn wants_stream(&self) -> bool {
            true
        }

        fn delta(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[tokio::test]
    async fn streams_word_by_word() {
        let router = EchoRouter::default();
        let pieces = Pieces::default();
        let reply = router
            .infer_observed(&request(router.default_node(), "all  green now"), &pieces)
            .await
            .unwrap();
        let pieces = pieces.0.into_inner().unwrap();
        assert_eq!(pieces, ["echo: ", "all ", " ", "green ", "now"]);
        assert_eq!(pieces.concat(), reply.text);
    }

    #[tokio::test]
    async fn echoes_the_text() {
        let router = EchoRouter::default();
        let reply = router
            .infer(&request(router.default_node(), "status?"))
            .await
            .unwrap();
        assert_eq!(reply.text, "echo: status?");
    }

    #[tokio::test]
    async fn knows_only_echo() {
        let router = EchoRouter::new();
        let other = NodeId::new("NODA1").unwrap();
        assert!(!router.knows(&other));
        let err = router.infer(&request(&other, "hi")).await.unwrap_err();
        assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
        assert!(router.probe(router.default_node()).await.is_ok());
    }
}
