//! A broker killed (`kill -9`) and restarted while 10,000 events flow through a Tansu of the
//! test's own (port 9101, its own directory): once by default, `HERALD_KAFKA_FAULTS=2` for
//! twice. Every event id must be accounted for (lost == 0); duplicates are allowed
//! (at-least-once) and printed. On failure the broker's log is printed.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_kafka::{KafkaConfig, KafkaTransport};
use tokio_util::sync::CancellationToken;

mod common;

const TOTAL: u32 = 10_000;
const BATCH: usize = 100;
const PORT: u16 = 9101;

async fn transport(addr: &str, service: &str) -> KafkaTransport {
    let mut cfg = KafkaConfig::new(vec![addr.to_string()], service);
    cfg.outage_timeout = Duration::from_secs(60);
    KafkaTransport::connect(cfg).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_lost_when_the_broker_is_killed_and_restarted() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut broker = common::OwnTansu::start(PORT).await;
    let addr = broker.addr();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("faults.{}", &id[..8]);
    let queue = QueueSpec::new(format!("faults-{}.work", &id[..8]), "fault.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());

    let publisher = transport(&addr, "faults-pub").await;
    let consumer = transport(&addr, "faults-con").await;
    publisher.apply_topology(&topo).await.expect("topology");

    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .expect("consume");
    let consumer_task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let n = serde_json::from_slice::<serde_json::Value>(&d.envelope.body)
                    .ok()
                    .and_then(|v| v["n"].as_u64())
                    .unwrap_or(u64::MAX) as u32;
                *seen.lock().unwrap().entry(n).or_default() += 1;
                let _ = d.ack().await;
            }
        })
    };

    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publish_errors = 0u32;
    let mut faults = 0u32;
    let wanted: u32 = std::env::var("HERALD_KAFKA_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Faults at 30% and (for two) 70% of the events.
    let fault_at = |k: u32| u64::from(TOTAL) * [3, 7][k as usize % 2] / 10;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(BATCH) {
        let done = published.load(Ordering::Relaxed);
        if faults < wanted && done >= fault_at(faults) {
            faults += 1;
            eprintln!("fault {faults}: kill -9 the broker, restart it 2 s later");
            broker.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker.restart().await;
        }
        let batch: Vec<Envelope> = chunk
            .iter()
            .map(|n| {
                let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
                Envelope::new("fault.event", 1, "fault.event", "faults", Bytes::from(body))
            })
            .collect();
        // The producer waits through outages by itself; a caller that still gets an error
        // publishes the batch again (at-least-once end to end).
        loop {
            match publisher
                .publish(&exchange, &batch, PublishOptions::default())
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
        published.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    let publish_secs = started.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(180);
    while (seen.lock().unwrap().len() as u32) < TOTAL && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), consumer_task).await;

    let seen = seen.lock().unwrap().clone();
    let distinct = (0..TOTAL).filter(|n| seen.contains_key(n)).count() as u32;
    let lost = TOTAL - distinct;
    let deliveries: u64 = seen.values().map(|&c| u64::from(c)).sum();
    let duplicates = deliveries - u64::from(distinct);
    println!(
        "RESULT kafka-fault-test events={TOTAL} faults={faults} delivered={deliveries} distinct={distinct} lost={lost} duplicates={duplicates} publish_errors={publish_errors} publish_secs={publish_secs:.1}"
    );
    let reconnect_deadline = Instant::now() + Duration::from_secs(15);
    while !publisher.is_connected() {
        assert!(
            Instant::now() < reconnect_deadline,
            "the publisher is connected again after the faults"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = consumer.close().await;
    let _ = publisher.close().await;
    if lost > 0 {
        eprintln!("the broker's log:\n{}", broker.log_tail(60));
    }
    assert_eq!(faults, wanted);
    assert_eq!(lost, 0, "lost events: {lost} (duplicates {duplicates})");
}
