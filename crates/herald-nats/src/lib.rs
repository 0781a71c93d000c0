//! `nats://`: NATS JetStream as a Herald transport, on [async-nats](https://docs.rs/async-nats).
//!
//! ```no_run
//! # async fn run() -> herald::Result<()> {
//! herald_nats::register();    // nats:// and tls:// URLs now open this transport
//! let bus = herald::Bus::builder()
//!     .service("notification-service")
//!     .broker("nats://127.0.0.1:4222")
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The mapping (see `names` and `topology` in the source, and `docs/nats.md`):
//!
//! - an **exchange** is a stream over `<exchange>.>` with interest retention: an event is
//!   published on `<exchange>.<routing key>` and kept until every queue bound to it has
//!   settled it; a publish no queue is bound for is [`Error::Unroutable`];
//! - a **queue** is a durable pull consumer filtered by the queue's bindings (`*` → `*`,
//!   trailing `#` → `>`; a `#` in the middle is refused), plus a second one for messages
//!   addressed to that queue alone (retries, replays); instances of a service share them
//!   (competing consumers), every service has its own (fan-out);
//! - **publish** waits for the JetStream ack, with `Nats-Msg-Id` = the event id, so a publish
//!   retried across a reconnect is stored once;
//! - **settle**: ack; retry = a copy addressed to the queue with the failure recorded and a
//!   not-before time; dead letter = a copy in the exchange's dead-letter stream with the
//!   failure recorded (listed, replayed and purged with [`DeadLetterAdmin`]); release = `NAK`;
//! - **prefetch** bounds the unsettled messages of each consumer instance; `max_ack_pending`
//!   (URL option) bounds a queue's across instances;
//! - **recovery**: the client reconnects on its own; consumers re-open their pull requests, and
//!   re-declare their queue if the server lost it.
//!
//! URLs and options: [`NatsConfig`].

mod admin;
mod config;
mod consume;
mod names;
mod publish;
mod puller;
mod topology;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use herald::envelope::Envelope;
use herald::error::{Error, Result};
use herald::topology::{QueueSpec, Topology};
use herald::transport::{
    Capabilities, Connector, ConsumeOptions, DeadLetterAdmin, Deliveries, PublishOptions,
    QueueStatistics, Transport,
};
use tokio_util::sync::CancellationToken;

pub use config::NatsConfig;
pub use wire::CloudEventsHeaders;

/// The JetStream stream an exchange's events live in (its dead letters are in
/// `<stream>_dlq`), for tools and tests that look at the server directly.
pub fn stream_name(exchange: &str) -> String {
    names::stream_name(exchange)
}

use consume::{ConsumeTask, NatsSettler};
use publish::Outgoing;
use topology::Routes;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const KIND: &str = "nats";

