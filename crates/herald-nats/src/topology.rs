//! Declaring a topology on JetStream, and the routing table publishes are checked against.
//!
//! Per exchange: the event stream (interest retention: a message stays until every queue whose
//! bindings match it has settled it, and one no queue wants is not kept) and its dead-letter
//! stream (kept until purged). Per queue: two durable pull consumers on the event stream, `q_…`
//! for the queue's bindings and `d_…` for messages addressed to the queue alone (retries,
//! replays). Each consumer is created with "deliver new", so a queue declared today does not
//! receive what was published before it existed, as on RabbitMQ.
//!
//! NATS 2.10 and later filter a consumer by several subjects; on 2.9 a queue with one binding
//! is filtered by the server and one with several receives the exchange's events and is
//! filtered here (the same happens on any version when two bindings overlap in a way the
//! server refuses).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use futures::TryStreamExt;
use herald::error::{Error, Result};
use herald::topology::{QueueSpec, Topology};
use serde::{Deserialize, Serialize};

use crate::config::NatsConfig;
use crate::names;

/// What a queue's consumers record about it (in their description), so that any process can
/// list the queues of an exchange and their bindings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QueueRecord {
    /// The queue's name.
    pub queue: String,
    /// Its binding patterns.
    pub bindings: Vec<String>,
    /// A temporary queue (deleted when its consumer stops).
    #[serde(default)]
    pub auto_delete: bool,
}

impl QueueRecord {
    fn description(&self) -> String {
        format!("herald:{}", serde_json::to_string(self).unwrap_or_default())
    }

    pub(crate) fn from_description(description: Option<&str>) -> Option<Self> {
        serde_json::from_str(description?.strip_prefix("herald:")?).ok()
    }

    fn of(spec: &QueueSpec) -> Self {
        QueueRecord {
            queue: spec.name.clone(),
            bindings: spec.bindings.clone(),
            auto_delete: spec.auto_delete,
        }
    }
}

/// How the consumer of a queue's bindings is filtered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filtering {
    /// By the server, on these subjects.
    Server(Vec<String>),
    /// By the client: the consumer receives every event of the exchange.
    Client,
}

/// The filtering a queue gets on a server that does (or does not) take several subjects.
pub(crate) fn filtering(exchange: &str, spec: &QueueSpec, many_filters: bool) -> Result<Filtering> {
    let mut filters = Vec::new();
    for b in &spec.bindings {
        filters.extend(names::filters_of(exchange, b)?);
    }
    Ok(match names::disjoint_filters(filters) {
        Some(f) if f.len() == 1 || many_filters => Filtering::Server(f),
        _ => Filtering::Client,
    })
}

fn jetstream_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::transport("nats", format!("{what}: {e}"))
}

/// Create the exchange's streams if they do not exist.
pub(crate) async fn declare_exchange(
    js: &jetstream::Context,
    exchange: &str,
    cfg: &NatsConfig,
) -> Result<()> {
    names::check_exchange(exchange)?;
    let stream = names::stream_name(exchange);
    let events = stream::Config {
        name: stream.clone(),
        description: Some(format!("herald exchange {exchange}")),
        subjects: names::stream_subjects(exchange, &stream),
        retention: RetentionPolicy::Interest,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    };
    ensure_stream(js, events).await?;
    let dead = stream::Config {
        name: names::dlq_stream_name(&stream),
        description: Some(format!("herald dead letters of exchange {exchange}")),
        subjects: names::dlq_subjects(&stream),
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    };
    ensure_stream(js, dead).await
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<()> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| jetstream_error("reading a stream", e))?;
            if info.config.retention != config.retention {
                return Err(Error::TopologyConflict {
                    object: name,
                    detail: format!(
                        "it exists with {:?} retention, Herald needs {:?}",
                        info.config.retention, config.retention
                    ),
                });
            }
            Ok(())
        }
        Err(_) => match js.create_stream(config).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = e.to_string();
                // Another process created it in between.
                if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NAME_EXIST)
                {
                    return Ok(());
                }
                if text.contains("overlap") {
                    return Err(Error::TopologyConflict {
                        object: name,
                        detail: format!("its subjects overlap another stream's ({text}); exchange names must not be prefixes of one another on NATS"),
                    });
                }
                Err(jetstream_error("creating a stream", e))
            }
        },
    }
}

