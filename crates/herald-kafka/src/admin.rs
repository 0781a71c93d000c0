//! Topics, the bindings registry and reading a topic whole.
//!
//! Kafka has no bindings, so Herald records them: every applied queue is a record in the
//! compacted topic [`BINDINGS_TOPIC`] (key `<exchange> <queue>`, value the queue's binding
//! patterns as JSON). A publisher keeps the table in memory and reads what was added since
//! whenever a routing key matches nothing, so an unroutable publish is an error as on the other
//! transports, and a queue declared by another process a moment ago is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use herald::error::{Error, Result};
use herald::pattern::topic_matches;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::{KafkaConfig, BINDINGS_TOPIC};
use crate::producer::Producer;
use crate::wire::{self, Received};

/// How long an administrative request waits for the broker.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's log lines as `tracing` events (its errors, such as a broker going away, are
/// warnings: librdkafka reconnects by itself).
pub(crate) fn log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
            tracing::warn!(target: "herald_kafka::librdkafka", facility, "{message}")
        }
        L::Notice | L::Info => {
            tracing::info!(target: "herald_kafka::librdkafka", facility, "{message}")
        }
        L::Debug => tracing::debug!(target: "herald_kafka::librdkafka", facility, "{message}"),
    }
}

pub(crate) fn kafka_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::transport("kafka", format!("{what}: {e}"))
}

/// Run a blocking librdkafka call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| kafka_error("a blocking Kafka call failed", e))?
}

/// A topic Herald creates.
pub(crate) struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub compact: bool,
}

/// Creates topics (the broker may not create them on its own), remembering those it made
/// or found.
pub(crate) struct Topics {
    client: AdminClient<DefaultClientContext>,
    known: Mutex<std::collections::HashSet<String>>,
}

