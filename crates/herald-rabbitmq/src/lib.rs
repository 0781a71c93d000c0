//! `amqp://` / `amqps://`: RabbitMQ through [amqprs](https://docs.rs/amqprs), Herald's
//! production engine.
//!
//! - `connection`: the supervisor. Publishing and consuming use separate connections (a
//!   publisher blocked by a broker alarm never stalls consumers), named `<service> herald
//!   publisher` / `consumer`, with heartbeats, several URLs tried in turn, reconnection with
//!   exponential backoff and jitter, and the topology re-declared on every new connection.
//! - `publisher`: a pool of confirm channels, a window of unconfirmed messages, `mandatory`
//!   returns as [`Error::Unroutable`], nacks as [`Error::Rejected`], and unconfirmed messages
//!   published again after a failure (at-least-once), waiting up to `outage_timeout`.
//! - `consumer`: prefetch, batched `multiple` acks, retries and dead letters through queues.
//! - `topology`: exchange, work queues, dead-letter and retry queues, conflict reporting.
//! - `properties`: the envelope as standard AMQP properties plus CloudEvents headers.
//! - `request_reply`: [`RabbitTransport::request`] / [`RabbitTransport::reply`] over direct
//!   reply-to (`amq.rabbitmq.reply-to`), with a timeout.
//!
//! URLs: `amqp://user:pass@host:port/vhost?heartbeat=30`; several URLs (a cluster) are tried in
//! turn. Call [`register`] once so that `herald::transport::connect`, the bus builder and
//! `herald.toml` open `amqp://` and `amqps://` URLs with this crate. `amqps://` needs the `tls`
//! feature (rustls): the webpki roots by default, or
//! `?cacertfile=/path/ca.pem`, and a client certificate with `certfile=` and `keyfile=`.

#![warn(missing_docs)]

mod config;
mod connection;
mod consumer;
mod properties;
mod publisher;
mod request_reply;
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicGetArguments, Channel, QueueDeclareArguments, QueuePurgeArguments,
};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use self::config::{CloudEventsHeaders, RabbitConfig, DEFAULT_PUBLISH_CHANNELS};
use self::connection::Link;
use self::consumer::{ConsumeShared, ConsumerSettler, ConsumerTask, RabbitDeliveries, Settlers};
pub use self::properties::REPLY_TO_HEADER;
use self::properties::{from_message, record_broker_death};
use self::publisher::{Outgoing, Publisher};
use self::request_reply::Requester;
use herald::envelope::Envelope;
use herald::error::{Error, Result};
use herald::topology::{dead_letter_queue_name, QueueSpec, Topology};
use herald::transport::{
    reset_for_replay, Capabilities, Connector, ConsumeOptions, DeadLetter, DeadLetterAdmin,
    Deliveries, PublishOptions, QueueStatistics, QueueStats, RequestReply, TopologyAdmin,
    Transport,
};

/// The AMQP properties Herald writes for an envelope: the standard properties plus the
/// CloudEvents headers that have no property (the default [`CloudEventsHeaders::Compact`]
/// form; see `docs/wire-format.md`). For code that
/// publishes with amqprs directly and wants consumers to read its messages as Herald's.
///
/// ```
/// use herald::Envelope;
/// use herald_rabbitmq::amqp_properties;
///
/// let event = Envelope::new("order.placed", 1, "order.placed", "shop", Default::default());
/// let props = amqp_properties(&event);
/// assert_eq!(props.message_id(), Some(&event.id));
/// assert_eq!(props.message_type().map(String::as_str), Some("order.placed"));
/// assert_eq!(props.delivery_mode(), Some(2)); // persistent
/// ```
pub fn amqp_properties(envelope: &Envelope) -> amqprs::BasicProperties {
    properties::to_properties(envelope, false, CloudEventsHeaders::Compact)
}

/// A received AMQP message as Herald reads it: the envelope its properties and headers make
/// (Herald's own messages in either header form, or anyone's), with a dead-lettering by the
/// broker itself (`x-death`) recorded as Herald's failure headers. For code that consumes with
/// amqprs directly, and for the fuzz targets (`fuzz/`): whatever a peer sends, this returns an
/// envelope and never panics.
///
/// ```
/// use herald::Envelope;
/// use herald_rabbitmq::{amqp_properties, envelope_from_amqp};
///
/// let event = Envelope::new("order.placed", 1, "order.placed", "shop", "{}".into());
/// let back = envelope_from_amqp("order.placed", &amqp_properties(&event), b"{}".to_vec());
/// assert_eq!((back.id, back.event_type), (event.id, event.event_type));
/// ```
pub fn envelope_from_amqp(
    routing_key: &str,
    props: &amqprs::BasicProperties,
    body: Vec<u8>,
) -> Envelope {
    let (mut envelope, death) = from_message(routing_key, props, body);
    if let Some(d) = death {
        record_broker_death(&mut envelope, &d);
    }
    envelope
}

