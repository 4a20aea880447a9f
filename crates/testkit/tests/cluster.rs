//! The throwaway Redis Cluster: three primaries that share the slots, a
//! client that reaches each, and a context that cleans up after itself.

use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use sofiia_testkit::RedisTestContext;

const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn keys_spread_over_three_primaries_and_scripts_stay_in_one_slot() {
    let Some(redis) = RedisTestContext::cluster("testkit cluster").await else {
        return;
    };
    assert!(redis.conn.is_cluster());
    for i in 0..60 {
        let _: () = sofiia_redis_support::query(
            &redis.conn,
            DEADLINE,
            redis::cmd("SET")
                .arg(format!("{}{{k{i}}}", redis.prefix))
                .arg(i),
        )
        .await
        .unwrap();
    }
    assert_eq!(redis.key_count().await, 60);
    // Every primary holds a share.
    let held = redis.keys_per_node();
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|&n| n > 0), "{held:?}");
    assert_eq!(held.iter().sum::<usize>(), 60);

    // A script over one slot runs on its owner; over two it is refused, and
    // that is a fault to fix, not an outage.
    let script = Script::new("return redis.call('GET', KEYS[1]) .. redis.call('GET', KEYS[2])");
    let mut same = script.prepare_invoke();
    same.key(format!("{}{{k1}}", redis.prefix))
        .key(format!("{}{{k1}}", redis.prefix));
    let value = sofiia_redis_support::invoke(&redis.conn, DEADLINE, &same)
        .await
        .unwrap();
    assert_eq!(redis::from_redis_value::<String>(value).unwrap(), "11");
    let (a, b) = (
        format!("{}{{k1}}", redis.prefix),
        format!("{}{{k2}}", redis.prefix),
    );
    assert_ne!(
        sofiia_redis_support::slot_of(&a),
        sofiia_redis_support::slot_of(&b)
    );
    let mut cross = script.prepare_invoke();
    cross.key(a).key(b);
    let err = sofiia_redis_support::invoke(&redis.conn, DEADLINE, &cross)
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn a_context_deletes_its_keys_on_every_primary() {
    let Some(redis) = RedisTestContext::cluster("testkit cluster cleanup").await else {
        return;
    };
    let prefix = redis.prefix.clone();
    let conn = redis.conn.clone();
    for i in 0..30 {
        let _: () = sofiia_redis_support::query(
            &conn,
            DEADLINE,
            redis::cmd("SET").arg(format!("{prefix}{{k{i}}}")).arg(i),
        )
        .await
        .unwrap();
    }
    drop(redis);
    let left: Vec<String> = sofiia_redis_support::query(
        &conn,
        DEADLINE,
        redis::cmd("KEYS").arg(format!("{prefix}*")),
    )
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A private cluster's primary stopped: commands on its slots are
/// unavailable (never a hang past the deadline); restarted, it serves them
/// again through the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_unavailable_then_serves_again() {
    let Some(cluster) = sofiia_testkit::RedisCluster::start("testkit private cluster") else {
        return;
    };
    let conn = sofiia_redis_support::RedisConnection::open_cluster(&cluster.nodes()).unwrap();
    let set = |i: usize| {
        let conn = conn.clone();
        async move {
            sofiia_redis_support::query::<()>(
                &conn,
                Duration::from_secs(1),
                redis::cmd("SET").arg(format!("k{{{i}}}")).arg(i),
            )
            .await
        }
    };
    for i in 0..30 {
        set(i).await.unwrap();
    }
    cluster.stop_node(0);
    let mut failed = None;
    for i in 0..30 {
        if let Err(e) = set(i).await {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("some keys live on the stopped primary");
    assert!(failed.is_unavailable(), "{failed:?}");
    let cluster = std::sync::Arc::new(cluster);
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.restart_node(0))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0..30 {
        while let Err(e) = set(i).await {
            assert!(std::time::Instant::now() < deadline, "{e:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
