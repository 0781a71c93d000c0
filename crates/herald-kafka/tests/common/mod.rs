//! Helpers shared by the Kafka test targets.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use herald::Topology;
use herald_kafka::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The broker for tests: `HERALD_TEST_KAFKA` (`host:port`) or the shared Tansu. Registers the
/// `kafka://` scheme too, so a bus built from a URL opens Kafka.
pub fn broker() -> String {
    herald_kafka::register();
    std::env::var("HERALD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A configuration for tests on [`broker`], with short retry delays by default.
pub fn config(service: &str) -> KafkaConfig {
    KafkaConfig::new(vec![broker()], service)
}

/// Wait until something accepts connections on `addr` (up to `within`).
pub async fn wait_for_broker(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            panic!("no Kafka broker listens on {addr}; run scripts/services.sh (it starts Tansu)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Forget a topology's queues: tombstones for their entries in the bindings topic, so
/// publishers stop counting them as routes. Topics are left in place: Tansu 0.6.0 deletes
/// every topic on a DeleteTopics request, and the broker is shared.
pub async fn forget_topology(addr: &str, topology: &Topology) {
    let Ok(producer) = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create::<FutureProducer>()
    else {
        return;
    };
    for q in &topology.queues {
        let key = format!("{} {}", topology.exchange, q.name);
        let _ = producer
            .send(
                FutureRecord::<str, [u8]>::to("herald.bindings").key(&key),
                Duration::from_secs(5),
            )
            .await;
    }
}
