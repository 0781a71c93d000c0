//! The SQLite transport across real processes: the tests start `herald-sqlite-child`
//! (`tests/support/sqlite_child.rs`) with `HERALD_SQLITE_CHILD` naming its role, and kill it.

#[path = "support/sqlite_shared.rs"]
mod shared;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use herald::transport::sqlite::SqliteTransport;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, Topology, Transport};
use shared::{msg, n_of, open, queue, DB, EXCHANGE, LEASE, ROLE};
use tokio_util::sync::CancellationToken;

async fn declare(t: &SqliteTransport) {
    let mut topo = Topology::new(EXCHANGE);
    topo.add_queue(queue());
    t.apply_topology(&topo).await.expect("apply topology");
}

fn spawn_child(role: &str, path: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-sqlite-child"))
        .env(ROLE, role)
        .env(DB, path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    (child, BufReader::new(stdout))
}

/// The value after `marker` on a line of child output.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].trim())
}

/// Drain a queue until `quiet` passes without a delivery; returns the numbers seen.
async fn drain(t: &SqliteTransport, quiet: Duration) -> Vec<(u64, bool)> {
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue(), ConsumeOptions { prefetch: 256 }, cancel.clone())
        .await
        .expect("consume");
    let mut seen = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, rx.recv()).await {
        seen.push((n_of(&d.envelope), d.redelivered));
        d.ack().await.expect("ack");
    }
    cancel.cancel();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_publishes_this_one_consumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.db");
    let t = open(&path).await;
    declare(&t).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue(), ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    let (mut child, out) = spawn_child("publish", &path);
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 500 && Instant::now() < deadline {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            got.insert(n_of(&d.envelope));
            d.ack().await.expect("ack");
        }
    }
    let status = child.wait().expect("child exit");
    assert!(status.success(), "publisher child failed: {status}");
    assert!(out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("FINISHED")));
    assert_eq!(
        got.len(),
        500,
        "every message published by the other process arrives"
    );
    assert_eq!(got, (0..500).collect::<HashSet<u64>>());
    cancel.cancel();
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_publisher_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.db");
    let t = open(&path).await;
    declare(&t).await;
    let (mut child, mut out) = spawn_child("publish_forever", &path);
    let mut printed = HashSet::new();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while printed.len() < 2000 && Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).expect("read child output") == 0 {
            break;
        }
        if let Some(n) = after(&line, "PUBLISHED ") {
            printed.insert(n.parse::<u64>().expect("number"));
        }
    }
    child.kill().expect("kill -9 the publisher"); // SIGKILL on Unix
    let _ = child.wait();
    // Whatever it printed before dying is still in the pipe.
    for l in out.lines().map_while(Result::ok) {
        if let Some(n) = after(&l, "PUBLISHED ") {
            if let Ok(n) = n.parse::<u64>() {
                printed.insert(n);
            }
        }
    }
    assert!(
        printed.len() >= 100,
        "the child published before being killed ({})",
        printed.len()
    );
    let stored: HashSet<u64> = drain(&t, Duration::from_millis(1500))
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let missing: Vec<&u64> = printed.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged publishes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_consumer_gets_its_messages_redelivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.db");
    let t = open(&path).await;
    declare(&t).await;
    let batch: Vec<Envelope> = (0..50).map(msg).collect();
    t.publish(EXCHANGE, &batch, PublishOptions::default())
        .await
        .expect("publish");
    let (mut child, mut out) = spawn_child("consume_no_ack", &path);
    let mut taken = HashSet::new();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken.len() < 50 && Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).expect("read child output") == 0 {
            break;
        }
        if let Some(n) = after(&line, "GOT ") {
            taken.insert(n.parse::<u64>().expect("number"));
        }
    }
    assert_eq!(taken.len(), 50, "the child took every message");
    // Held longer than a lease while the child lives: its renewals keep them away from us.
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue(), ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    let early = tokio::time::timeout(LEASE * 2, rx.recv()).await;
    assert!(early.is_err(), "a live consumer's leases were not renewed");
    child.kill().expect("kill -9 the consumer");
    let _ = child.wait();
    let killed = Instant::now();
    let mut got = HashSet::new();
    while got.len() < 50 {
        let d = tokio::time::timeout(LEASE + Duration::from_secs(5), rx.recv())
            .await
            .expect("redelivered after the lease")
            .expect("stream open");
        assert!(
            d.redelivered,
            "a message taken by the dead consumer is marked redelivered"
        );
        got.insert(n_of(&d.envelope));
        d.ack().await.expect("ack");
    }
    assert!(
        killed.elapsed() < LEASE + Duration::from_secs(3),
        "redelivery took {:?}",
        killed.elapsed()
    );
    assert_eq!(got, (0..50).collect::<HashSet<u64>>());
    cancel.cancel();
    t.close().await.expect("close");
}