/// AMQP names (exchanges, queues, routing keys) are short strings: at most 255 bytes.
fn check_name(name: &str, what: &str) -> Result<()> {
    if name.len() > 255 {
        let start: String = name.chars().take(40).collect();
        return Err(Error::Config(format!(
            "{what} `{start}...` is {} bytes; AMQP allows at most 255, use a shorter name",
            name.len()
        )));
    }
    Ok(())
}

fn check_topology(topo: &Topology, cfg: &RabbitConfig) -> Result<()> {
    check_name(
        &herald::topology::dead_letter_exchange_name(&topo.exchange),
        "exchange name",
    )?;
    for q in &topo.queues {
        check_name(&q.dead_letter_queue(), "queue name")?;
        for level in cfg.retry_levels(&q.retry_delays) {
            check_name(&q.retry_queue(level), "queue name")?;
        }
        for b in &q.bindings {
            check_name(b, "binding pattern")?;
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RabbitMQ transport. Cheap to clone; clones share the connections. Dropping the last
/// clone closes the connections, so the broker requeues whatever was left unsettled.
#[derive(Clone)]
pub struct RabbitTransport {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

struct Shared {
    cfg: Arc<RabbitConfig>,
    publish_link: Link,
    consume_link: Link,
    publisher: Arc<Publisher>,
    topologies: Arc<Mutex<Vec<Topology>>>,
    settlers: Arc<Settlers>,
    requester: tokio::sync::Mutex<Option<Arc<Requester>>>,
    closed: AtomicBool,
}

struct DropGuard(Vec<Link>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        for l in &self.0 {
            l.abort();
        }
    }
}

impl RabbitTransport {
    /// Connect (publisher and consumer connections), waiting up to `outage_timeout` for the
    /// broker. Fails with [`Error::Unavailable`] when no URL answers in that time.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        config.validate()?;
        let cfg = Arc::new(config);
        let topologies = Arc::new(Mutex::new(Vec::new()));
        let publish_link = Link::start(cfg.clone(), "publisher", Some(topologies.clone()));
        let consume_link = Link::start(cfg.clone(), "consumer", None);
        let guard = Arc::new(DropGuard(vec![publish_link.clone(), consume_link.clone()]));
        let deadline = Instant::now() + cfg.outage_timeout;
        publish_link.session(deadline).await?;
        consume_link.session(deadline).await?;
        let publisher = Arc::new(Publisher::new(publish_link.clone(), cfg.clone()));
        Ok(RabbitTransport {
            shared: Arc::new(Shared {
                cfg,
                publish_link,
                consume_link,
                publisher,
                topologies,
                settlers: Arc::default(),
                requester: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
            _guard: guard,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RabbitConfig {
        &self.shared.cfg
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.cfg.outage_timeout
    }

    /// Send `request` to `exchange` (routed by its routing key) and wait up to `timeout` for one
    /// reply, over direct reply-to: no reply queue is declared. The responder answers with
    /// [`reply`](Self::reply). Fails with [`Error::Timeout`] when no reply comes in time and
    /// [`Error::Unroutable`] when no queue receives the request.
    pub async fn request(
        &self,
        exchange: &str,
        request: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        self.check_open()?;
        check_name(exchange, "exchange name")?;
        check_name(&request.routing_key, "routing key")?;
        let session = self.shared.publish_link.session(self.deadline()).await?;
        let requester = {
            let mut slot = self.shared.requester.lock().await;
            match slot.as_ref() {
                Some(r) if r.usable(session.generation) => r.clone(),
                _ => {
                    let r = Requester::open(&session.conn, session.generation).await?;
                    *slot = Some(r.clone());
                    r
                }
            }
        };
        requester
            .request(
                exchange,
                request,
                timeout,
                self.shared.cfg.cloudevents_headers,
            )
            .await
    }

    /// Answer a request received from a consumer: `reply` goes to the requester's direct
    /// reply-to address with `causation_id` set to the request's id (how the requester matches
    /// it) and the request's correlation id. Fails when `request` asked for no reply.
    pub async fn reply(&self, request: &Envelope, mut reply: Envelope) -> Result<()> {
        self.check_open()?;
        let to = request
            .headers
            .get(REPLY_TO_HEADER)
            .cloned()
            .ok_or_else(|| {
                Error::transport(
                    "rabbitmq",
                    "the request carries no reply-to address; it was not sent with request()",
                )
            })?;
        reply.causation_id = Some(request.id.clone());
        if reply.correlation_id.is_none() {
            reply.correlation_id = Some(request.correlation_or_id().to_string());
        }
        let out = Outgoing {
            exchange: "",
            routing_key: &to,
            mandatory: false,
            envelope: &reply,
            routing_key_header: false,
        };
        self.shared
            .publisher
            .publish_all(std::slice::from_ref(&out))
            .await
    }

    /// A channel on the publishing connection for an administrative job.
    async fn admin_channel(&self) -> Result<(Channel, topology::CloseSlot)> {
        let session = self.shared.publish_link.session(self.deadline()).await?;
        topology::open_channel(&session.conn).await
    }

    /// Publish copies to a queue through the default exchange, with confirms.
    async fn publish_to_queue(&self, queue: &str, envelopes: &[Envelope]) -> Result<()> {
        let out: Vec<Outgoing> = envelopes
            .iter()
            .map(|e| Outgoing {
                exchange: "",
                routing_key: queue,
                mandatory: true,
                envelope: e,
                routing_key_header: true,
            })
            .collect();
        self.shared.publisher.publish_all(&out).await
    }

    /// Take every dead letter of `queue` with `basic.get` (unacked), keep those `pick` wants,
    /// and let the channel close requeue the rest in order.
    async fn take_dead_letters(
        &self,
        queue: &str,
        limit: Option<usize>,
        mut pick: impl FnMut(&Envelope) -> bool,
    ) -> Result<(Channel, Vec<(u64, Envelope)>)> {
        let dlq = dead_letter_queue_name(queue);
        check_name(&dlq, "dead-letter queue name")?;
        let (ch, slot) = self.admin_channel().await?;
        let mut picked = Vec::new();
        while limit.is_none_or(|l| picked.len() < l) {
            match ch.basic_get(BasicGetArguments::new(&dlq)).await {
                Ok(Some((get, props, body))) => {
                    let (mut e, death) = from_message(get.routing_key(), &props, body);
                    if let Some(d) = death {
                        record_broker_death(&mut e, &d);
                    }
                    if pick(&e) {
                        picked.push((get.delivery_tag(), e));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(
                        topology::broker_error(e, &slot, &dlq, "reading dead letters from").await,
                    )
                }
            }
        }
        Ok((ch, picked))
    }
}

impl RabbitTransport {
    /// Messages and consumers of a queue by passive declare; a missing queue closes the channel,
    /// so a fresh one replaces it.
    async fn count(&self, ch: &mut Channel, queue: &str) -> Option<(u32, u32)> {
        if !ch.is_open() {
            *ch = self.admin_channel().await.ok()?.0;
        }
        let args = QueueDeclareArguments::new(queue).passive(true).finish();
        let r = ch.queue_declare(args).await.ok().flatten();
        r.map(|(_, m, c)| (m, c))
    }
}

async fn close_channel(ch: Channel) {
    if ch.is_open() {
        let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
    }
}

#[async_trait]
impl Transport for RabbitTransport {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            priority: true,
            message_ttl: true,
            max_length: true,
            delayed_redelivery: true,
            ordering: herald::transport::Ordering::Queue,
            dead_letters: true,
            queue_stats: true,
            // AMQP 0-9-1 cannot list queues: only those this handle declared.
            lists_all_queues: false,
            native_request_reply: true,
        }
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        Some(self)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        Some(self)
    }

    fn request_reply(&self) -> Option<&dyn RequestReply> {
        Some(self)
    }

    fn topology_admin(&self) -> Option<&dyn TopologyAdmin> {
        Some(self)
    }

    async fn apply_topology(&self, topo: &Topology) -> Result<()> {
        self.check_open()?;
        check_topology(topo, &self.shared.cfg)?;
        let session = self.shared.publish_link.session(self.deadline()).await?;
        topology::declare(&session.conn, topo, &self.shared.cfg).await?;
        let mut known = lock(&self.shared.topologies);
        match known.iter_mut().find(|t| t.exchange == topo.exchange) {
            Some(t) => t.merge(topo.clone()),
            None => known.push(topo.clone()),
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
        check_name(exchange, "exchange name")?;
        for e in batch {
            check_name(&e.routing_key, "routing key")?;
        }
        let out: Vec<Outgoing> = batch
            .iter()
            .map(|e| Outgoing {
                exchange,
                routing_key: &e.routing_key,
                mandatory: options.require_route,
                envelope: e,
                routing_key_header: false,
            })
            .collect();
        self.shared.publisher.publish_all(&out).await
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        self.check_open()?;
        check_name(&queue.name, "queue name")?;
        let prefetch = options.prefetch.max(1);
        let session = self.shared.consume_link.session(self.deadline()).await?;
        let first = consumer::subscribe(
            &session.conn,
            &queue.name,
            prefetch,
            &self.shared.cfg.service,
        )
        .await?;
        let settler = ConsumerSettler::new(
            queue,
            prefetch,
            self.shared.publisher.clone(),
            self.shared.cfg.clone(),
            self.shared.settlers.clone(),
        );
        let shared = ConsumeShared::new(settler, &cancel);
        let task = ConsumerTask {
            link: self.shared.consume_link.clone(),
            spec: queue.clone(),
            prefetch,
            shared: shared.clone(),
            topologies: self.shared.topologies.clone(),
            cfg: self.shared.cfg.clone(),
        };
        tokio::spawn(task.run(first));
        Ok(Deliveries::from_source(RabbitDeliveries(shared)))
    }

    fn is_connected(&self) -> bool {
        self.shared.publish_link.is_connected() && self.shared.consume_link.is_connected()
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.settlers.close_all().await;
        self.shared.publisher.close_channels().await;
        self.shared.publish_link.close().await;
        self.shared.consume_link.close().await;
        Ok(())
    }
}

#[async_trait]
impl DeadLetterAdmin for RabbitTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (ch, picked) = match self.take_dead_letters(queue, Some(limit), |_| true).await {
            Ok(x) => x,
            Err(Error::Transport { message, .. }) if message.contains("NOT_FOUND") => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        close_channel(ch).await;
        Ok(picked
            .into_iter()
            .map(|(_, envelope)| DeadLetter {
                queue: queue.to_string(),
                envelope,
            })
            .collect())
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.check_open()?;
        let (ch, picked) = self
            .take_dead_letters(queue, None, |e| ids.is_none_or(|ids| ids.contains(&e.id)))
            .await?;
        let envelopes: Vec<Envelope> = picked
            .iter()
            .map(|(_, e)| {
                let mut e = e.clone();
                reset_for_replay(&mut e);
                e
            })
            .collect();
        let published = self.publish_to_queue(queue, &envelopes).await;
        if let Err(e) = published {
            close_channel(ch).await;
            return Err(e);
        }
        for (tag, _) in &picked {
            ch.basic_ack(BasicAckArguments::new(*tag, false))
                .await
                .map_err(|e| {
                    Error::transport(
                        "rabbitmq",
                        format!(
                            "acking a replayed dead letter failed (it may be replayed twice): {e}"
                        ),
                    )
                })?;
        }
        close_channel(ch).await;
        Ok(picked.len() as u64)
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.check_open()?;
        let dlq = dead_letter_queue_name(queue);
        check_name(&dlq, "dead-letter queue name")?;
        if ids.is_none() {
            let (ch, slot) = self.admin_channel().await?;
            let n = match ch.queue_purge(QueuePurgeArguments::new(&dlq)).await {
                Ok(n) => n.unwrap_or(0),
                Err(e) => return Err(topology::broker_error(e, &slot, &dlq, "purging").await),
            };
            close_channel(ch).await;
            return Ok(u64::from(n));
        }
        let (ch, picked) = self
            .take_dead_letters(queue, None, |e| ids.is_none_or(|ids| ids.contains(&e.id)))
            .await?;
        for (tag, _) in &picked {
            ch.basic_ack(BasicAckArguments::new(*tag, false))
                .await
                .map_err(|e| Error::transport("rabbitmq", e))?;
        }
        close_channel(ch).await;
        Ok(picked.len() as u64)
    }
}

#[async_trait]
impl QueueStatistics for RabbitTransport {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.check_open()?;
        let known: Vec<QueueSpec> = lock(&self.shared.topologies)
            .iter()
            .flat_map(|t| t.queues.iter().cloned())
            .collect();
        let mut out = self.count_queues(&known, false).await?;
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }

    /// Each queue looked up by name (passive declares), declared by this handle or not, with
    /// its dead letters and the retry levels it declared (or the default levels).
    async fn stats_of(&self, queues: &[String]) -> Result<Vec<QueueStats>> {
        self.check_open()?;
        let known: Vec<QueueSpec> = {
            let topologies = lock(&self.shared.topologies);
            queues
                .iter()
                .map(|name| {
                    topologies
                        .iter()
                        .flat_map(|t| t.queues.iter())
                        .find(|q| &q.name == name)
                        .cloned()
                        .unwrap_or_else(|| QueueSpec::new(name.clone(), ""))
                })
                .collect()
        };
        self.count_queues(&known, true).await
    }
}

impl RabbitTransport {
    /// Counts for each queue (and its dead-letter and retry queues); with `existing_only` a
    /// queue the broker does not have is left out instead of reported without counts.
    async fn count_queues(
        &self,
        queues: &[QueueSpec],
        existing_only: bool,
    ) -> Result<Vec<QueueStats>> {
        let mut out = Vec::new();
        let (mut ch, _) = self.admin_channel().await?;
        for q in queues {
            let mut stat = QueueStats {
                queue: q.name.clone(),
                ..Default::default()
            };
            match self.count(&mut ch, &q.name).await {
                Some((messages, consumers)) => {
                    stat.ready = Some(u64::from(messages));
                    stat.consumers = Some(u64::from(consumers));
                }
                None if existing_only => continue,
                None => {}
            }
            if let Some((messages, _)) = self.count(&mut ch, &q.dead_letter_queue()).await {
                stat.dead_letters = Some(u64::from(messages));
            }
            let mut delayed = 0u64;
            for level in self.shared.cfg.retry_levels(&q.retry_delays) {
                if let Some((messages, _)) = self.count(&mut ch, &q.retry_queue(level)).await {
                    delayed += u64::from(messages);
                }
            }
            stat.delayed = Some(delayed);
            out.push(stat);
        }
        close_channel(ch).await;
        Ok(out)
    }
}

#[async_trait]
impl RequestReply for RabbitTransport {
    async fn request(
        &self,
        exchange: &str,
        request: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        RabbitTransport::request(self, exchange, request, timeout).await
    }

    fn is_request(&self, request: &Envelope) -> bool {
        request.headers.contains_key(REPLY_TO_HEADER)
    }

    async fn reply(&self, request: &Envelope, reply: Envelope) -> Result<()> {
        RabbitTransport::reply(self, request, reply).await
    }
}

#[async_trait]
impl TopologyAdmin for RabbitTransport {
    async fn delete_topology(&self, topology: &Topology) -> Result<()> {
        self.check_open()?;
        let session = self.shared.publish_link.session(self.deadline()).await?;
        topology::delete(&session.conn, topology, &self.shared.cfg).await?;
        lock(&self.shared.topologies).retain(|t| t.exchange != topology.exchange);
        Ok(())
    }
}

/// Opens `amqp://` and `amqps://` URLs (a comma-separated list is a cluster).
pub struct RabbitConnector;

#[async_trait]
impl Connector for RabbitConnector {
    fn schemes(&self) -> &'static [&'static str] {
        &["amqp", "amqps"]
    }

    fn check(&self, url: &str) -> Result<()> {
        RabbitConfig::from_url(url, "check").map(|_| ())
    }

    async fn connect(&self, url: &str, service: &str) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(
            RabbitTransport::connect(RabbitConfig::from_url(url, service)?).await?,
        ))
    }
}

/// Make `amqp://` and `amqps://` URLs open this transport everywhere Herald takes a broker URL
/// (the bus builder, `herald.toml`, `HERALD_BROKER`). Registering again is harmless.
///
/// ```
/// herald_rabbitmq::register();
/// assert!(herald::transport::known_schemes().contains(&"amqp"));
/// herald::transport::check_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
/// assert!(herald::transport::check_url("amqp://").is_err());
/// ```
pub fn register() {
    herald::transport::register(Arc::new(RabbitConnector));
}
