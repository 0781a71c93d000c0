//! Shutting down a bus on RabbitMQ logs no errors: a publisher and a consumer bus, each with its
//! own connections, publish and handle a burst of events and shut down, several times over.
//! Before the transport closed its consumers' channels itself, amqprs closed one from a spawned
//! task after the connection was gone, and logged an ERROR, on about one shutdown in six.
//! Its own test binary: the subscriber that counts errors is process-wide (the runtime's
//! worker threads log too), so no other test may run beside it.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Bus, Event, HandlerError};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shutdown.ping")]
struct Ping {
    n: u32,
}

async fn pong(_p: Ping) -> Result<(), HandlerError> {
    Ok(())
}

/// Every ERROR event, as text, from any target (amqprs's included).
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
        }
        let mut text = Text(format!("{}: ", event.metadata().target()));
        event.record(&mut text);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text.0);
    }
}

async fn bus(service: &str, exchange: &str) -> Bus {
    Bus::builder()
        .broker(common::amqp_url())
        .service(service)
        .exchange(exchange)
        .build()
        .await
        .expect("bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_logs_no_errors() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    let errors = Errors::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(errors.clone()))
        .expect("the only subscriber in this binary");
    let mut declared = Vec::new();
    for round in 0..20 {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("shutdown-test.{}", &id[..12]);
        let consumer = bus(&format!("shutdown-consumer-{}", &id[..8]), &exchange).await;
        consumer.subscribe(pong).unwrap();
        consumer.start().await.unwrap();
        let publisher = bus(&format!("shutdown-publisher-{}", &id[..8]), &exchange).await;
        futures::stream::iter(0..500)
            .map(|n| {
                let p = publisher.clone();
                async move { p.publish(&Ping { n }).await }
            })
            .buffer_unordered(64)
            .for_each(|r| async move {
                r.expect("publish");
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.metrics().handled < 500 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {:?}",
                consumer.metrics()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        declared.push((exchange, consumer.topology()));
        publisher.shutdown().await.unwrap();
        consumer.shutdown().await.unwrap();
        drop((publisher, consumer));
        // Time for whatever the drops spawned to run (and log).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = errors.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(seen.is_empty(), "errors logged: {seen:#?}");
    for (exchange, topology) in declared {
        for q in &topology.queues {
            common::delete_queue_set(&exchange, q).await;
        }
    }
}
