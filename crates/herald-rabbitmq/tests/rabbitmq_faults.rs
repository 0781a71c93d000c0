//! Fault tests against a real RabbitMQ: connections closed from the broker side and a broker
//! restart while 20,000 events flow. Every event id must be accounted for (lost == 0);
//! duplicates are allowed (at-least-once) and printed.
//!
//! Needs `rabbitmqctl` on the PATH with rights to stop and start the app (CI runs as root).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio_util::sync::CancellationToken;

mod common;

const TOTAL: u32 = 20_000;

/// The tests here disturb the whole broker: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const BATCH: usize = 100;

/// Makes sure the broker app is started again, even when the test panics.
struct StartAppGuard;

impl Drop for StartAppGuard {
    fn drop(&mut self) {
        common::rabbitmqctl(&["start_app"]);
    }
}

async fn transport(service: &str) -> RabbitTransport {
    let mut cfg = RabbitConfig::new(vec![common::amqp_url()], service);
    cfg.outage_timeout = Duration::from_secs(90);
    cfg.max_backoff = Duration::from_secs(1);
    RabbitTransport::connect(cfg).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_lost_through_connection_kills_and_broker_restart() {
    let _serial = SERIAL.lock().await;
    let _guard = StartAppGuard;
    common::wait_for_broker(Duration::from_secs(60)).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("faults.{}", &id[..8]);
    let queue = QueueSpec::new(format!("faults-{}.work", &id[..8]), "fault.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());

    let publisher = transport("faults-pub").await;
    let consumer = transport("faults-con").await;
    publisher.apply_topology(&topo).await.expect("topology");

    // Consumer: count every delivery of every event number.
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .expect("consume");
    let consumer_task = {
        let seen = seen.clone();
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let n: u32 = serde_json::from_slice::<serde_json::Value>(&d.envelope.body)
                    .ok()
                    .and_then(|v| v["n"].as_u64())
                    .unwrap_or(u64::MAX) as u32;
                *seen.lock().unwrap().entry(n).or_default() += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
                let _ = d.ack().await;
            }
        })
    };

    // Faults, driven by publishing progress.
    let published = Arc::new(AtomicU64::new(0));
    let faults = {
        let published = published.clone();
        tokio::spawn(async move {
            while published.load(Ordering::Relaxed) < 5_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("fault 1: rabbitmqctl close_all_connections");
            let ok = tokio::task::spawn_blocking(|| {
                common::rabbitmqctl(&["close_all_connections", "herald fault test"])
            })
            .await
            .unwrap_or(false);
            assert!(ok, "rabbitmqctl close_all_connections failed");
            while published.load(Ordering::Relaxed) < 12_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("fault 2: rabbitmqctl stop_app / start_app");
            let ok = tokio::task::spawn_blocking(|| {
                let stopped = common::rabbitmqctl(&["stop_app"]);
                std::thread::sleep(Duration::from_secs(2));
                let started = common::rabbitmqctl(&["start_app"]);
                stopped && started
            })
            .await
            .unwrap_or(false);
            assert!(ok, "rabbitmqctl stop_app/start_app failed");
        })
    };

    let started = Instant::now();
    let mut publish_errors = 0u32;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(BATCH) {
        let batch: Vec<Envelope> = chunk
            .iter()
            .map(|n| {
                let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
                Envelope::new("fault.event", 1, "fault.event", "faults", Bytes::from(body))
            })
            .collect();
        // The transport already waits through outages; a caller that still gets an error
        // publishes again (at-least-once end to end).
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
    faults.await.expect("fault injection");
    let publish_secs = started.elapsed().as_secs_f64();

    // Wait for every event to arrive (or give up after two minutes).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct = seen.lock().unwrap().len() as u32;
        if distinct >= TOTAL || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give late duplicates a moment, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer_task).await;

    let seen = seen.lock().unwrap().clone();
    let distinct = (0..TOTAL).filter(|n| seen.contains_key(n)).count() as u32;
    let lost = TOTAL - distinct;
    let total_deliveries: u64 = seen.values().map(|&c| u64::from(c)).sum();
    let duplicates = total_deliveries - u64::from(distinct);
    println!(
        "RESULT fault-test events={TOTAL} delivered={total_deliveries} distinct={distinct} lost={lost} duplicates={duplicates} publish_errors={publish_errors} publish_secs={publish_secs:.1}"
    );
    // A connection nothing has used since the restart (the consumer transport's publishing
    // one) comes back on the supervisor's own backoff, up to `max_backoff` (5 s) apart.
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

    // Clean up what this test declared.
    let _ = consumer.close().await;
    let _ = publisher.close().await;
    common::delete_queue_set(&exchange, &queue).await;
    assert_eq!(lost, 0, "lost events: {lost} (duplicates {duplicates})");
}

/// Puts the memory watermark back, even when the test panics.
struct WatermarkGuard;

impl Drop for WatermarkGuard {
    fn drop(&mut self) {
        common::rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_but_not_consumers() {
    let _serial = SERIAL.lock().await;
    common::wait_for_broker(Duration::from_secs(60)).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("alarm.{}", &id[..8]);
    let queue = QueueSpec::new(format!("alarm-{}.work", &id[..8]), "alarm.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    let t = transport("alarm").await;
    t.apply_topology(&topo).await.expect("topology");
    let event = |n: u32| {
        let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
        Envelope::new("alarm.event", 1, "alarm.event", "alarm", Bytes::from(body))
    };
    let before: Vec<Envelope> = (0..10).map(event).collect();
    t.publish(&exchange, &before, PublishOptions::default())
        .await
        .expect("publish before the alarm");

    let _guard = WatermarkGuard;
    assert!(common::rabbitmqctl(&[
        "set_vm_memory_high_watermark",
        "0.000001"
    ]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A publish now waits (back-pressure) instead of failing or buffering without bound...
    let blocked = {
        let t = t.clone();
        let exchange = exchange.clone();
        tokio::spawn(async move {
            t.publish(&exchange, &[event(99)], PublishOptions::default())
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
    assert!(common::rabbitmqctl(&[
        "set_vm_memory_high_watermark",
        "0.4"
    ]));
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
    common::delete_queue_set(&exchange, &queue).await;
}
