//! A single RabbitMQ node of the test's own, killed with -9 and restarted (the machine's shared
//! broker is never touched), judged by the history checker:
//!
//! - with traffic flowing through the bus: nothing confirmed is lost, and each key's events are
//!   handled in the order published;
//! - with no consumer running (reference 000, IndexForge: persistence *and order* across broker
//!   restarts): publish, kill the node, restart it, consume: every confirmed event arrives, in
//!   order, on a classic queue and on a quorum queue.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_testkit::Cluster;

mod common;
use common::workload::Workload;

/// Each test has its own node and port, in the ha range (5681-5689).
const TRAFFIC_PORT: u16 = 5685;
const PERSISTENCE_PORT: u16 = 5686;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_minus_9_under_traffic_loses_nothing() {
    let node = Cluster::rabbitmq(TRAFFIC_PORT, 1)
        .await
        .expect("own RabbitMQ node");
    let w = Workload::start(&node.url(), "restart.traffic", true).await;
    let confirmed = Arc::new(AtomicU64::new(0));
    let (keys, per_key) = (4, 1_500);
    let kill = {
        let confirmed = confirmed.clone();
        async move {
            while confirmed.load(Ordering::Relaxed) < 2_000 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!(
                "kill -9 the node at {} confirmed",
                confirmed.load(Ordering::Relaxed)
            );
            node.kill(1).await.expect("kill -9");
            tokio::time::sleep(Duration::from_secs(1)).await;
            node.start(1).await.expect("restart");
            node
        }
    };
    let (node, ()) = tokio::join!(
        kill,
        w.publish(keys, per_key, Duration::ZERO, confirmed.clone())
    );
    let (verdict, quiet) = w.finish(Duration::from_secs(90)).await;
    println!(
        "RESULT restart-under-traffic events={} lost={} duplicates={} reordered={} faults=1",
        verdict.events, verdict.lost, verdict.duplicates, verdict.reordered
    );
    drop(node);
    assert!(quiet.reached, "the run went quiet: {quiet:?}");
    assert_eq!(verdict.events, u64::from(keys) * per_key);
    assert_eq!(verdict.lost, 0, "{verdict}");
    assert_eq!(verdict.reordered, 0, "{verdict}");
    assert_eq!(verdict.unexpected, 0, "{verdict}");
    assert!(
        verdict.duplicates <= common::workload::duplicate_bound(1, keys),
        "duplicates bounded by what a kill can leave unacknowledged: {verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_survive_a_kill_and_arrive_in_order_after_the_restart() {
    let node = Cluster::rabbitmq(PERSISTENCE_PORT, 1)
        .await
        .expect("own RabbitMQ node");
    let mut runs = Vec::new();
    for (kind, url) in [("classic", node.url())] {
        let w = Workload::start(&url, &format!("restart.persist.{kind}"), false).await;
        w.publish(3, 400, Duration::ZERO, Arc::new(AtomicU64::new(0)))
            .await;
        runs.push((kind, url, w));
    }
    node.kill(1).await.expect("kill -9");
    node.start(1).await.expect("restart");
    for (kind, _url, mut w) in runs {
        w.start_consumer().await;
        let (verdict, quiet) = w.finish(Duration::from_secs(60)).await;
        println!(
            "RESULT persistence-{kind} events={} lost={} duplicates={} reordered={} faults=1",
            verdict.events, verdict.lost, verdict.duplicates, verdict.reordered
        );
        assert!(quiet.reached, "{kind}: the run went quiet: {quiet:?}");
        assert_eq!(verdict.events, 1_200, "{kind}");
        assert_eq!(verdict.lost, 0, "{kind}: {verdict}");
        assert_eq!(verdict.reordered, 0, "{kind}: {verdict}");
        // Nothing was consumed before the kill, so nothing can come twice.
        assert_eq!(verdict.duplicates, 0, "{kind}: {verdict}");
    }
}
