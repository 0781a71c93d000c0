//! The `traceparent` crosses a real RabbitMQ broker: the consumer's `herald.handle` span has
//! the publisher's trace id (amqp://guest:guest@127.0.0.1:5672/%2f, or HERALD_TEST_AMQP_URL).

mod common;
#[path = "../../herald/tests/tracing_support/mod.rs"]
mod tracing_support;

use std::time::Duration;

use herald::Bus;
use tracing_support::{check_flow, Capture};

#[tokio::test]
async fn rabbitmq_carries_the_trace_between_services() {
    common::wait_for_broker(Duration::from_secs(20)).await;
    let capture = Capture::default();
    let _guard = capture.install();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("herald.test.trace.{unique}");
    let bus = Bus::builder()
        .service(format!("trace-svc-{unique}"))
        .broker(common::amqp_url())
        .exchange(exchange.clone())
        .build()
        .await
        .unwrap();
    let cleanup = bus.clone();
    check_flow(bus, &capture, "rabbitmq").await;
    for q in cleanup.topology().queues {
        common::delete_queue_set(&exchange, &q).await;
    }
}
