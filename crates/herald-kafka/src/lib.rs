//! `kafka://`: Kafka (and Kafka-API brokers such as Tansu or Redpanda) through
//! [rdkafka](https://docs.rs/rdkafka) (librdkafka), written against `herald`'s public API.
//!
//! How Herald's model maps onto Kafka (`docs/kafka.md` explains why):
//! - An **exchange is a topic** of the same name, with `partitions` partitions. The routing key
//!   travels in the `herald_routing_key` header; the record key is the envelope's subject (the
//!   aggregate id), so an aggregate's events, of every type, share a partition and stay in
//!   order.
//! - A **queue is a consumer group** of the same name reading the exchange's topic: every
//!   service gets every event, instances of one service share the partitions. The group skips
//!   records whose routing key its bindings do not match. A new queue starts at the end of the
//!   topic (what is published after it was declared).
//! - **Settlement** commits offsets, batched, never past a delivery not yet settled
//!   (at-least-once). A retry is a copy on the queue's retry topic for its delay level
//!   (`<queue>.retry.<ms>ms`, read by the same group and held until due), so a failing message
//!   never blocks its partition; a dead letter is a copy on `<queue>.dlq` with Herald's failure
//!   headers. Replaying or purging one appends a marker (Kafka cannot delete one record).
//! - **Bindings** are recorded in the compacted topic `herald.queues`, so publishing an event
//!   no queue binds is [`Error::Unroutable`], as on the other transports.
//!
//! Call [`register`] once so that `herald::transport::connect`, the bus builder and
//! `herald.toml` open `kafka://` URLs with this crate.

#![warn(missing_docs)]

mod admin;
mod config;
mod consumer;
mod dead_letters;
mod hub;
mod offsets;
mod producer;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::envelope::Envelope;
use herald::error::{Error, Result};
use herald::topology::{QueueSpec, Topology};
use herald::transport::{
    Capabilities, Connector, ConsumeOptions, DeadLetterAdmin, Deliveries, PublishOptions,
    QueueStatistics, Transport,
};
use tokio_util::sync::CancellationToken;

pub use self::admin::QueueEntry;
use self::admin::{blocking, lock, start_at_end, Registry, TopicSpec, Topics};
pub use self::config::KafkaConfig;
use self::config::{dead_letter_topic, exchange_topic, retry_topic, BINDINGS_TOPIC};
use self::consumer::{Plan, Shared as ConsumerShared};
use self::hub::Hub;
use self::producer::Producer;
pub use self::wire::{NOT_BEFORE, REMOVES, ROUTING_KEY, TTL_MS};

/// The Kafka transport. Cheap to clone; clones share the producer. Dropping the last clone
/// makes its consumers leave their groups at once (as a process that died would), so their
/// unsettled messages go to the group's other members.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

struct Inner {
    cfg: Arc<KafkaConfig>,
    producer: Arc<Producer>,
    topics: Topics,
    registry: Arc<Registry>,
    /// Queues this handle declared, for statistics.
    declared: Mutex<Vec<QueueEntry>>,
    /// One group member per queue, shared by this handle's consumers of it.
    members: Mutex<HashMap<String, Member>>,
    closed: AtomicBool,
    hard_stop: Arc<AtomicBool>,
}

