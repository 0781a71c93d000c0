//! Herald on a 3-node RabbitMQ cluster of the test's own (herald-testkit; the machine's shared
//! broker is never touched): the URL lists the three nodes, so the queues are quorum queues.
//! Events flow through the bus while the node leading the work queue is killed with -9 (and
//! started again), twice: the second kill takes the leader elected after the first. The history
//! checker judges the run: nothing confirmed lost, each key's events in order (on RabbitMQ 4.2
//! and later; before it a failover may resend missing deliveries out of order, see
//! `herald_testkit::rabbitmq_failover_keeps_order`); duplicates are counted. Publishes are confirmed through the leader changes, consumers move to a surviving
//! node, the topology is declared again, and unconfirmed publishes are published again.
//!
//! The long version (100,000 events through 5 kills) is `herald chaos`; see
//! docs/high-availability.md.
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_testkit::Cluster;

mod common;
use common::workload::Workload;

/// Nodes on 5687-5689 (dist ports +20000): the ha range, clear of a cluster someone started by
/// hand with scripts/cluster.sh (5681-5683).
const FIRST_PORT: u16 = 5687;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_nothing_and_keeps_order_through_kills_of_the_leaders_node() {
    let cluster = Cluster::rabbitmq(FIRST_PORT, 3)
        .await
        .expect("own 3-node cluster");
    let w = Workload::start(&cluster.url(), "cluster.kills", true).await;
    let queue = w.queue();
    let first_leader = cluster.leader(&queue).await.expect("leader query");
    assert!(
        first_leader.is_some(),
        "`{queue}` is a quorum queue with a leader on a cluster URL"
    );
    let confirmed = Arc::new(AtomicU64::new(0));
    // 8 keys, 1,000 events each, a key's events 10 ms apart: about 15 s of traffic.
    let (keys, per_key) = (8, 1_000);
    let faults = async {
        let started = Instant::now();
        let mut killed = Vec::new();
        for at in [Duration::from_secs(2), Duration::from_secs(9)] {
            tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
            let leader = cluster
                .leader(&queue)
                .await
                .expect("leader query")
                .expect("the queue has a leader");
            eprintln!(
                "{:.1}s: kill -9 node {leader}, the leader of {queue}",
                started.elapsed().as_secs_f64()
            );
            cluster.kill(leader).await.expect("kill -9");
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.start(leader).await.expect("restart");
            killed.push(leader);
        }
        killed
    };
    let (killed, ()) = tokio::join!(
        faults,
        w.publish(keys, per_key, Duration::from_millis(10), confirmed)
    );
    let faults_during_publishing = killed.len();
    let (verdict, quiet) = w.finish(Duration::from_secs(120)).await;
    println!(
        "RESULT cluster-kills events={} lost={} duplicates={} reordered={} faults={faults_during_publishing} killed={killed:?}",
        verdict.events, verdict.lost, verdict.duplicates, verdict.reordered
    );
    assert!(quiet.reached, "the run went quiet: {quiet:?}");
    assert_eq!(verdict.events, u64::from(keys) * per_key);
    assert_eq!(verdict.lost, 0, "{verdict}");
    // In order, but for RabbitMQ before 4.2 resending a failed-over consumer's missing
    // deliveries in reverse (herald_testkit::rabbitmq_failover_keeps_order).
    assert!(
        verdict.reordered <= common::failover_reorder_bound(faults_during_publishing),
        "reordered beyond what the broker's failover explains: {verdict}"
    );
    assert_eq!(verdict.unexpected, 0, "{verdict}");
    assert!(
        verdict.duplicates <= common::workload::duplicate_bound(faults_during_publishing, keys),
        "duplicates bounded by what a kill can leave unacknowledged: {verdict}"
    );
}
