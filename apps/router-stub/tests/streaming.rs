//! `HttpRouter` reading streamed answers from real stub nodes: pieces as
//! they come, the JSON fallback, breaks mid-stream, the first-byte and idle
//! deadlines, and failover before the first piece.

use std::time::Duration;

use sofiia_core_domain::NodeId;
use sofiia_router_client::testing::{Recorder, request};
use sofiia_router_client::{HttpRouter, NodeRouter, NodesConfig, ReplicaAttempt, RouterError};
use sofiia_router_stub::{StreamBreak, StreamConfig, StubConfig, StubHandle, StubNode};

fn noda1() -> NodeId {
    NodeId::new("NODA1").expect("valid node name")
}

fn stub(stream: StreamConfig) -> StubHandle {
    StubNode::spawn_loopback(StubConfig::new(noda1()).with_stream(stream)).expect("the stub starts")
}

fn streaming(chunks: usize) -> StreamConfig {
    let mut stream = StreamConfig::default();
    stream.chunks = chunks;
    stream
}

fn router(bases: &[&StubHandle]) -> HttpRouter {
    let bases: Vec<String> = bases.iter().map(|s| s.base_url()).collect();
    let config = NodesConfig::from_entries([("NODA1", bases.join("|"))]).expect("valid");
    HttpRouter::new(config, Duration::from_secs(10)).expect("the router builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_comes_in_pieces_that_join_to_the_reply() {
    let node = stub(streaming(5));
    let router = router(&[&node]);
    let recorder = Recorder::streaming();
    let reply = router
        .infer_observed(&request(&noda1(), "how are the disks?"), &recorder)
        .await
        .expect("the node answers");
    let pieces = recorder.pieces();
    assert_eq!(pieces.len(), 5, "{pieces:?}");
    assert_eq!(pieces.concat(), reply.text);
    assert_eq!(reply.text, "[NODA1] echo: how are the disks?");
    assert_eq!(node.call_count(), 1);
    // One replica: no attempts to report.
    assert!(recorder.attempts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_wants_no_stream_gets_json_and_no_pieces() {
    let node = stub(streaming(5));
    let router = router(&[&node]);
    let recorder = Recorder::default();
    let reply = router
        .infer_observed(&request(&noda1(), "status?"), &recorder)
        .await
        .expect("the node answers");
    assert_eq!(reply.text, "[NODA1] echo: status?");
    assert!(recorder.pieces().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_stream_gives_one_piece() {
    let mut config = streaming(5);
    config.enabled = false;
    let node = stub(config);
    let router = router(&[&node]);
    let recorder = Recorder::streaming();
    let reply = router
        .infer_observed(&request(&noda1(), "status?"), &recorder)
        .await
        .expect("the node answers");
    assert_eq!(recorder.pieces(), vec![reply.text]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_mid_way_is_interrupted_after_its_pieces() {
    for how in [StreamBreak::ErrorEvent, StreamBreak::Disconnect] {
        let mut config = streaming(4);
        config.fail_after_chunks = Some(2);
        config.break_with = how;
        let node = stub(config);
        let router = router(&[&node]);
        let recorder = Recorder::streaming();
        let err = router
            .infer_observed(&request(&noda1(), "a long answer please"), &recorder)
            .await
            .expect_err("the stream breaks");
        assert!(
            matches!(err, RouterError::Interrupted { .. }),
            "{how:?}: {err:?}"
        );
        assert_eq!(err.kind(), "interrupted");
        assert_eq!(recorder.pieces().len(), 2, "{how:?}");
        assert_eq!(node.call_count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_the_idle_timeout_is_a_timeout() {
    let mut config = streaming(3);
    config.chunk_delay = Duration::from_millis(600);
    let node = stub(config);
    let router = router(&[&node])
        .with_idle_timeout(Duration::from_millis(150))
        .expect("non-zero");
    let recorder = Recorder::streaming();
    let err = router
        .infer_observed(&request(&noda1(), "slow"), &recorder)
        .await
        .expect_err("the pause is too long");
    assert!(
        matches!(err, RouterError::Timeout { after, .. } if after == Duration::from_millis(150)),
        "{err:?}"
    );
    assert!(recorder.pieces().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_breaks_before_its_first_piece_is_passed_over() {
    let mut config = streaming(3);
    config.fail_after_chunks = Some(0);
    let broken = stub(config);
    let live = stub(streaming(3));
    let router = router(&[&broken, &live]);
    let recorder = Recorder::streaming();
    let req = request(&noda1(), "status?");
    let reply = router
        .infer_observed(&req, &recorder)
        .await
        .expect("the second replica answers");
    assert_eq!(recorder.pieces().concat(), reply.text);
    assert_eq!(
        recorder.attempts(),
        [
            ReplicaAttempt {
                replica: 0,
                outcome: "interrupted"
            },
            ReplicaAttempt {
                replica: 1,
                outcome: "ok"
            }
        ]
    );
    assert_eq!(broken.calls()[0].idempotency_key, req.idempotency_key);
    assert_eq!(live.calls()[0].idempotency_key, req.idempotency_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_broken_after_its_first_piece_is_the_answer() {
    let mut config = streaming(3);
    config.fail_after_chunks = Some(1);
    let broken = stub(config);
    let live = stub(streaming(3));
    let router = router(&[&broken, &live]);
    let recorder = Recorder::streaming();
    let err = router
        .infer_observed(&request(&noda1(), "status?"), &recorder)
        .await
        .expect_err("part of the reply was given: no failover");
    assert!(matches!(err, RouterError::Interrupted { .. }), "{err:?}");
    assert_eq!(recorder.pieces().len(), 1);
    assert_eq!(live.call_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_the_first_byte_deadline_is_passed_over() {
    let slow =
        StubNode::spawn_loopback(StubConfig::new(noda1()).with_delay(Duration::from_secs(3)))
            .expect("the stub starts");
    let live = stub(streaming(2));
    let router = router(&[&slow, &live])
        .with_first_byte_timeout(Duration::from_millis(200))
        .expect("non-zero");
    assert_eq!(router.first_byte_timeout(), Duration::from_millis(200));
    let recorder = Recorder::default();
    let reply = router
        .infer(&request(&noda1(), "status?"))
        .await
        .expect("the second replica answers within the call deadline");
    assert_eq!(reply.text, "[NODA1] echo: status?");
    let reply = router
        .infer_observed(&request(&noda1(), "again"), &recorder)
        .await
        .expect("answers");
    assert_eq!(reply.text, "[NODA1] echo: again");
    // The slow replica rests after missing the deadline: the second send
    // went straight to the live one.
    assert_eq!(
        recorder.attempts(),
        [ReplicaAttempt {
            replica: 1,
            outcome: "ok"
        }]
    );
    assert_eq!(slow.call_count(), 1);
    assert_eq!(live.call_count(), 2);
}