struct Member {
    hub: Arc<Hub>,
    cancel: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl KafkaTransport {
    /// Connect: create the producer and read the bindings topic (creating it when missing).
    /// Fails with [`Error::Unavailable`] when the brokers do not answer.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let cfg = Arc::new(config);
        let producer = Arc::new(Producer::new(&cfg)?);
        let topics = Topics::new(&cfg)?;
        topics
            .ensure(&[TopicSpec {
                name: BINDINGS_TOPIC.into(),
                partitions: 1,
                compact: true,
            }])
            .await?;
        let registry = Arc::new(Registry::new(cfg.clone()));
        registry.refresh().await?;
        let hard_stop = Arc::new(AtomicBool::new(false));
        Ok(KafkaTransport {
            inner: Arc::new(Inner {
                cfg,
                producer,
                topics,
                registry,
                declared: Mutex::default(),
                members: Mutex::default(),
                closed: AtomicBool::new(false),
                hard_stop: hard_stop.clone(),
            }),
            _guard: Arc::new(DropGuard(hard_stop)),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.cfg
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The topics a queue reads and writes besides its exchange's, one partition each: retries
    /// are few, and every partition a group reads costs the broker a fetch even when idle.
    fn queue_topics(&self, queue: &QueueSpec) -> Vec<TopicSpec> {
        topic_names(&self.inner.cfg, queue)
            .into_iter()
            .map(|name| TopicSpec {
                name,
                partitions: 1,
                compact: false,
            })
            .collect()
    }

    fn exchange_spec(&self, topic: &str) -> TopicSpec {
        TopicSpec {
            name: topic.to_string(),
            partitions: self.inner.cfg.partitions,
            compact: false,
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            // Kafka delivers a partition in offset order; there is no priority to reorder by.
            priority: false,
            // Checked by the consumer against the record's timestamp; expired messages are
            // dead-lettered as `expired`.
            message_ttl: true,
            // A topic has retention, not a length that refuses publishes.
            max_length: false,
            delayed_redelivery: true,
            ordering: herald::transport::Ordering::Key,
            dead_letters: true,
            queue_stats: true,
            // Every queue recorded in the bindings topic, by any process.
            lists_all_queues: true,
            native_request_reply: false,
        }
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        Some(self)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        Some(self)
    }

    async fn apply_topology(&self, topo: &Topology) -> Result<()> {
        self.check_open()?;
        let topic = exchange_topic(&topo.exchange)?;
        let mut specs = vec![self.exchange_spec(&topic)];
        for q in &topo.queues {
            for b in &q.bindings {
                herald::pattern::validate_pattern(b)
                    .map_err(|e| Error::Config(format!("queue `{}`: {e}", q.name)))?;
            }
            specs.extend(self.queue_topics(q));
        }
        self.inner.topics.ensure(&specs).await?;
        // Positions first, bindings second: a publish the new binding routes is then always
        // after the queue's start.
        for q in &topo.queues {
            let (cfg, group, topic) = (self.inner.cfg.clone(), q.name.clone(), topic.clone());
            blocking(move || start_at_end(&cfg, &group, &topic)).await?;
        }
        let entries: Vec<QueueEntry> = topo
            .queues
            .iter()
            .map(|q| QueueEntry {
                exchange: topo.exchange.clone(),
                queue: q.name.clone(),
                bindings: q.bindings.clone(),
                retry_delays_ms: self
                    .inner
                    .cfg
                    .retry_levels(&q.retry_delays)
                    .iter()
                    .map(|d| d.as_millis() as u64)
                    .collect(),
                removed: false,
            })
            .collect();
        self.inner
            .registry
            .record(&self.inner.producer, &entries)
            .await?;
        let mut declared = lock(&self.inner.declared);
        for e in entries {
            declared.retain(|d| !(d.exchange == e.exchange && d.queue == e.queue));
            declared.push(e);
        }
        Ok(())
    }

    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()> {
        self.check_open()?;
        let topic = exchange_topic(exchange)?;
        if options.require_route {
            let registry = &self.inner.registry;
            let mut refreshed = false;
            for e in batch {
                if registry.routes(exchange, &e.routing_key) {
                    continue;
                }
                // Maybe a queue declared a moment ago by another process.
                if !refreshed {
                    registry.refresh().await?;
                    refreshed = true;
                }
                if !registry.routes(exchange, &e.routing_key) {
                    return Err(Error::Unroutable {
                        exchange: exchange.to_string(),
                        routing_key: e.routing_key.clone(),
                    });
                }
            }
        }
        self.inner
            .topics
            .ensure(std::slice::from_ref(&self.exchange_spec(&topic)))
            .await?;
        self.inner.producer.publish(&topic, batch, None).await
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        self.check_open()?;
        if let Some(member) = lock(&self.inner.members).get(&queue.name) {
            if let Some(source) = member.hub.attach(cancel.clone()) {
                return Ok(Deliveries::from_source(source));
            }
        }
        let exchange = lock(&self.inner.declared)
            .iter()
            .find(|d| d.queue == queue.name)
            .map(|d| d.exchange.clone());
        let exchange = match exchange {
            Some(e) => e,
            None => self.exchange_of(&queue.name).await?,
        };
        let topic = exchange_topic(&exchange)?;
        let mut specs = vec![self.exchange_spec(&topic)];
        specs.extend(self.queue_topics(queue));
        self.inner.topics.ensure(&specs).await?;
        let plan = Plan::new(&self.inner.cfg, queue, &topic, options.prefetch);
        let member_cancel = CancellationToken::new();
        let shared = ConsumerShared::new(
            plan,
            self.inner.producer.clone(),
            self.inner.cfg.clone(),
            member_cancel.clone(),
            self.inner.hard_stop.clone(),
        );
        let hub = Hub::new(member_cancel.clone());
        let Some(source) = hub.attach(cancel) else {
            return Err(Error::Closed);
        };
        let group_member = consumer::subscribe(&shared)?;
        let runtime = tokio::runtime::Handle::current();
        let thread_hub = hub.clone();
        let thread = std::thread::Builder::new()
            .name(format!("herald-kafka {}", queue.name))
            .spawn(move || {
                let _entered = runtime.enter();
                consumer::run(shared, group_member, thread_hub)
            })
            .map_err(|e| {
                Error::transport("kafka", format!("cannot start a consumer thread: {e}"))
            })?;
        let member = Member {
            hub,
            cancel: member_cancel,
            thread,
        };
        if let Some(old) = lock(&self.inner.members).insert(queue.name.clone(), member) {
            // Stopping already (its last consumer left); it finishes on its own.
            old.cancel.cancel();
        }
        Ok(Deliveries::from_source(source))
    }

    fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && self.inner.producer.is_connected()
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let members: Vec<Member> = lock(&self.inner.members).drain().map(|(_, m)| m).collect();
        for m in &members {
            m.cancel.cancel();
        }
        let producer = self.inner.producer.clone();
        blocking(move || {
            for m in members {
                let _ = m.thread.join();
            }
            producer.flush(Duration::from_secs(10));
            Ok(())
        })
        .await
    }
}

impl KafkaTransport {
    /// Forget queues: their entries in `herald.queues` are marked removed, so publishers stop
    /// counting them as routes. Their topics and group offsets stay (Herald deletes no
    /// topic). For tooling and tests that drop queues.
    pub async fn forget_queues(&self, topology: &Topology) -> Result<()> {
        self.check_open()?;
        let entries: Vec<QueueEntry> = topology
            .queues
            .iter()
            .map(|q| QueueEntry {
                exchange: topology.exchange.clone(),
                queue: q.name.clone(),
                bindings: Vec::new(),
                retry_delays_ms: Vec::new(),
                removed: true,
            })
            .collect();
        self.inner
            .registry
            .record(&self.inner.producer, &entries)
            .await
    }

    /// The exchange a queue was declared on, from the bindings topic.
    async fn exchange_of(&self, queue: &str) -> Result<String> {
        let find = |r: &Registry| {
            r.queues()
                .into_iter()
                .find(|q| q.queue == queue)
                .map(|q| q.exchange)
        };
        if let Some(e) = find(&self.inner.registry) {
            return Ok(e);
        }
        self.inner.registry.refresh().await?;
        find(&self.inner.registry).ok_or_else(|| {
            Error::Config(format!(
                "queue `{queue}` was never declared on Kafka; apply its topology first"
            ))
        })
    }
}

/// The topics Herald makes for a queue besides its exchange's: one retry topic per delay
/// level (`<queue>.retry.<ms>ms`) and the dead letters (`<queue>.dlq`). For tooling that
/// cleans up after a queue is gone.
///
/// ```
/// let cfg = herald_kafka::KafkaConfig::new(vec!["127.0.0.1:9092".into()], "svc");
/// let mut q = herald::QueueSpec::new("billing.order.placed", "order.placed");
/// q.retry_delays = vec![std::time::Duration::from_secs(1)];
/// assert_eq!(
///     herald_kafka::topic_names(&cfg, &q),
///     vec!["billing.order.placed.retry.1000ms", "billing.order.placed.dlq"]
/// );
/// ```
pub fn topic_names(cfg: &KafkaConfig, queue: &QueueSpec) -> Vec<String> {
    let mut names: Vec<String> = cfg
        .retry_levels(&queue.retry_delays)
        .into_iter()
        .map(|l| retry_topic(&queue.name, l))
        .collect();
    names.push(dead_letter_topic(&queue.name));
    names
}

/// Opens `kafka://host:port[,host2:port]` URLs.
pub struct KafkaConnector;

#[async_trait]
impl Connector for KafkaConnector {
    fn schemes(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    fn check(&self, url: &str) -> Result<()> {
        KafkaConfig::from_url(url, "check").map(|_| ())
    }

    async fn connect(&self, url: &str, service: &str) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(
            KafkaTransport::connect(KafkaConfig::from_url(url, service)?).await?,
        ))
    }
}

/// Make `kafka://` URLs open this transport everywhere Herald takes a broker URL (the bus
/// builder, `herald.toml`, `HERALD_BROKER`). Registering again is harmless.
///
/// ```
/// herald_kafka::register();
/// assert!(herald::transport::known_schemes().contains(&"kafka"));
/// herald::transport::check_url("kafka://127.0.0.1:9092").unwrap();
/// assert!(herald::transport::check_url("kafka://").is_err());
/// ```
pub fn register() {
    herald::transport::register(Arc::new(KafkaConnector));
}
