//! The conformance kit against a real RabbitMQ (127.0.0.1:5672 or `HERALD_TEST_AMQP_URL`).
//!
//! Each `open()` is a new "process" with its own connections, so dropping a handle closes them
//! and the broker requeues whatever it left unsettled. What a case declared is deleted from the
//! broker when it ends.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::conformance::Harness;
use herald::{Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};

mod common;

struct Rabbit;

#[async_trait]
impl Harness for Rabbit {
    async fn open(&self) -> Arc<dyn Transport> {
        common::wait_for_broker(Duration::from_secs(60)).await;
        let cfg = RabbitConfig::new(vec![common::amqp_url()], "conformance");
        Arc::new(
            RabbitTransport::connect(cfg)
                .await
                .expect("connect to RabbitMQ"),
        )
    }

    async fn clean_up(&self, topology: &Topology) {
        for q in &topology.queues {
            common::delete_queue_set(&topology.exchange, q).await;
        }
    }
}

herald::conformance_tests!(Rabbit);
