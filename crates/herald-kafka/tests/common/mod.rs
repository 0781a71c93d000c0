//! Helpers shared by the Kafka test targets.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use herald::Topology;
use herald_kafka::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
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

/// Delete the topics a topology made (the exchange's, its queues' retry and dead-letter
/// topics) and its queues' entries in the bindings topic.
pub async fn delete_topology(addr: &str, topology: &Topology) {
    let cfg = KafkaConfig::new(vec![addr.to_string()], "cleanup");
    let mut topics = vec![topology.exchange.clone()];
    for q in &topology.queues {
        topics.extend(herald_kafka::topic_names(&cfg, q));
    }
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin
        .delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
        )
        .await;
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
