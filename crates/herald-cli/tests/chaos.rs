//! `herald chaos` and `herald demo` under real faults, run as a user runs them, against brokers
//! of the test's own (herald-testkit; the machine's shared broker is never touched): the short
//! versions of the runs docs/high-availability.md describes.
//!
//! - `herald chaos` on a 3-node RabbitMQ cluster with `scripts/cluster.sh kill-random` as the
//!   fault command: the checker's RESULT says nothing lost and nothing reordered (on RabbitMQ
//!   before 4.2, no more than its leader failover bug can cause).
//! - the same on a 3-node NATS cluster with JetStream (R3 streams, the default when the URL lists
//!   several servers).
//! - `herald demo` with its single node killed -9 and restarted mid-run (the case the demo's
//!   old tally misjudged): lost=0, and every pair handled or dead-lettered exactly once.

use std::time::Duration;

use herald_testkit::Cluster;

mod common;
use common::{herald, result, result_fields};

/// Ports in the ha range (5681-5689), clear of a cluster started by hand (5681-5683).
const CLUSTER_PORT: u16 = 5687;
const NODE_PORT: u16 = 5684;
/// In the ha NATS range (14240-14269): client ports 14246-14248, routes +10, monitoring +20;
/// clear of a cluster started by hand (14240-14242) and the testkit's own test (14243-14245).
const NATS_CLUSTER_PORT: u16 = 14246;

fn field(fields: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    fields[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key}={} is not a count", fields[key]))
}

/// `herald chaos` with 4,000 events over 8 keys at 250/s, `fault` run twice (6 s apart, the
/// first after 3 s); its RESULT fields once the checker judged the run, which found at most
/// `max_reordered` events out of order.
async fn chaos(
    url: String,
    fault: String,
    max_reordered: u64,
) -> std::collections::HashMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        herald(
            dir.path(),
            &[
                "chaos",
                "--broker",
                &url,
                "--events",
                "4000",
                "--rate",
                "250",
                "--keys",
                "8",
                "--fault-cmd",
                &fault,
                "--every",
                "6s",
                "--first-fault-after",
                "3s",
                "--faults",
                "2",
                "--quiet",
            ],
        )
    })
    .await
    .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let fields = result(&out);
    assert_eq!(field(&fields, "events"), 4000);
    assert_eq!(field(&fields, "lost"), 0);
    assert!(
        field(&fields, "reordered") <= max_reordered,
        "reordered={} beyond {max_reordered}",
        fields["reordered"]
    );
    assert_eq!(field(&fields, "faults"), 2);
    assert_eq!(fields["quiescent"], "yes");
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_cluster_with_random_node_kills_loses_nothing() {
    let cluster = Cluster::rabbitmq(CLUSTER_PORT, 3)
        .await
        .expect("own 3-node cluster");
    // RabbitMQ before 4.2 resends a quorum queue's in-flight messages in reverse after a leader
    // change (docs/high-availability.md): a kill that hits the leader may reorder up to the
    // consumer's window; from 4.2 the bound is 0.
    let bound =
        herald_testkit::rabbitmq_failover_reorder_bound(2, herald::Config::default().prefetch);
    let fields = chaos(cluster.url(), cluster.shell_command("kill-random"), bound).await;
    for key in [
        "duplicates",
        "failover_p99_ms",
        "recovery_max_ms",
        "publish_p99_ms",
    ] {
        assert!(fields.contains_key(key), "RESULT has {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_nats_cluster_with_random_node_kills_loses_nothing() {
    let cluster = Cluster::nats(NATS_CLUSTER_PORT, 3)
        .await
        .expect("own 3-node NATS cluster");
    // Order through failures on NATS needs one unsettled message per queue: with a wider
    // window, a message lost on its way when a connection breaks comes back only after
    // ack_wait, behind later ones (docs/nats.md). A short ack_wait keeps that wait short.
    let url = format!("{}?max_ack_pending=1&ack_wait=5s", cluster.url());
    assert!(url.starts_with("nats://"), "{url}");
    chaos(url, cluster.shell_command("kill-random"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_judges_a_broker_kill_by_distinct_ids() {
    let node = Cluster::rabbitmq(NODE_PORT, 1)
        .await
        .expect("own RabbitMQ node");
    let dir = tempfile::tempdir().unwrap();
    let url = node.url();
    let demo = tokio::task::spawn_blocking(move || {
        herald(
            dir.path(),
            &[
                "demo",
                "--broker",
                &url,
                "--events",
                "6000",
                "--no-serve",
                "--quiet",
            ],
        )
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.kill(1).await.expect("kill -9");
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.start(1).await.expect("restart");
    let out = demo.await.unwrap();
    let fields = result(&out);
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let published = field(&fields, "published");
    assert_eq!(published, 6000);
    assert_eq!(field(&fields, "lost"), 0);
    // Two consuming services: each event is handled or dead-lettered once per service, however
    // often it was delivered.
    assert_eq!(
        field(&fields, "handled") + field(&fields, "dead_lettered"),
        2 * published
    );
    assert_eq!(fields["quiescent"], "yes");
}

/// A fault command that fails does not pass for a fault survived: the RESULT counts it apart
/// (`faults_failed`) and the run exits non-zero, naming the cause.
#[test]
fn a_failed_fault_command_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(
        dir.path(),
        &[
            "chaos",
            "--broker",
            "memory://",
            "--events",
            "300",
            "--rate",
            "300",
            "--fault-cmd",
            "exit 3",
            "--first-fault-after",
            "100ms",
            "--faults",
            "1",
            "--settle",
            "300ms",
            "--quiet",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("1 of 1 fault commands failed"), "{stderr}");
    let fields = result_fields(&out);
    assert_eq!(field(&fields, "faults"), 0, "{stdout}");
    assert_eq!(field(&fields, "faults_failed"), 1, "{stdout}");
    assert_eq!(field(&fields, "lost"), 0, "{stdout}");
}
