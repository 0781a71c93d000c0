//! A small ordered workload through the bus, recorded by the history checker: keys published
//! one event after another (each once the previous one is confirmed), one consumer taking the
//! queue with one handler call at a time (so Herald promises the order per key).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::{Bus, Envelope, Event, SubscribeOptions};
use herald_check::{
    publish_until_confirmed, transport_activity, wait_for_quiescence, History, Quiescence,
    QuiescenceOptions, Verdict,
};
use serde::{Deserialize, Serialize};

/// One event of key `key`, `seq`-th of its key.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "ha.tick", version = 1)]
pub struct Tick {
    pub key: u32,
    pub seq: u64,
}

/// How many duplicate handlings `faults` kills can cause at most: each can redeliver what the
/// consumer had handled and not yet acked (at most its prefetch window) and republish what each
/// key had in flight (one publish per key).
pub fn duplicate_bound(faults: usize, keys: u32) -> u64 {
    let prefetch = herald::Config::default().prefetch as u64;
    faults as u64 * (prefetch + u64::from(keys))
}

pub struct Workload {
    pub history: History,
    pub consumer: Option<Bus>,
    pub publisher: Bus,
    url: String,
    /// The exchange, and the prefix of the consuming service's name (so of its queue's).
    name: String,
    service: String,
}

async fn bus(url: &str, exchange: &str, service: &str) -> Bus {
    super::amqp_url(); // registers amqp://
    Bus::builder()
        .broker(url)
        .exchange(exchange)
        .service(service)
        .build()
        .await
        .expect("bus")
}

impl Workload {
    /// A publisher on exchange `name`, and with `consume` the consumer (service
    /// `<name>-consumer`) already subscribed and started.
    pub async fn start(url: &str, name: &str, consume: bool) -> Workload {
        let service = format!("{name}-consumer");
        let history = History::new([service.as_str()]).promise_order(service.as_str());
        let publisher = bus(url, name, "ha-publisher").await;
        let mut w = Workload {
            history,
            consumer: None,
            publisher,
            url: url.to_string(),
            name: name.to_string(),
            service,
        };
        if consume {
            w.start_consumer().await;
        } else {
            // The queue must exist before publishing, or nothing routes: declare it through a
            // consumer that never starts.
            let declaring = w.subscribed_consumer().await;
            declaring
                .transport()
                .apply_topology(&declaring.topology())
                .await
                .expect("topology");
            declaring.shutdown().await.expect("shutdown");
        }
        w
    }

    async fn subscribed_consumer(&self) -> Bus {
        let consumer = bus(&self.url, &self.name, &self.service).await;
        consumer
            .subscribe_with(
                |_: Tick| async { Ok::<(), herald::HandlerError>(()) },
                SubscribeOptions::new()
                    .concurrency(1)
                    .layer(self.history.recorder(&self.service)),
            )
            .expect("subscribe");
        consumer
    }

    /// The work queue's name.
    pub fn queue(&self) -> String {
        format!("{}.{}", self.service, Tick::NAME)
    }

    /// Start consuming (when `start` did not).
    pub async fn start_consumer(&mut self) {
        let consumer = self.subscribed_consumer().await;
        consumer.start().await.expect("start consumer");
        self.consumer = Some(consumer);
    }

    /// Publish `per_key` events on each of `keys` keys, the keys concurrently, each key in
    /// sequence, a key's events at least `pace` apart; `confirmed` counts confirmations as they
    /// come.
    pub async fn publish(
        &self,
        keys: u32,
        per_key: u64,
        pace: Duration,
        confirmed: Arc<AtomicU64>,
    ) {
        let mut tasks = Vec::new();
        for key in 0..keys {
            let (bus, history, confirmed) = (
                self.publisher.clone(),
                self.history.clone(),
                confirmed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let subject = format!("key-{key}");
                let mut next = tokio::time::Instant::now();
                for seq in 0..per_key {
                    next += pace;
                    tokio::time::sleep_until(next).await;
                    let mut envelope =
                        Envelope::for_event(&Tick { key, seq }, "ha-publisher").expect("encode");
                    envelope.subject = Some(subject.clone());
                    // Through outages, the same id until confirmed.
                    publish_until_confirmed(
                        &history,
                        bus.publisher(),
                        envelope,
                        &subject,
                        Duration::from_secs(120),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish {subject} #{seq}: {e}"));
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("publishing task");
        }
    }

    /// Wait for quiescence (up to `patience`), stop everything, and judge.
    pub async fn finish(self, patience: Duration) -> (Verdict, Quiescence) {
        let consumer = self.consumer.expect("a consumer ran");
        let transport = consumer.transport().clone();
        let options = QuiescenceOptions {
            patience,
            ..QuiescenceOptions::default()
        };
        let quiet = wait_for_quiescence(&self.history, options, || {
            let t = transport.clone();
            async move { transport_activity(&[&*t]).await }
        })
        .await;
        consumer.shutdown().await.expect("consumer shutdown");
        self.publisher.shutdown().await.expect("publisher shutdown");
        (self.history.check(), quiet)
    }
}
