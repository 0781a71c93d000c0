//! The bus: publish typed events, subscribe plain `async fn` handlers, run consumers, shut down
//! gracefully.
//!
//! ```
//! use herald::{Bus, Context, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "user.registered")]
//! struct UserRegistered { user_id: u64, email: String }
//!
//! async fn send_welcome(event: UserRegistered, ctx: Context) -> Result<(), herald::HandlerError> {
//!     println!("welcome {} (flow {})", event.email, ctx.correlation_id());
//!     Ok(())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus = Bus::builder()
//!     .service("notification-service")
//!     .broker("memory://docs-example")
//!     .build()
//!     .await?;
//! bus.subscribe(send_welcome)?;
//! bus.start().await?;
//! bus.publish(&UserRegistered { user_id: 1, email: "a@example.com".into() }).await?;
//! bus.shutdown().await?;
//! # Ok::<(), herald::Error>(())
//! # }).unwrap();
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{Decoding, Handler, IntoHandlerResult};
use crate::middleware::Handle;
use crate::pattern::validate_pattern;
use crate::topology::Topology;
use crate::transport::Transport;

mod consumer;
pub mod metrics;
mod publisher;
mod subscription;

pub use metrics::{Metrics, MetricsSnapshot};
pub use publisher::{MessageOptions, Publisher};
pub use subscription::SubscribeOptions;

use consumer::ConsumerSpec;
use publisher::PublishCore;

/// Builds a [`Bus`]. Starts from [`Config::load`]-style defaults; every call overrides.
#[derive(Default)]
pub struct BusBuilder {
    config: Config,
    transport: Option<Arc<dyn Transport>>,
    queue_depth_interval: Option<Duration>,
}

impl BusBuilder {
    /// Start from a loaded configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// This service's name (CloudEvents source, queue-name prefix).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.config.service = name.into();
        self
    }
    /// The broker URL: `sqlite://path`, `memory://`, `amqp://...`.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.config.broker = url.into();
        self
    }
    /// The topic exchange.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.config.exchange = name.into();
        self
    }
    /// Default prefetch per subscription.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.config.prefetch = n;
        self
    }
    /// Default concurrency per subscription.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }
    /// Largest body accepted.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.config.max_message_bytes = n;
        self
    }
    /// Allow publishing events no queue receives.
    pub fn allow_unroutable(mut self, allow: bool) -> Self {
        self.config.allow_unroutable = allow;
        self
    }
    /// Use this transport instead of opening one from the URL.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sample every queue's depth into `herald_queue_depth{queue,state}` at this interval while
    /// the bus runs (see [`crate::telemetry::spawn_queue_depth_sampler`]).
    pub fn sample_queue_depth(mut self, interval: Duration) -> Self {
        self.queue_depth_interval = Some(interval);
        self
    }

    /// Validate the configuration, open the transport and declare the exchange.
    pub async fn build(self) -> Result<Bus> {
        self.config.validate()?;
        let transport = match self.transport {
            Some(t) => t,
            None => crate::transport::connect(&self.config.broker, &self.config.service).await?,
        };
        transport
            .apply_topology(&Topology::new(&self.config.exchange))
            .await?;
        let metrics = Arc::new(Metrics::default());
        let publisher = Publisher::new(PublishCore {
            transport: transport.clone(),
            exchange: self.config.exchange.clone(),
            service: self.config.service.clone(),
            max_message_bytes: self.config.max_message_bytes,
            allow_unroutable: self.config.allow_unroutable,
            metrics: metrics.clone(),
            telemetry: Default::default(),
        });
        let shutdown = CancellationToken::new();
        if let Some(interval) = self.queue_depth_interval {
            crate::telemetry::spawn_queue_depth_sampler(
                transport.clone(),
                interval,
                shutdown.clone(),
            );
        }
        Ok(Bus {
            inner: Arc::new(BusInner {
                config: self.config,
                transport,
                publisher,
                metrics,
                subscriptions: Mutex::new(Vec::new()),
                shutdown,
            }),
        })
    }
}

/// The bus. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    config: Config,
    transport: Arc<dyn Transport>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    subscriptions: Mutex<Vec<Subscription>>,
    shutdown: CancellationToken,
}

struct Subscription {
    spec: Arc<ConsumerSpec>,
    task: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// A builder with default configuration.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// A builder starting from `herald.toml` and `HERALD_*` variables.
    pub fn from_config() -> Result<BusBuilder> {
        Ok(BusBuilder::default().config(Config::load(None)?))
    }

