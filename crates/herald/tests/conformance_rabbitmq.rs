//! The conformance suite against a real RabbitMQ (127.0.0.1:5672 or `HERALD_TEST_AMQP_URL`).
use std::sync::Arc;
use std::time::Duration;

use herald::conformance::Harness;
use herald::transport::rabbitmq::{RabbitConfig, RabbitTransport};
use herald::Transport;

mod common;

struct Rabbit;

#[async_trait::async_trait]
impl Harness for Rabbit {
    async fn open(&self) -> Arc<dyn Transport> {
        common::wait_for_broker(Duration::from_secs(60)).await;
        // Each open is a new "process": its own connections, so dropping it closes them and the
        // broker requeues whatever it left unsettled.
        let cfg = RabbitConfig::new(vec![common::amqp_url()], "conformance");
        Arc::new(
            RabbitTransport::connect(cfg)
                .await
                .expect("connect to RabbitMQ"),
        )
    }

    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(2)
    }
}

herald::conformance_tests!(Rabbit);