/// The NATS JetStream transport. Cheap to clone; clones share the connection. When the last
/// clone is dropped, its consumers stop renewing what they hold, so JetStream redelivers it after
/// `ack_wait`, as after a crash; [`close`](Transport::close) gives it back at once.
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: NatsConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// The server filters a consumer by several subjects (NATS 2.10 and later).
    many_filters: bool,
    max_payload: usize,
    routes: Routes,
    declared: Mutex<Vec<Topology>>,
    settlers: Mutex<Vec<Weak<NatsSettler>>>,
    /// Cancelled when the transport closes or its last handle is dropped.
    pub(crate) shutdown: CancellationToken,
    /// How many times the client connected again: pull requests sent before are forgotten.
    pub(crate) reconnects: Arc<puller::Reconnects>,
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn declared_exchanges(&self) -> Vec<String> {
        lock(&self.declared)
            .iter()
            .map(|t| t.exchange.clone())
            .collect()
    }

    /// Whether this handle declared `queue` on the exchange whose stream is `stream`.
    pub(crate) fn knows_queue(&self, stream: &str, queue: &str) -> bool {
        lock(&self.declared).iter().any(|t| {
            names::stream_name(&t.exchange) == stream && t.queues.iter().any(|q| q.name == queue)
        })
    }

    async fn declare(&self, topology: &Topology) -> Result<()> {
        topology::declare_exchange(&self.js, &topology.exchange, &self.cfg).await?;
        for q in &topology.queues {
            topology::declare_queue(
                &self.js,
                &topology.exchange,
                q,
                &self.cfg,
                self.many_filters,
            )
            .await?;
        }
        Ok(())
    }

    /// Declare one queue again (after the server lost it).
    pub(crate) async fn redeclare(&self, exchange: &str, spec: &QueueSpec) -> Result<()> {
        let mut topology = Topology::new(exchange);
        topology.add_queue(spec.clone());
        self.declare(&topology).await
    }

    /// Remove a temporary queue's consumers.
    pub(crate) async fn delete_queue(&self, exchange: &str, queue: &str) {
        self.routes.forget(exchange, queue);
        if let Ok(stream) = self.js.get_stream(names::stream_name(exchange)).await {
            for name in [
                topology::bindings_consumer(queue),
                topology::direct_consumer(queue),
            ] {
                let _ = stream.delete_consumer(&name).await;
            }
        }
    }
}