    /// The publisher (also available inside handlers through `Context`).
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Publish one event; returns its id once durably accepted.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        self.inner.publisher.publish(event).await
    }

    /// Publish one event with per-message options (priority, TTL, subject, ...).
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: MessageOptions,
    ) -> Result<String> {
        self.inner.publisher.publish_with(event, options).await
    }

    /// Publish several events at once (all or nothing).
    pub async fn publish_batch<E: Event>(&self, events: &[E]) -> Result<Vec<String>> {
        self.inner.publisher.publish_batch(events).await
    }

    /// Subscribe `handler` to event `E` with default options, on queue `<service>.<event name>`
    /// (version 2 and above: `<service>.<event name>.v<N>`). Subscribers in the same service
    /// compete for messages; different services each get every event.
    pub fn subscribe<E, H, Args>(&self, handler: H) -> Result<()>
    where
        E: Event,
        H: Handler<E, Args>,
        Args: 'static,
    {
        self.subscribe_with(handler, SubscribeOptions::default())
    }

    /// Subscribe with options.
    pub fn subscribe_with<E, H, Args>(&self, handler: H, options: SubscribeOptions) -> Result<()>
    where
        E: Event,
        H: Handler<E, Args>,
        Args: 'static,
    {
        let queue = options
            .queue
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.inner.config.service, E::ROUTING_KEY));
        let expected = format!(
            "`{}` v{} ({})",
            E::NAME,
            E::VERSION,
            std::any::type_name::<E>()
        );
        let mut options = options;
        if options.validate_schema && options.schema.is_none() {
            let schema = E::event_schema().ok_or_else(|| {
                Error::Config(format!(
                    "validate_schema on `{}`, but the event has no schema: add #[event(schema)] and derive schemars::JsonSchema",
                    E::NAME
                ))
            })?;
            options.schema = Some(crate::middleware::SchemaLayer::new(&schema)?);
        }
        let decoding: Arc<dyn Handle> = Arc::new(Decoding::<E, H, Args>::new(
            handler,
            self.inner.publisher.clone(),
            expected,
        ));
        self.register(queue, vec![E::ROUTING_KEY.to_string()], decoding, options)
    }

    /// Subscribe to a routing-key pattern (`*` one word, `#` any number) with a payload type of
    /// your choosing, for messages from non-Herald publishers, e.g. `{"event_type": ...,
    /// "data": {...}}` from a pika client. The queue is `<service>.<queue_suffix>`.
    pub fn subscribe_pattern<P, H, Args>(
        &self,
        queue_suffix: &str,
        pattern: &str,
        handler: H,
        options: SubscribeOptions,
    ) -> Result<()>
    where
        P: DeserializeOwned + Send + 'static,
        H: Handler<P, Args>,
        Args: 'static,
    {
        let expected = format!("{} (pattern `{pattern}`)", std::any::type_name::<P>());
        let decoding: Arc<dyn Handle> = Arc::new(Decoding::<P, H, Args>::new(
            handler,
            self.inner.publisher.clone(),
            expected,
        ));
        self.register_pattern(queue_suffix, pattern, decoding, options)
    }

    /// Subscribe to a routing-key pattern with a function that takes every message as it
    /// arrived, whatever its body: nothing is decoded, so nothing is dead-lettered for not being
    /// JSON. For observers and bridges (`herald tail`, the dashboard's live stream); the body is
    /// `ctx.envelope().body`. The queue is `<service>.<queue_suffix>`.
    ///
    /// ```
    /// # async fn run() -> herald::Result<()> {
    /// let bus = herald::Bus::builder().broker("memory://").build().await?;
    /// bus.subscribe_raw("audit", "#", |ctx: herald::Context| async move {
    ///     let e = ctx.envelope();
    ///     println!("{} {} ({} bytes)", e.routing_key, e.id, e.body.len());
    /// }, herald::SubscribeOptions::new())?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe_raw<H, Fut, R>(
        &self,
        queue_suffix: &str,
        pattern: &str,
        handler: H,
        options: SubscribeOptions,
    ) -> Result<()>
    where
        H: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        let undecoded: Arc<dyn Handle> = Arc::new(crate::handler::Undecoded::new(
            handler,
            self.inner.publisher.clone(),
        ));
        self.register_pattern(queue_suffix, pattern, undecoded, options)
    }

    /// Register a pattern subscription on `<service>.<queue_suffix>` (or the queue the options
    /// name), once the pattern is known to be valid.
    fn register_pattern(
        &self,
        queue_suffix: &str,
        pattern: &str,
        innermost: Arc<dyn Handle>,
        options: SubscribeOptions,
    ) -> Result<()> {
        validate_pattern(pattern).map_err(Error::Config)?;
        let queue = options
            .queue
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.inner.config.service, queue_suffix));
        self.register(queue, vec![pattern.to_string()], innermost, options)
    }

    fn register(
        &self,
        queue: String,
        bindings: Vec<String>,
        decoding: Arc<dyn Handle>,
        options: SubscribeOptions,
    ) -> Result<()> {
        let config = &self.inner.config;
        let timeout = (config.handler_timeout_ms > 0)
            .then(|| Duration::from_millis(config.handler_timeout_ms));
        let spec = Arc::new(ConsumerSpec {
            queue: options.queue_spec(queue.clone(), bindings),
            pipeline: options.build_pipeline(decoding, timeout),
            prefetch: options.prefetch.unwrap_or(config.prefetch),
            concurrency: options.concurrency.unwrap_or(config.concurrency),
            max_message_bytes: config.max_message_bytes,
        });
        let mut subs = lock(&self.inner.subscriptions);
        if subs.iter().any(|s| s.spec.queue.name == queue) {
            return Err(Error::DuplicateSubscription(queue));
        }
        subs.push(Subscription { spec, task: None });
        Ok(())
    }

    /// The topology this bus needs: its exchange and every subscription's queue.
    pub fn topology(&self) -> Topology {
        let mut t = Topology::new(&self.inner.config.exchange);
        for s in lock(&self.inner.subscriptions).iter() {
            t.add_queue(s.spec.queue.clone());
        }
        t
    }

    /// Declare the topology and start every subscription not yet running. Call again after
    /// adding subscriptions to start those.
    pub async fn start(&self) -> Result<()> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let topology = self.topology();
        check_supported(&topology, &*self.inner.transport)?;
        self.inner.transport.apply_topology(&topology).await?;
        let mut subs = lock(&self.inner.subscriptions);
        for s in subs.iter_mut().filter(|s| s.task.is_none()) {
            s.task = Some(tokio::spawn(consumer::run(
                s.spec.clone(),
                self.inner.transport.clone(),
                self.inner.metrics.clone(),
                self.inner.shutdown.clone(),
            )));
        }
        Ok(())
    }

    /// Graceful shutdown: stop taking messages, let in-flight handlers finish (up to the
    /// configured grace period), give back what was buffered, close the transport.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.subscriptions)
            .iter_mut()
            .filter_map(|s| s.task.take())
            .collect();
        let grace = Duration::from_millis(self.inner.config.shutdown_grace_ms);
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "handlers still running after the shutdown grace period; their messages will be redelivered");
        }
        self.inner.transport.close().await
    }

    /// Run until Ctrl-C / SIGTERM, then shut down gracefully.
    pub async fn run_until_signal(&self) -> Result<()> {
        self.start().await?;
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        self.shutdown().await
    }

    /// Counters of what this bus published and handled.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// The transport (dead letters, stats, health).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Consumer tasks still running, and how many were started (for health checks).
    pub fn consumers_running(&self) -> (usize, usize) {
        let subs = lock(&self.inner.subscriptions);
        let started = subs.iter().filter_map(|s| s.task.as_ref());
        let (mut running, mut total) = (0, 0);
        for task in started {
            total += 1;
            running += usize::from(!task.is_finished());
        }
        (running, total)
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// Refuse queue options the transport cannot honour, rather than run without them.
fn check_supported(topology: &Topology, transport: &dyn Transport) -> Result<()> {
    let caps = transport.capabilities();
    for q in &topology.queues {
        let lacking = if q.max_priority.is_some() && !caps.priority {
            Some("priority queues")
        } else if q.max_length.is_some() && !caps.max_length {
            Some("queue length limits")
        } else if q.message_ttl.is_some() && !caps.message_ttl {
            Some("message TTL")
        } else {
            None
        };
        if let Some(what) = lacking {
            return Err(Error::Unsupported {
                transport: transport.kind(),
                capability: format!("{what} (asked for on queue `{}`)", q.name),
            });
        }
    }
    Ok(())
}

/// Wait for Ctrl-C or SIGTERM (a service manager stopping the process), as
/// [`Bus::run_until_signal`] does; for programs that run more than a bus until then.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
