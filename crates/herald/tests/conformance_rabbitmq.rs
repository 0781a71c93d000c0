//! The conformance suite against a real RabbitMQ (127.0.0.1:5672 or `HERALD_TEST_AMQP_URL`).
//!
//! Each `open()` is a new "process" with its own connections, so dropping a handle closes them
//! and the broker requeues whatever it left unsettled. Every topology a case applies is recorded
//! and deleted from the broker when the case ends.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::conformance::Harness;
use herald::transport::rabbitmq::{RabbitConfig, RabbitTransport};
use herald::transport::{ConsumeOptions, DeadLetter, Deliveries, PublishOptions, QueueStats};
use herald::{Envelope, QueueSpec, Topology, Transport};
use tokio_util::sync::CancellationToken;

mod common;

#[derive(Default)]
struct Rabbit {
    applied: Arc<Mutex<Vec<Topology>>>,
}

/// A RabbitMQ handle that records the topologies applied through it.
struct Recording {
    inner: RabbitTransport,
    applied: Arc<Mutex<Vec<Topology>>>,
}

#[async_trait]
impl Transport for Recording {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn apply_topology(&self, topology: &Topology) -> herald::Result<()> {
        self.applied.lock().unwrap().push(topology.clone());
        self.inner.apply_topology(topology).await
    }
    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> herald::Result<()> {
        self.inner.publish(exchange, batch, options).await
    }
    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> herald::Result<Deliveries> {
        self.inner.consume(queue, options, cancel).await
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> herald::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(queue, limit).await
    }
    async fn replay_dead_letters(
        &self,
        queue: &str,
        ids: Option<&[String]>,
    ) -> herald::Result<u64> {
        self.inner.replay_dead_letters(queue, ids).await
    }
    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> herald::Result<u64> {
        self.inner.purge_dead_letters(queue, ids).await
    }
    async fn queue_stats(&self) -> herald::Result<Vec<QueueStats>> {
        self.inner.queue_stats().await
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    async fn close(&self) -> herald::Result<()> {
        self.inner.close().await
    }
}

#[async_trait]
impl Harness for Rabbit {
    async fn open(&self) -> Arc<dyn Transport> {
        common::wait_for_broker(Duration::from_secs(60)).await;
        let cfg = RabbitConfig::new(vec![common::amqp_url()], "conformance");
        let inner = RabbitTransport::connect(cfg)
            .await
            .expect("connect to RabbitMQ");
        Arc::new(Recording {
            inner,
            applied: self.applied.clone(),
        })
    }

    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(2)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let applied: Vec<Topology> = std::mem::take(&mut *self.applied.lock().unwrap());
        if applied.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for topo in &applied {
                    for q in &topo.queues {
                        common::delete_queue_set(&topo.exchange, q).await;
                    }
                }
            });
        })
        .join();
    }
}

herald::conformance_tests!(Rabbit::default());