impl NatsTransport {
    /// Connect, waiting up to `outage_timeout` for a server to answer; fails with
    /// [`Error::Unavailable`] when none does.
    pub async fn connect(cfg: NatsConfig) -> Result<Self> {
        let deadline = Instant::now() + cfg.outage_timeout;
        let reconnects = Arc::new(puller::Reconnects::new(0));
        let client = loop {
            let last = match options(&cfg, reconnects.clone())
                .connect(cfg.servers.clone())
                .await
            {
                Ok(c) => break c,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    waited: cfg.outage_timeout,
                    reason: format!(
                        "no NATS server answered at {}: {last}",
                        cfg.servers.join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let info = client.server_info();
        if !info.jetstream {
            return Err(Error::Config(format!(
                "the NATS server at {} runs without JetStream; start it with `-js` (or `jetstream {{}}` in its config)",
                cfg.servers.join(", ")
            )));
        }
        let many_filters = version_at_least(&info.version, 2, 10);
        // The ack of a publish sent into an outage never comes: this bounds how long one is
        // waited for before it is sent again.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .max_ack_inflight(4096)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let shutdown = CancellationToken::new();
        Ok(NatsTransport {
            shared: Arc::new(Shared {
                max_payload: info.max_payload,
                cfg,
                client,
                js,
                many_filters,
                routes: Routes::default(),
                declared: Mutex::new(Vec::new()),
                settlers: Mutex::new(Vec::new()),
                shutdown: shutdown.clone(),
                reconnects,
                closed: AtomicBool::new(false),
            }),
            _guard: Arc::new(DropGuard(shutdown)),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.cfg
    }

    /// The underlying client, for what Herald does not wrap (core NATS request/reply, KV).
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }
}

fn options(cfg: &NatsConfig, reconnects: Arc<puller::Reconnects>) -> async_nats::ConnectOptions {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("{} herald", cfg.service))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)))
                .min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let reconnects = reconnects.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        reconnects.send_modify(|n| *n += 1);
                        herald::telemetry::connection_state(KIND, "client", true);
                        herald::telemetry::reconnected(KIND, "client");
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        herald::telemetry::connection_state(KIND, "client", false);
                        tracing::warn!("lost the NATS connection; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        });
    if let Some((user, password)) = &cfg.user_password {
        o = o.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &cfg.token {
        o = o.token(token.clone());
    }
    if cfg.tls {
        o = o.require_tls(true);
    }
    if let Some(ca) = &cfg.ca_cert {
        o = o.add_root_certificates(ca.into());
    }
    if let Some((cert, key)) = &cfg.client_cert {
        o = o.add_client_certificate(cert.into(), key.into());
    }
    o
}

/// Whether a server version (`2.10.7`) is at least `major.minor`.
fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[async_trait]
impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            priority: false,
            // Checked by the consumer before a message is handed out.
            message_ttl: true,
            max_length: false,
            delayed_redelivery: true,
            ordering: herald::transport::Ordering::Queue,
            dead_letters: true,
            queue_stats: true,
            lists_all_queues: true,
            native_request_reply: false,
        }
    }

    async fn apply_topology(&self, topology: &Topology) -> Result<()> {
        self.shared.check_open()?;
        for q in &topology.queues {
            // Refuse what NATS cannot filter before anything is created.
            topology::filtering(&topology.exchange, q, self.shared.many_filters)?;
            names::check_tokens("queue name", &q.name)?;
        }
        self.shared.declare(topology).await?;
        self.shared.routes.learn(topology);
        let mut declared = lock(&self.shared.declared);
        match declared
            .iter_mut()
            .find(|t| t.exchange == topology.exchange)
        {
            Some(t) => t.merge(topology.clone()),
            None => declared.push(topology.clone()),
        }
        Ok(())
    }

    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()> {
        self.shared.check_open()?;
        let limit = self.shared.max_payload.saturating_sub(4096).max(1);
        let outgoing = |e: &Envelope| -> Result<Outgoing> {
            Ok(Outgoing {
                subject: names::event_subject(exchange, &e.routing_key),
                headers: wire::headers(e, &e.id, self.shared.cfg.cloudevents_headers)?,
                body: e.body.clone(),
            })
        };
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            names::check_tokens("routing key", &e.routing_key)?;
            if e.body.len() > limit {
                return Err(Error::TooLarge {
                    size: e.body.len(),
                    limit,
                });
            }
            // Asking the server (a key the table does not know) is boxed: the future of every
            // publish stays small.
            let routed = !options.require_route
                || self.shared.routes.reaches(exchange, &e.routing_key)
                || Box::pin(
                    self.shared
                        .routes
                        .routable(&self.shared.js, exchange, &e.routing_key),
                )
                .await?;
            if !routed {
                return Err(Error::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: e.routing_key.clone(),
                });
            }
            out.push(outgoing(e)?);
        }
        // One event stored at the first try (the common case) gives its message away rather
        // than keeping a copy for another try; only a failed try builds it again.
        if let [e] = batch {
            if let Some(one) = out.pop() {
                if Box::pin(publish::store_once(&self.shared.js, one)).await {
                    return Ok(());
                }
                out.push(outgoing(e)?);
            }
        }
        let known = lock(&self.shared.declared)
            .iter()
            .any(|t| t.exchange == exchange);
        // Boxed, as the rest of the slow path: the future of every publish stays small.
        let all = publish::store_all(&self.shared.js, out, self.shared.cfg.outage_timeout, |m| {
            if known {
                // Declared here, so the stream exists: it is moving (a restart, an election).
                publish::NoStream::Retry
            } else if options.require_route {
                publish::NoStream::Fail(Error::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: m.subject.clone(),
                })
            } else {
                publish::NoStream::Drop
            }
        });
        Box::pin(all).await
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        self.shared.check_open()?;
        let exchange = lock(&self.shared.declared)
            .iter()
            .find(|t| t.queues.iter().any(|q| q.name == queue.name))
            .map(|t| t.exchange.clone());
        let exchange = match exchange {
            Some(x) => x,
            None => self.find_exchange(&queue.name).await?,
        };
        let filtering = topology::filtering(&exchange, queue, self.shared.many_filters)?;
        // Stop when the caller cancels, or when the transport closes or is dropped.
        let stop = self.shared.shutdown.child_token();
        let forward = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => forward.cancel(),
                _ = forward.cancelled() => {}
            }
        });
        let (settler, rx) = consume::start(ConsumeTask {
            shared: self.shared.clone(),
            spec: queue.clone(),
            exchange,
            filtering,
            prefetch: options.prefetch.max(1),
            cancel: stop,
        });
        let mut settlers = lock(&self.shared.settlers);
        settlers.retain(|s| s.strong_count() > 0);
        settlers.push(Arc::downgrade(&settler));
        Ok(rx.into())
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        Some(self)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        Some(self)
    }

    fn topology_admin(&self) -> Option<&dyn herald::transport::TopologyAdmin> {
        Some(self)
    }

    fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.shutdown.cancel();
        let settlers: Vec<Arc<NatsSettler>> = lock(&self.shared.settlers)
            .drain(..)
            .filter_map(|s| s.upgrade())
            .collect();
        for s in settlers {
            s.release_all().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.client.flush()).await;
        Ok(())
    }
}

