//! `HttpRouter` against real stub nodes: the node protocol end to end.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use sofiia_core_domain::{NodeId, error_chain};
use sofiia_router_client::testing::{Subject, request};
use sofiia_router_client::{HttpRouter, Instrumented, NodeRouter, NodesConfig, RouterError};
use sofiia_router_stub::{ReplyMode, StubConfig, StubHandle, StubNode};

const TIMEOUT: Duration = Duration::from_secs(10);

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node name")
}

fn stub(name: &str) -> StubHandle {
    StubNode::spawn_loopback(StubConfig::new(node(name))).expect("the stub starts")
}

fn router_for(stubs: &[&StubHandle], timeout: Duration) -> HttpRouter {
    let config = NodesConfig::from_entries(stubs.iter().map(|s| (s.name().as_str(), s.base_url())))
        .expect("stub URLs are valid node URLs");
    HttpRouter::new(config, timeout).expect("the router builds")
}

/// An address nothing listens on: bound to get a free port, then released.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("a bound address")
}

mod suite {
    use super::*;

    async fn subject() -> Subject {
        let noda1 = stub("NODA1");
        let noda2 = stub("NODA2");
        let router = router_for(&[&noda1, &noda2], TIMEOUT);
        Subject::with_guard(Arc::new(router), (noda1, noda2))
    }

    sofiia_router_client::node_router_tests!(subject);
}

mod instrumented_suite {
    use super::*;

    async fn subject() -> Subject {
        let noda1 = stub("NODA1");
        let router = Instrumented::new(router_for(&[&noda1], TIMEOUT));
        Subject::with_guard(Arc::new(router), noda1)
    }

    sofiia_router_client::node_router_tests!(subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_propagates_headers() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    let req = request(&node("NODA1"), "status of the pumps?");

    let reply = router.infer(&req).await.unwrap();
    assert_eq!(reply.text, "[NODA1] echo: status of the pumps?");

    let calls = noda1.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.idempotency_key, req.idempotency_key);
    assert_eq!(call.request_id.as_deref(), Some(req.request_id.as_str()));
    assert_eq!(call.chat_id, req.chat_id);
    assert_eq!(call.message_id, req.message_id);
    assert_eq!(call.operator_id, req.operator_id);
    assert_eq!(call.node, req.node);
    assert_eq!(call.text_chars, "status of the pumps?".chars().count());
}

#[tokio::test]
async fn the_same_key_is_sent_on_every_attempt() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    let req = request(&node("NODA1"), "retry me");
    noda1.set_fail_status(Some(503)).unwrap();
    let err = router.infer(&req).await.unwrap_err();
    assert!(
        matches!(err, RouterError::Status { status: 503, .. }),
        "{err:?}"
    );
    noda1.set_fail_status(None).unwrap();
    router.infer(&req).await.unwrap();
    let keys: Vec<String> = noda1
        .calls()
        .into_iter()
        .map(|c| c.idempotency_key)
        .collect();
    assert_eq!(keys, [req.idempotency_key.clone(), req.idempotency_key]);
}

#[tokio::test]
async fn a_failing_node_is_a_status_error() {
    let noda1 =
        StubNode::spawn_loopback(StubConfig::new(node("NODA1")).with_fail_status(Some(500)))
            .unwrap();
    let router = router_for(&[&noda1], TIMEOUT);
    let err = router
        .infer(&request(&node("NODA1"), "hi"))
        .await
        .unwrap_err();
    match err {
        RouterError::Status { node: n, status } => {
            assert_eq!(n, node("NODA1"));
            assert_eq!(status, 500);
        }
        other => panic!("Status expected, got {other:?}"),
    }
    assert_eq!(noda1.call_count(), 1);
}

