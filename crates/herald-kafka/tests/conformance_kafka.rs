//! The conformance kit against a real Kafka-API broker: a Tansu of this test binary's own on
//! 127.0.0.1:9110 (or `HERALD_TEST_KAFKA`).
//!
//! Each `open()` is a new "process" with its own producer and consumers; dropping a handle
//! makes its consumers leave their groups, so their unsettled messages go to the others.
//! What a case declared is forgotten when it ends (its entries in `herald.queues`). Skipped by capability:
//! `priority_order`, `full_queue_rejects_publish` (Kafka has neither) and
//! `fifo_order_for_one_consumer` (order is per key, not per queue).
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::conformance::Harness;
use herald::{Topology, Transport};
use herald_kafka::KafkaTransport;

mod common;

const PORT: u16 = 9110;

struct Kafka;

#[async_trait]
impl Harness for Kafka {
    async fn open(&self) -> Arc<dyn Transport> {
        let broker = common::broker_on(PORT);
        common::wait_for_broker(&broker, Duration::from_secs(30)).await;
        Arc::new(
            KafkaTransport::connect(common::config(&broker, "conformance"))
                .await
                .expect("connect to Kafka"),
        )
    }

    async fn clean_up(&self, topology: &Topology) {
        common::forget_topology(&common::broker_on(PORT), topology).await;
    }
}

herald::conformance_tests!(Kafka);