impl NatsTransport {
    /// The exchange a queue this handle did not declare belongs to, from the consumers'
    /// records on the server.
    async fn find_exchange(&self, queue: &str) -> Result<String> {
        use futures::TryStreamExt;
        let mut streams = self.shared.js.streams();
        while let Some(info) = streams
            .try_next()
            .await
            .map_err(|e| Error::transport(KIND, format!("listing streams: {e}")))?
        {
            let Some(exchange) = info
                .config
                .description
                .as_deref()
                .and_then(|d| d.strip_prefix("herald exchange "))
            else {
                continue;
            };
            if topology::list_queues(&self.shared.js, exchange)
                .await?
                .iter()
                .any(|q| q.queue == queue)
            {
                return Ok(exchange.to_string());
            }
        }
        Err(Error::Config(format!(
            "queue `{}` is not declared on this NATS server; apply its topology first",
            herald::transport::escape_controls(queue)
        )))
    }
}

/// Opens `nats://` and `tls://` URLs (a comma-separated list is a cluster).
pub struct NatsConnector;

#[async_trait]
impl Connector for NatsConnector {
    fn schemes(&self) -> &'static [&'static str] {
        &["nats", "tls"]
    }

    fn check(&self, url: &str) -> Result<()> {
        NatsConfig::from_url(url, "check").map(|_| ())
    }

    async fn connect(&self, url: &str, service: &str) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(
            NatsTransport::connect(NatsConfig::from_url(url, service)?).await?,
        ))
    }
}

/// Make `nats://` and `tls://` URLs open this transport everywhere Herald takes a broker URL
/// (the bus builder, `herald.toml`, `HERALD_BROKER`). Registering again is harmless.
///
/// ```
/// herald_nats::register();
/// assert!(herald::transport::known_schemes().contains(&"nats"));
/// herald::transport::check_url("nats://127.0.0.1:4222").unwrap();
/// assert!(herald::transport::check_url("nats://h?replicas=0").is_err());
/// ```
pub fn register() {
    herald::transport::register(Arc::new(NatsConnector));
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert!(super::version_at_least("2.10.7", 2, 10));
        assert!(super::version_at_least("2.15.1", 2, 10));
        assert!(!super::version_at_least("2.9.10", 2, 10));
        assert!(super::version_at_least("3.0.0-beta", 2, 10));
    }
}

#[cfg(test)]
mod future_size {
    /// The future of every publish is boxed (the trait is object-safe); kept under glibc's
    /// small-allocation limit (about 1 KiB), it costs no trip to the allocator's slow path.
    #[tokio::test]
    async fn a_publish_future_stays_small() {
        use herald::Transport;
        let cfg = crate::NatsConfig::from_url("nats://127.0.0.1:4222", "size").unwrap();
        let t = crate::NatsTransport::connect(cfg)
            .await
            .expect("the test NATS server");
        let e = herald::Envelope::new("a", 1, "a", "s", Default::default());
        let f = t.publish("x", std::slice::from_ref(&e), Default::default());
        assert!(
            std::mem::size_of_val(&*f) < 1024,
            "{}",
            std::mem::size_of_val(&*f)
        );
    }
}
