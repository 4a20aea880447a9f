//! `HttpRouter` over a node with replicas, against real stub nodes: a send
//! passes over a replica that refuses the connection or answers 5xx, with
//! the same node-side key; a failing replica rests, then is tried again.

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use sofiia_core_domain::NodeId;
use sofiia_router_client::testing::request;
use sofiia_router_client::{HttpRouter, NodeRouter, NodesConfig, RouterError};
use sofiia_router_stub::{StubConfig, StubHandle, StubNode};

fn noda1() -> NodeId {
    NodeId::new("NODA1").expect("valid node name")
}

fn replica() -> StubHandle {
    StubNode::spawn_loopback(StubConfig::new(noda1())).expect("the stub starts")
}

/// A base URL nothing listens on.
fn dead() -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    format!("http://{}", listener.local_addr().expect("bound"))
}

fn router(replicas: &[String], cooldown: Duration) -> HttpRouter {
    let config = NodesConfig::from_entries([("NODA1", replicas.join("|"))]).expect("valid");
    HttpRouter::new(config, Duration::from_secs(10))
        .expect("the router builds")
        .with_cooldown(cooldown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_passed_over_and_rested() {
    let live = replica();
    let router = router(&[dead(), live.base_url()], Duration::from_secs(60));
    for i in 0..10 {
        let reply = router
            .infer(&request(&noda1(), &format!("send {i}")))
            .await
            .expect("the live replica answers");
        assert_eq!(reply.text, format!("[NODA1] echo: send {i}"));
    }
    assert_eq!(live.call_count(), 10);
    let states = router.replicas(&noda1());
    assert_eq!(states.len(), 2);
    assert!(states[0].resting_for.is_some(), "{states:?}");
    assert_eq!(states[1].resting_for, None, "{states:?}");
    router.probe(&noda1()).await.expect("one replica answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_replica_is_passed_over_with_the_same_key_and_rested() {
    let failing = replica();
    failing.set_fail_status(Some(500)).unwrap();
    let live = replica();
    let router = router(
        &[failing.base_url(), live.base_url()],
        Duration::from_secs(60),
    );
    let mut keys = Vec::new();
    for i in 0..10 {
        let req = request(&noda1(), &format!("send {i}"));
        keys.push(req.idempotency_key.clone());
        router.infer(&req).await.expect("the live replica answers");
    }
    assert_eq!(live.call_count(), 10);
    // Rested after its first 500: asked once, not once per send.
    let tried = failing.calls();
    assert_eq!(tried.len(), 1, "{tried:?}");
    // The send it failed went on to the live replica with its own key.
    let passed_over = &tried[0].idempotency_key;
    assert_eq!(
        live.calls()
            .iter()
            .filter(|c| &c.idempotency_key == passed_over)
            .count(),
        1
    );
    assert!(keys.contains(passed_over));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rested_replica_is_tried_again_after_its_cooldown() {
    let flaky = replica();
    flaky.set_fail_status(Some(503)).unwrap();
    let other = replica();
    let router = router(
        &[flaky.base_url(), other.base_url()],
        Duration::from_millis(200),
    );
    router.infer(&request(&noda1(), "one")).await.unwrap();
    router.infer(&request(&noda1(), "two")).await.unwrap();
    assert_eq!(flaky.call_count(), 1, "rested after its failure");
    flaky.set_fail_status(None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its turn comes again within two sends, and it answers.
    router.infer(&request(&noda1(), "three")).await.unwrap();
    router.infer(&request(&noda1(), "four")).await.unwrap();
    assert_eq!(flaky.call_count(), 2);
    assert!(
        router
            .replicas(&noda1())
            .iter()
            .all(|r| r.resting_for.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_the_answer_and_not_passed_over() {
    let refusing = replica();
    refusing.set_fail_status(Some(422)).unwrap();
    let other = replica();
    let router = router(
        &[refusing.base_url(), other.base_url()],
        Duration::from_secs(60),
    );
    let mut statuses = Vec::new();
    for _ in 0..2 {
        match router.infer(&request(&noda1(), "hi")).await {
            Err(RouterError::Status { status, .. }) => statuses.push(status),
            Ok(_) => statuses.push(200),
            Err(e) => panic!("{e:?}"),
        }
    }
    // Replicas take turns: one send met the 422, which is its answer.
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 422]);
    assert_eq!(refusing.call_count() + other.call_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_is_unreachable() {
    let router = router(&[dead(), dead()], Duration::from_secs(60));
    for _ in 0..3 {
        let err = router.infer(&request(&noda1(), "hi")).await.unwrap_err();
        assert!(matches!(err, RouterError::Unreachable { .. }), "{err:?}");
    }
    assert!(router.probe(&noda1()).await.is_err());
}