/// The bindings consumer's name of a queue.
pub(crate) fn bindings_consumer(queue: &str) -> String {
    format!("q_{}", names::consumer_name(queue))
}

/// The addressed-messages consumer's name of a queue.
pub(crate) fn direct_consumer(queue: &str) -> String {
    format!("d_{}", names::consumer_name(queue))
}

/// The consumers' configurations of a queue.
pub(crate) fn consumer_configs(
    exchange: &str,
    spec: &QueueSpec,
    cfg: &NatsConfig,
    many_filters: bool,
) -> Result<(pull::Config, pull::Config)> {
    names::check_tokens("queue name", &spec.name)?;
    let stream = names::stream_name(exchange);
    let record = QueueRecord::of(spec);
    let base = pull::Config {
        description: Some(record.description()),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        num_replicas: cfg.replicas,
        // A temporary queue's consumers go away on their own if its process dies.
        inactive_threshold: if spec.auto_delete {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        },
        ..Default::default()
    };
    let mut bindings = pull::Config {
        durable_name: Some(bindings_consumer(&spec.name)),
        ..base.clone()
    };
    match filtering(exchange, spec, many_filters)? {
        Filtering::Server(mut f) if f.len() == 1 => bindings.filter_subject = f.remove(0),
        Filtering::Server(f) => bindings.filter_subjects = f,
        Filtering::Client => {
            bindings.filter_subject = format!("{}.>", names::exchange_token(exchange))
        }
    }
    let direct = pull::Config {
        durable_name: Some(direct_consumer(&spec.name)),
        filter_subject: names::direct_subject(&stream, &spec.name),
        ..base
    };
    Ok((bindings, direct))
}

/// Create a queue's consumers, or bring them up to date (bindings added, settings changed).
pub(crate) async fn declare_queue(
    js: &jetstream::Context,
    exchange: &str,
    spec: &QueueSpec,
    cfg: &NatsConfig,
    many_filters: bool,
) -> Result<()> {
    let stream_name = names::stream_name(exchange);
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| jetstream_error("opening the exchange's stream", e))?;
    let (bindings, direct) = consumer_configs(exchange, spec, cfg, many_filters)?;
    for config in [bindings, direct] {
        let name = config.durable_name.clone().unwrap_or_default();
        if let Ok(info) = stream.consumer_info(&name).await {
            if same_consumer(&info.config, &config) {
                continue;
            }
        }
        if let Err(e) = stream.create_consumer(config).await {
            return Err(Error::TopologyConflict {
                object: format!("{} (consumer {name} of stream {stream_name})", spec.name),
                detail: format!(
                    "{e}; the queue exists with other settings (bindings, ack wait) this NATS server cannot change in place: delete the consumer or use NATS 2.10+"
                ),
            });
        }
    }
    Ok(())
}

fn same_consumer(have: &async_nats::jetstream::consumer::Config, want: &pull::Config) -> bool {
    have.description == want.description
        && have.filter_subject == want.filter_subject
        && have.filter_subjects == want.filter_subjects
        && have.ack_wait == want.ack_wait
        && have.max_ack_pending == want.max_ack_pending
}

