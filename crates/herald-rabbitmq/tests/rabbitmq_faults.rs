//! Fault tests on a RabbitMQ node of the test's own (herald-testkit: own name, port, data and
//! cookie; the machine's shared broker is never touched): connections closed from the broker
//! side, and the node killed with -9 and restarted, while 20,000 events flow. The history checker
//! judges the run by distinct ids: nothing confirmed may be lost; duplicates are allowed
//! (at-least-once) and printed. And a memory alarm blocks publishers but not consumers.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_check::History;
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use herald_testkit::Cluster;
use tokio_util::sync::CancellationToken;

const TOTAL: u32 = 20_000;
const BATCH: usize = 100;
/// The node's port: in the ha range (5681-5689), never the shared broker's 5672.
const PORT: u16 = 5684;

/// Each test starts a node of its own on the same port: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn transport(url: &str, service: &str) -> RabbitTransport {
    let mut cfg = RabbitConfig::from_url(url, service).expect("url");
    cfg.outage_timeout = Duration::from_secs(90);
    cfg.max_backoff = Duration::from_secs(1);
    RabbitTransport::connect(cfg).await.expect("connect")
}

fn event(n: u32) -> Envelope {
    let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
    Envelope::new("fault.event", 1, "fault.event", "faults", Bytes::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_lost_through_connection_kills_and_a_node_kill() {
    let _serial = SERIAL.lock().await;
    let node = Arc::new(Cluster::rabbitmq(PORT, 1).await.expect("own RabbitMQ node"));
    let url = node.url();
    let exchange = "faults";
    let queue = QueueSpec::new("faults.work", "fault.#");
    let mut topo = Topology::new(exchange);
    topo.add_queue(queue.clone());

    let publisher = transport(&url, "faults-pub").await;
    let consumer = transport(&url, "faults-con").await;
    publisher.apply_topology(&topo).await.expect("topology");

    let history = History::new(["faults-con"]);
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .expect("consume");
    let consumer_task = {
        let history = history.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                history.handled("faults-con", &d.envelope.id, "fault", d.envelope.attempt);
                let _ = d.ack().await;
            }
        })
    };

    // Faults, driven by publishing progress.
    let published = Arc::new(AtomicU64::new(0));
    let faults = {
        let (published, node) = (published.clone(), node.clone());
        tokio::spawn(async move {
            while published.load(Ordering::Relaxed) < 5_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("fault 1: rabbitmqctl close_all_connections (own node)");
            node.ctl(1, &["close_all_connections", "herald fault test"])
                .await
                .expect("close_all_connections");
            while published.load(Ordering::Relaxed) < 12_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("fault 2: kill -9 the node, start it again");
            node.kill(1).await.expect("kill -9");
            tokio::time::sleep(Duration::from_secs(1)).await;
            node.start(1).await.expect("restart");
        })
    };

    let started = Instant::now();
    let mut publish_errors = 0u32;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(BATCH) {
        let batch: Vec<Envelope> = chunk.iter().map(|n| event(*n)).collect();
        let sent = history.now();
        // The transport already waits through outages; a caller that still gets an error
        // publishes the same events again (at-least-once end to end).
        loop {
            match publisher
                .publish(exchange, &batch, PublishOptions::default())
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    publish_errors += 1;
                    eprintln!("publish error (publishing the batch again): {e}");
                    assert!(publish_errors < 50, "too many publish errors");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        for e in &batch {
            history.confirmed(&e.id, "fault", sent);
        }
        published.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    faults.await.expect("fault injection");
    let publish_secs = started.elapsed().as_secs_f64();

    // Judge once every confirmed event is handled, or after two minutes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while history.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give late duplicates a moment, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer_task).await;
    let verdict = history.check();
    println!(
        "RESULT fault-test events={} lost={} duplicates={} publish_errors={publish_errors} publish_secs={publish_secs:.1}",
        verdict.events, verdict.lost, verdict.duplicates
    );
    // A connection nothing has used since the restart (the consumer transport's publishing
    // one) comes back on the supervisor's own backoff, up to `max_backoff` apart.
    let reconnect_deadline = Instant::now() + Duration::from_secs(15);
    while !(publisher.is_connected() && consumer.is_connected()) {
        assert!(
            Instant::now() < reconnect_deadline,
            "reconnected after the faults (publisher {}, consumer {})",
            publisher.is_connected(),
            consumer.is_connected()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = consumer.close().await;
    let _ = publisher.close().await;
    assert_eq!(verdict.events, u64::from(TOTAL));
    assert_eq!(verdict.lost, 0, "{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_but_not_consumers() {
    let _serial = SERIAL.lock().await;
    let node = Cluster::rabbitmq(PORT, 1).await.expect("own RabbitMQ node");
    let exchange = "alarm";
    let queue = QueueSpec::new("alarm.work", "alarm.#");
    let mut topo = Topology::new(exchange);
    topo.add_queue(queue.clone());
    let t = transport(&node.url(), "alarm").await;
    t.apply_topology(&topo).await.expect("topology");
    let event = |n: u32| {
        let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
        Envelope::new("alarm.event", 1, "alarm.event", "alarm", Bytes::from(body))
    };
    let before: Vec<Envelope> = (0..10).map(event).collect();
    t.publish(exchange, &before, PublishOptions::default())
        .await
        .expect("publish before the alarm");

    node.ctl(1, &["set_vm_memory_high_watermark", "0.000001"])
        .await
        .expect("raise a memory alarm on our node");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A publish now waits (back-pressure) instead of failing or buffering without bound...
    let blocked = {
        let t = t.clone();
        tokio::spawn(async move {
            t.publish(exchange, &[event(99)], PublishOptions::default())
                .await
        })
    };
    // ...while the consumer, on its own connection, keeps receiving.
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume during the alarm");
    for _ in 0..10 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("consumers are not blocked by a publishing alarm")
            .expect("delivery");
        d.ack().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !blocked.is_finished(),
        "the publish waits while the broker blocks publishing"
    );
    node.ctl(1, &["set_vm_memory_high_watermark", "0.4"])
        .await
        .expect("clear the alarm");
    let published = tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .expect("the publish completes once the alarm clears")
        .expect("task");
    published.expect("publish after the alarm");
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("delivery");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&d.envelope.body).unwrap()["n"],
        99
    );
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
}