impl Topics {
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        let client = cfg
            .client("admin")
            .create()
            .map_err(|e| kafka_error("cannot create the Kafka admin client", e))?;
        Ok(Topics {
            client,
            known: Mutex::default(),
        })
    }

    /// Create the topics that do not exist yet; one that exists already is left as it is.
    pub async fn ensure(&self, topics: &[TopicSpec]) -> Result<()> {
        let missing: Vec<&TopicSpec> = {
            let known = lock(&self.known);
            topics.iter().filter(|t| !known.contains(&t.name)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
                if t.compact {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .client
            .create_topics(new.iter(), &options)
            .await
            .map_err(|e| unavailable("creating topics", e))?;
        let mut known = lock(&self.known);
        for r in results {
            match r {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    known.insert(name);
                }
                Err((name, code)) => {
                    return Err(kafka_error(
                        &format!("creating topic `{name}` failed"),
                        code,
                    ))
                }
            }
        }
        Ok(())
    }
}

fn unavailable(what: &str, e: KafkaError) -> Error {
    Error::Unavailable {
        waited: ADMIN_TIMEOUT,
        reason: format!("{what}: {e}"),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queue's entry in the bindings topic. An entry with `removed` set forgets the queue
/// (never a record without a value: Tansu 0.6.0 stalls a fetch at one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueEntry {
    /// The exchange the queue is bound to.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// Its binding patterns.
    pub bindings: Vec<String>,
    /// Its retry levels in milliseconds.
    pub retry_delays_ms: Vec<u64>,
    /// The queue is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl QueueEntry {
    /// `<exchange> <queue>`: the record key.
    pub fn key(&self) -> String {
        format!("{} {}", self.exchange, self.queue)
    }
}

/// The bindings of every queue, as read from [`BINDINGS_TOPIC`].
pub(crate) struct Registry {
    cfg: Arc<KafkaConfig>,
    entries: RwLock<HashMap<String, QueueEntry>>,
    /// Reads the bindings topic from where it stopped (the next offset); one refresh at a
    /// time.
    reader: Mutex<Option<(BaseConsumer, i64)>>,
}

impl Registry {
    pub fn new(cfg: Arc<KafkaConfig>) -> Self {
        Registry {
            cfg,
            entries: RwLock::default(),
            reader: Mutex::new(None),
        }
    }

    /// Whether a queue on `exchange` binds `routing_key`, by what was read so far.
    pub fn routes(&self, exchange: &str, routing_key: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.values().any(|q| {
            q.exchange == exchange && q.bindings.iter().any(|b| topic_matches(b, routing_key))
        })
    }

    /// Every queue known.
    pub fn queues(&self) -> Vec<QueueEntry> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.values().cloned().collect()
    }

    /// Record queues in the bindings topic (and in this table at once); an entry already
    /// recorded as it is is not written again (the topic would grow with every start).
    pub async fn record(&self, producer: &Producer, queues: &[QueueEntry]) -> Result<()> {
        let changed: Vec<&QueueEntry> = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            queues
                .iter()
                .filter(|q| entries.get(&q.key()) != Some(*q))
                .collect()
        };
        for q in changed {
            let value = serde_json::to_vec(q).map_err(|e| kafka_error("encoding bindings", e))?;
            let key = q.key();
            producer
                .send(
                    FutureRecord::to(BINDINGS_TOPIC)
                        .key(key.as_str())
                        .payload(&value[..]),
                )
                .await?;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for q in queues {
            if q.removed {
                entries.remove(&q.key());
            } else {
                entries.insert(q.key(), q.clone());
            }
        }
        Ok(())
    }

    /// Read what was added to the bindings topic since the last refresh.
    pub async fn refresh(self: &Arc<Self>) -> Result<()> {
        let this = self.clone();
        blocking(move || this.refresh_blocking()).await
    }

    fn refresh_blocking(&self) -> Result<()> {
        let mut slot = lock(&self.reader);
        if slot.is_none() {
            let reader: BaseConsumer = self
                .cfg
                .reader()
                .create()
                .map_err(|e| kafka_error("cannot create a Kafka reader", e))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(BINDINGS_TOPIC, 0, Offset::Beginning)
                .map_err(|e| kafka_error("reading bindings", e))?;
            reader
                .assign(&tpl)
                .map_err(|e| kafka_error("reading bindings", e))?;
            *slot = Some((reader, 0));
        }
        let Some((reader, next)) = slot.as_mut() else {
            return Ok(());
        };
        let (low, high) = reader
            .fetch_watermarks(BINDINGS_TOPIC, 0, ADMIN_TIMEOUT)
            .map_err(|e| unavailable("reading the bindings topic", e))?;
        *next = (*next).max(low);
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let mut read = Vec::new();
        while *next < high {
            if Instant::now() > deadline {
                return Err(Error::Unavailable {
                    waited: ADMIN_TIMEOUT,
                    reason: "the bindings topic could not be read to its end".into(),
                });
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    *next = m.offset() + 1;
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    let entry = m
                        .payload()
                        .and_then(|v| serde_json::from_slice::<QueueEntry>(v).ok());
                    read.push((key, entry));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "reading the bindings topic"),
                None => {}
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for (key, entry) in read {
            match (key, entry) {
                (_, Some(e)) if e.removed => {
                    entries.remove(&e.key());
                }
                (_, Some(e)) => {
                    entries.insert(e.key(), e);
                }
                (Some(k), None) => {
                    entries.remove(&k);
                }
                (None, None) => {}
            }
        }
        Ok(())
    }
}

/// Make a new queue start at the end of its exchange's topic: a queue receives what is
/// published after it was declared, as on the other transports, not the topic's history.
/// A group that already has offsets (or members) keeps them.
pub(crate) fn start_at_end(cfg: &KafkaConfig, group: &str, topic: &str) -> Result<()> {
    let consumer: BaseConsumer = cfg
        .consumer(group)
        .create()
        .map_err(|e| kafka_error("cannot create a Kafka consumer", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| unavailable("reading topic metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, ADMIN_TIMEOUT)
        .map_err(|e| unavailable("reading committed offsets", e))?;
    if committed
        .elements()
        .iter()
        .any(|e| e.offset().to_raw().is_some_and(|o| o >= 0))
    {
        return Ok(());
    }
    let mut ends = TopicPartitionList::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, ADMIN_TIMEOUT)
            .map_err(|e| unavailable("reading topic offsets", e))?;
        ends.add_partition_offset(topic, *p, Offset::Offset(high))
            .map_err(|e| kafka_error("setting start offsets", e))?;
    }
    if let Err(e) = consumer.commit(&ends, CommitMode::Sync) {
        // A group with members refuses commits from outside; it has its positions already.
        tracing::debug!(group, error = %e, "not setting the start of a queue with members");
    }
    Ok(())
}

/// Every record of `topic` (all partitions), oldest first within a partition, read with a
/// consumer of no group.
pub(crate) fn read_topic(cfg: &KafkaConfig, topic: &str) -> Result<Vec<Received>> {
    let reader: BaseConsumer = cfg
        .reader()
        .create()
        .map_err(|e| kafka_error("cannot create a Kafka reader", e))?;
    let metadata = reader
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| unavailable("reading topic metadata", e))?;
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        if t.error().is_some() {
            // Not created yet: nothing in it.
            return Ok(Vec::new());
        }
        for p in t.partitions() {
            let (low, high) = reader
                .fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)
                .map_err(|e| unavailable("reading topic offsets", e))?;
            if high > low {
                ends.insert(p.id(), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                    .map_err(|e| kafka_error("reading a topic", e))?;
            }
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    reader
        .assign(&tpl)
        .map_err(|e| kafka_error("reading a topic", e))?;
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut out = Vec::new();
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Unavailable {
                waited: ADMIN_TIMEOUT,
                reason: format!("topic `{topic}` could not be read to its end"),
            });
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                let (p, o) = (m.partition(), m.offset());
                out.push(wire::read(&m));
                if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => tracing::debug!(topic, error = %e, "reading a topic"),
            None => {}
        }
    }
    Ok(out)
}

/// How far a group has read each partition of `topics`, beside each partition's end:
/// `(committed or the start, end)` summed per topic.
pub(crate) fn lag(
    cfg: &KafkaConfig,
    group: &str,
    topics: &[String],
) -> Result<HashMap<String, u64>> {
    let consumer: BaseConsumer = cfg
        .consumer(group)
        .create()
        .map_err(|e| kafka_error("cannot create a Kafka consumer", e))?;
    let mut out = HashMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(|e| unavailable("reading topic metadata", e))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
        let committed = consumer
            .committed_offsets(tpl, ADMIN_TIMEOUT)
            .map_err(|e| unavailable("reading committed offsets", e))?;
        let mut total = 0u64;
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(topic, e.partition(), ADMIN_TIMEOUT)
                .map_err(|e| unavailable("reading topic offsets", e))?;
            let from = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
            total += u64::try_from(high - from.max(low)).unwrap_or(0);
        }
        out.insert(topic.clone(), total);
    }
    Ok(out)
}