/// The queues of every exchange this process publishes to, as their consumers record them:
/// whether a routing key reaches any queue. Refreshed from the server when a key seems to reach
/// none (another process may have declared a queue since), at most every `REFRESH`.
#[derive(Default)]
pub(crate) struct Routes {
    by_exchange: Mutex<HashMap<String, Known>>,
    /// One refresh from the server at a time: the publishes that find a key unknown at once (a
    /// publisher's first window) wait for it rather than each listing the queues.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default, Clone)]
struct Known {
    queues: Vec<QueueRecord>,
    refreshed: Option<Instant>,
}

const REFRESH: Duration = Duration::from_millis(50);

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.by_exchange.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the queues of a topology this process declared.
    pub(crate) fn learn(&self, topology: &Topology) {
        let mut map = self.lock();
        let known = map.entry(topology.exchange.clone()).or_default();
        for q in &topology.queues {
            let record = QueueRecord::of(q);
            match known.queues.iter_mut().find(|k| k.queue == record.queue) {
                Some(k) => *k = record,
                None => known.queues.push(record),
            }
        }
    }

    /// Forget a queue (its consumers were deleted).
    pub(crate) fn forget(&self, exchange: &str, queue: &str) {
        if let Some(known) = self.lock().get_mut(exchange) {
            known.queues.retain(|q| q.queue != queue);
        }
    }

    /// Whether the table says `routing_key` reaches a queue on `exchange` (no server call).
    pub(crate) fn reaches(&self, exchange: &str, routing_key: &str) -> bool {
        self.lock().get(exchange).is_some_and(|k| {
            k.queues.iter().any(|q| {
                q.bindings
                    .iter()
                    .any(|b| herald::pattern::topic_matches(b, routing_key))
            })
        })
    }

    /// Whether `routing_key` reaches a queue on `exchange`, asking the server when the table
    /// says no.
    pub(crate) async fn routable(
        &self,
        js: &jetstream::Context,
        exchange: &str,
        routing_key: &str,
    ) -> Result<bool> {
        if self.reaches(exchange, routing_key) {
            return Ok(true);
        }
        let fresh = || {
            self.lock()
                .get(exchange)
                .and_then(|k| k.refreshed)
                .is_some_and(|t| t.elapsed() < REFRESH)
        };
        if fresh() {
            return Ok(self.reaches(exchange, routing_key));
        }
        let _refreshing = self.refreshing.lock().await;
        // Another publish may have refreshed it while this one waited.
        if !fresh() {
            let queues = list_queues(js, exchange).await?;
            self.lock().insert(
                exchange.to_string(),
                Known {
                    queues,
                    refreshed: Some(Instant::now()),
                },
            );
        }
        Ok(self.reaches(exchange, routing_key))
    }
}

/// Every queue on an exchange, read from its consumers' descriptions (none when the exchange
/// has no stream yet).
pub(crate) async fn list_queues(
    js: &jetstream::Context,
    exchange: &str,
) -> Result<Vec<QueueRecord>> {
    let Ok(stream) = js.get_stream(names::stream_name(exchange)).await else {
        return Ok(Vec::new());
    };
    let mut consumers = stream.consumers();
    let mut out = Vec::new();
    while let Some(info) = consumers
        .try_next()
        .await
        .map_err(|e| jetstream_error("listing consumers", e))?
    {
        if !info.name.starts_with("q_") {
            continue;
        }
        if let Some(record) = QueueRecord::from_description(info.config.description.as_deref()) {
            out.push(record);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_description() {
        let r = QueueRecord {
            queue: "svc.order.placed".into(),
            bindings: vec!["order.*".into()],
            auto_delete: false,
        };
        assert_eq!(
            QueueRecord::from_description(Some(&r.description())),
            Some(r)
        );
        assert_eq!(QueueRecord::from_description(Some("someone else's")), None);
    }

    #[test]
    fn filtering_by_server_version() {
        let mut q = QueueSpec::new("svc.q", "a.*");
        assert_eq!(
            filtering("X", &q, false).unwrap(),
            Filtering::Server(vec!["X.a.*".into()])
        );
        q.bindings.push("b.#".into());
        assert_eq!(filtering("X", &q, false).unwrap(), Filtering::Client);
        assert_eq!(
            filtering("X", &q, true).unwrap(),
            Filtering::Server(vec!["X.a.*".into(), "X.b".into(), "X.b.>".into()])
        );
        q.bindings = vec!["a.#.b".into()];
        assert!(filtering("X", &q, true).is_err());
    }
}
