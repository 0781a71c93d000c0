//! RabbitMQ connection metrics: closing this test's connections from the broker side bumps
//! `herald_reconnects_total` and `herald_connection_up` returns to 1. Only this test's
//! connections are closed (found by their name), so tests running beside it are untouched.
//! Needs `rabbitmqctl` on the PATH.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::telemetry::names;
use herald::{Bus, Event, HandlerError};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "metrics.ping")]
struct Ping {
    n: u32,
}

async fn pong(_p: Ping) -> Result<(), HandlerError> {
    Ok(())
}

/// Connection metrics by role, accumulated over snapshots (the recorder resets on read): the
/// reconnect counts summed, the last `connection_up` value set since the previous read.
#[derive(Default, Debug)]
struct Seen {
    reconnects: HashMap<String, u64>,
    up: HashMap<String, f64>,
}

impl Seen {
    fn read(&mut self, snapshotter: &Snapshotter) {
        self.up.clear();
        for (ck, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = ck.key();
            let Some(role) = key.labels().find(|l| l.key() == "role") else {
                continue;
            };
            assert!(key
                .labels()
                .any(|l| l.key() == "transport" && l.value() == "rabbitmq"));
            match (key.name(), value) {
                (names::RECONNECTS, DebugValue::Counter(n)) => {
                    *self.reconnects.entry(role.value().to_string()).or_default() += n
                }
                (names::CONNECTION_UP, DebugValue::Gauge(v)) => {
                    self.up.insert(role.value().to_string(), v.into_inner());
                }
                _ => {}
            }
        }
    }
}

/// Close, from the broker, every connection whose client-provided name contains `service`.
fn close_connections_of(service: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl on the PATH");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(service))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for pid in &pids {
        assert!(
            common::rabbitmqctl(&["close_connection", pid, "herald metrics test"]),
            "rabbitmqctl close_connection {pid} failed"
        );
    }
    pids.len()
}

async fn wait_handled(bus: &Bus, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while bus.metrics().handled < n {
        assert!(Instant::now() < deadline, "timed out: {:?}", bus.metrics());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn closing_connections_counts_reconnects_and_comes_back_up() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let id = uuid::Uuid::new_v4().simple().to_string();
    let service = format!("metrics-test-{}", &id[..12]);
    let exchange = format!("metrics-test.{}", &id[..12]);
    let mut cfg = RabbitConfig::new(vec![common::amqp_url()], &service);
    cfg.max_backoff = Duration::from_millis(500);
    let transport = Arc::new(RabbitTransport::connect(cfg).await.expect("connect"));
    let bus = Bus::builder()
        .service(&service)
        .exchange(&exchange)
        .transport(transport)
        .build()
        .await
        .unwrap();
    bus.subscribe(pong).unwrap();
    bus.start().await.unwrap();
    bus.publish(&Ping { n: 1 }).await.unwrap();
    wait_handled(&bus, 1).await;

    let mut seen = Seen::default();
    seen.read(&snapshotter);
    assert_eq!(seen.up.get("publisher"), Some(&1.0), "{seen:?}");
    assert_eq!(seen.up.get("consumer"), Some(&1.0), "{seen:?}");
    assert_eq!(seen.reconnects.values().sum::<u64>(), 0, "{seen:?}");

    assert!(
        close_connections_of(&service) >= 2,
        "publisher and consumer connections"
    );
    // Publishing and handling again needs both connections back. The next read then shows
    // the last value each gauge was set to (0 on the loss, then 1 on the reconnect).
    bus.publish(&Ping { n: 2 }).await.unwrap();
    wait_handled(&bus, 2).await;
    seen.read(&snapshotter);
    for role in ["publisher", "consumer"] {
        assert!(
            seen.reconnects.get(role).is_some_and(|n| *n >= 1),
            "{role}: {seen:?}"
        );
        assert_eq!(seen.up.get(role), Some(&1.0), "{role}: {seen:?}");
    }
    assert!(bus.transport().is_connected());
    let topology = bus.topology();
    bus.shutdown().await.unwrap();
    for q in &topology.queues {
        common::delete_queue_set(&exchange, q).await;
    }
}