#[tokio::test]
async fn a_slow_node_times_out() {
    let noda1 =
        StubNode::spawn_loopback(StubConfig::new(node("NODA1")).with_delay(Duration::from_secs(2)))
            .unwrap();
    let timeout = Duration::from_millis(50);
    let router = router_for(&[&noda1], timeout);
    let err = router
        .infer(&request(&node("NODA1"), "hi"))
        .await
        .unwrap_err();
    match err {
        RouterError::Timeout { node: n, after } => {
            assert_eq!(n, node("NODA1"));
            assert_eq!(after, timeout);
        }
        other => panic!("Timeout expected, got {other:?}"),
    }
    // The aborted exchange left nothing behind that the next call could
    // pick up as its answer.
    let err = router
        .infer(&request(&node("NODA1"), "again"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test]
async fn an_unreachable_node_is_unreachable() {
    let addr = dead_addr();
    let config = NodesConfig::from_entries([("NODA1", format!("http://{addr}"))]).unwrap();
    let router = HttpRouter::new(config, TIMEOUT).unwrap();
    let err = router
        .infer(&request(&node("NODA1"), "hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.kind(), "unreachable");
    let err = router.probe(&node("NODA1")).await.unwrap_err();
    assert!(matches!(err, RouterError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_replies_are_invalid_reply_errors() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    for mode in [
        ReplyMode::NotJson,
        ReplyMode::MissingText,
        ReplyMode::Oversized,
    ] {
        noda1.set_reply(mode);
        let err = router
            .infer(&request(&node("NODA1"), "hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RouterError::InvalidReply { .. }),
            "{mode:?}: {err:?}"
        );
        let chain = error_chain(&err);
        assert!(
            !chain.contains("this is not a protocol reply"),
            "{mode:?}: the body leaked into the error: {chain}"
        );
    }
    noda1.set_reply(ReplyMode::Echo);
    assert!(router.infer(&request(&node("NODA1"), "hi")).await.is_ok());
}

#[tokio::test]
async fn an_unknown_node_is_rejected_without_a_call() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    let err = router
        .infer(&request(&node("NODA3"), "hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
    assert_eq!(noda1.call_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_reaches_only_its_node() {
    let noda1 = stub("NODA1");
    let noda2 = stub("NODA2");
    let router = router_for(&[&noda1, &noda2], TIMEOUT);
    assert_eq!(router.default_node(), &node("NODA1"));

    let reply = router
        .infer(&request(&node("NODA2"), "for two"))
        .await
        .unwrap();
    assert_eq!(reply.text, "[NODA2] echo: for two");
    assert_eq!(noda1.call_count(), 0);
    assert_eq!(noda2.call_count(), 1);
    assert_eq!(noda2.calls()[0].node, node("NODA2"));

    let reply = router
        .infer(&request(&node("NODA1"), "for one"))
        .await
        .unwrap();
    assert_eq!(reply.text, "[NODA1] echo: for one");
    assert_eq!((noda1.call_count(), noda2.call_count()), (1, 1));
}

#[tokio::test]
async fn probes_answer_whatever_the_infer_behaviour() {
    let noda1 =
        StubNode::spawn_loopback(StubConfig::new(node("NODA1")).with_fail_status(Some(500)))
            .unwrap();
    let router = router_for(&[&noda1], TIMEOUT);
    router.probe(&node("NODA1")).await.unwrap();
    assert_eq!(noda1.call_count(), 0, "a probe is not an infer call");
    let err = router.probe(&node("NODA2")).await.unwrap_err();
    assert!(matches!(err, RouterError::UnknownNode { .. }), "{err:?}");
}

#[tokio::test]
async fn a_stopped_node_is_unreachable() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    router.infer(&request(&node("NODA1"), "hi")).await.unwrap();
    // Graceful stop closes the pooled keep-alive connection too, so the next
    // call must open a new one and find nothing listening.
    noda1.stop().await;
    let err = router
        .infer(&request(&node("NODA1"), "hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::Unreachable { .. }), "{err:?}");
}

#[actix_web::test]
async fn works_inside_an_actix_runtime() {
    let noda1 = stub("NODA1");
    let router = router_for(&[&noda1], TIMEOUT);
    let reply = router
        .infer(&request(&node("NODA1"), "from actix"))
        .await
        .unwrap();
    assert_eq!(reply.text, "[NODA1] echo: from actix");
    noda1.stop().await;
}
