//! The bus's metrics, recorded into `metrics-util`'s DebuggingRecorder (installed as this
//! thread's recorder; `#[tokio::test]` runs the bus's tasks on the same thread).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herald::middleware::{Backoff, RetryPolicy};
use herald::telemetry::names;
use herald::{Bus, Event, HandlerError, MetricsSnapshot, SubscribeOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.cancelled")]
struct OrderCancelled {
    id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.nobody")]
struct NobodyListens {
    id: u32,
}

static PLACED_CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails the first call, succeeds after.
async fn flaky(_e: OrderPlaced) -> Result<(), HandlerError> {
    if PLACED_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(HandlerError::transient("first call fails"));
    }
    Ok(())
}

async fn refuses(_e: OrderCancelled) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("never valid"))
}

/// One snapshot: (kind, name, sorted labels) → value. Counters and gauges reset when read, so
/// a test reads once, at the end.
type Values = HashMap<(MetricKind, String, Vec<(String, String)>), DebugValue>;

fn read(snapshotter: &Snapshotter) -> Values {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let (kind, key) = ck.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            ((kind, key.name().to_string(), labels), v)
        })
        .collect()
}

fn key(
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> (MetricKind, String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (kind, name.to_string(), labels)
}

fn counter(values: &Values, name: &str, labels: &[(&str, &str)]) -> u64 {
    match values.get(&key(MetricKind::Counter, name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn gauge(values: &Values, name: &str, labels: &[(&str, &str)]) -> f64 {
    match values.get(&key(MetricKind::Gauge, name, labels)) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

async fn wait_for(bus: &Bus, done: impl Fn(MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(bus.metrics()) {
        assert!(Instant::now() < deadline, "timed out: {:?}", bus.metrics());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn counts_by_event_type_and_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let bus = Bus::builder()
        .service("shop")
        .broker(format!("memory://telemetry-{}", uuid::Uuid::new_v4()))
        .sample_queue_depth(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let retry_once = RetryPolicy {
        max_attempts: 3,
        immediate: 0,
        backoff: Backoff::Fixed(Duration::from_millis(10)),
        jitter: 0.0,
    };
    bus.subscribe_with(flaky, SubscribeOptions::new().retry(retry_once))
        .unwrap();
    bus.subscribe_with(refuses, SubscribeOptions::new().retry(RetryPolicy::none()))
        .unwrap();
    bus.start().await.unwrap();

    bus.publish(&OrderPlaced { id: 1 }).await.unwrap();
    bus.publish(&OrderCancelled { id: 2 }).await.unwrap();
    let unroutable = bus.publish(&NobodyListens { id: 3 }).await;
    assert!(
        matches!(unroutable, Err(herald::Error::Unroutable { .. })),
        "{unroutable:?}"
    );

    wait_for(&bus, |m| {
        m.handled == 1 && m.retried == 1 && m.dead_lettered == 1
    })
    .await;
    // Let the sampler see the dead letter, then stop (shutdown waits for settlements).
    tokio::time::sleep(Duration::from_millis(350)).await;
    bus.shutdown().await.unwrap();
    let v = read(&snapshotter);

    // The existing snapshot still counts durable publishes only.
    assert_eq!(bus.metrics().published, 2);

    let placed_pub = [("service", "shop"), ("event_type", "order.placed")];
    assert_eq!(counter(&v, names::PUBLISHED, &placed_pub), 1);
    assert_eq!(counter(&v, names::CONFIRMED, &placed_pub), 1);
    let nobody = [("service", "shop"), ("event_type", "order.nobody")];
    assert_eq!(counter(&v, names::PUBLISHED, &nobody), 1);
    assert_eq!(counter(&v, names::RETURNED, &nobody), 1);
    assert_eq!(counter(&v, names::CONFIRMED, &nobody), 0);

    let placed = [
        ("queue", "shop.order.placed"),
        ("event_type", "order.placed"),
    ];
    assert_eq!(
        counter(&v, names::CONSUMED, &placed),
        2,
        "first delivery and its retry"
    );
    assert_eq!(counter(&v, names::RETRIED, &placed), 1);
    assert_eq!(counter(&v, names::ACKED, &placed), 1);
    assert_eq!(counter(&v, names::DEAD_LETTERED, &placed), 0);
    let placed_failed = [
        ("queue", "shop.order.placed"),
        ("event_type", "order.placed"),
        ("kind", "handler"),
    ];
    assert_eq!(counter(&v, names::FAILED, &placed_failed), 1);
    match v.get(&key(
        MetricKind::Histogram,
        names::HANDLER_DURATION,
        &placed,
    )) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 2);
            assert!(samples
                .iter()
                .all(|s| s.into_inner() >= 0.0 && s.into_inner() < 5.0));
        }
        other => panic!("handler duration: {other:?}"),
    }

    let cancelled = [
        ("queue", "shop.order.cancelled"),
        ("event_type", "order.cancelled"),
    ];
    assert_eq!(counter(&v, names::CONSUMED, &cancelled), 1);
    assert_eq!(counter(&v, names::DEAD_LETTERED, &cancelled), 1);
    assert_eq!(counter(&v, names::ACKED, &cancelled), 0);
    let cancelled_failed = [
        ("queue", "shop.order.cancelled"),
        ("event_type", "order.cancelled"),
        ("kind", "permanent"),
    ];
    assert_eq!(counter(&v, names::FAILED, &cancelled_failed), 1);

    assert_eq!(
        gauge(&v, names::IN_FLIGHT, &[("queue", "shop.order.placed")]),
        0.0
    );
    let dead = [("queue", "shop.order.cancelled"), ("state", "dead_letters")];
    assert_eq!(gauge(&v, names::QUEUE_DEPTH, &dead), 1.0);
    let ready = [("queue", "shop.order.placed"), ("state", "ready")];
    assert_eq!(gauge(&v, names::QUEUE_DEPTH, &ready), 0.0);
}

#[tokio::test]
async fn in_flight_counts_handlers_running_now() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let bus = Bus::builder()
        .service("slow")
        .broker(format!("memory://telemetry-{}", uuid::Uuid::new_v4()))
        .build()
        .await
        .unwrap();
    let g = gate.clone();
    bus.subscribe(move |_e: OrderPlaced| {
        let entered = entered_tx.clone();
        let gate = g.clone();
        async move {
            let _ = entered.send(());
            gate.notified().await;
            Ok::<(), HandlerError>(())
        }
    })
    .unwrap();
    bus.start().await.unwrap();
    bus.publish_batch(&[OrderPlaced { id: 1 }, OrderPlaced { id: 2 }])
        .await
        .unwrap();
    entered_rx.recv().await.unwrap();
    entered_rx.recv().await.unwrap();
    let v = read(&snapshotter);
    assert_eq!(
        gauge(&v, names::IN_FLIGHT, &[("queue", "slow.order.placed")]),
        2.0
    );
    gate.notify_waiters();
    wait_for(&bus, |m| m.handled == 2).await;
    bus.shutdown().await.unwrap();
}
