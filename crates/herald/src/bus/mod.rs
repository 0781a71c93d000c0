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
use crate::handler::{BatchDecoding, Decoding, Handler, IntoBatchResult, IntoHandlerResult};
use crate::middleware::{Handle, Layer, Pipeline, PipelineDefaults};
use crate::pattern::validate_pattern;
use crate::telemetry::observe::Observe;
use crate::topology::Topology;
use crate::transport::Transport;

mod builder;
mod consumer;
mod options;
mod request;

pub use crate::publisher::{MessageOptions, Priority, Publisher};
pub use crate::telemetry::counters as metrics;
pub use crate::telemetry::counters::{Metrics, MetricsSnapshot};
pub use builder::BusBuilder;
pub use consumer::BatchOptions;
pub use options::{ConsumerOptions, KeyOf, QueueOptions, SubscribeOptions};
pub use request::RequestOptions;

use consumer::ConsumerSpec;
use options::SchemaCheck;
use request::Requester;

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
    /// The pipeline of subscriptions that set none.
    pipeline: Pipeline,
    /// Bus-wide layers, around every subscription's pipeline.
    layers: Pipeline,
    defaults: PipelineDefaults,
    observer: Option<Arc<dyn Observe>>,
    requester: Requester,
    /// In front of every queue and exchange name (empty but in the test harness).
    namespace: String,
}

struct Subscription {
    spec: Arc<ConsumerSpec>,
    /// The exchange its queue is bound on.
    exchange: String,
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

    /// Publish one event with per-message options (priority, TTL, subject, exchange, ...).
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

    /// Subscribe with options: the queue, the consumer, the pipeline (see [`SubscribeOptions`]).
    pub fn subscribe_with<E, H, Args>(&self, handler: H, options: SubscribeOptions) -> Result<()>
    where
        E: Event,
        H: Handler<E, Args>,
        Args: 'static,
    {
        let queue = format!("{}.{}", self.inner.config.service, E::ROUTING_KEY);
        let decoding: Arc<dyn Handle> = Arc::new(Decoding::<E, H, Args>::new(
            handler,
            self.inner.publisher.clone(),
            expected::<E>(),
        ));
        let innermost = with_schema(decoding, &options.consumer.schema, || {
            E::event_schema().ok_or_else(|| {
                Error::Config(format!(
                    "validate_schema on `{}`, but the event has no schema: add #[event(schema)] and derive schemars::JsonSchema",
                    E::NAME
                ))
            })
        })?;
        self.register(
            queue,
            vec![E::ROUTING_KEY.to_string()],
            innermost,
            options,
            None,
        )
    }

    /// Subscribe a batch handler: `async fn(Vec<E>)`, called with up to `batch`'s size of
    /// messages at once (or what came within its wait of the first). Each message is settled on
    /// its own: the handler's verdict for it (one for all, or per message with
    /// [`BatchResult`](crate::handler::BatchResult)) goes through the subscription's pipeline,
    /// so a failed message is retried or dead-lettered alone. The queue is as for
    /// [`subscribe`](Self::subscribe); `concurrency` is the number of batches in flight.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::{BatchOptions, Bus, Event, HandlerError, SubscribeOptions};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    /// #[event(name = "listing.updated")]
    /// struct ListingUpdated { id: u64, title: String }
    ///
    /// async fn index_all(listings: Vec<ListingUpdated>) -> Result<(), HandlerError> {
    ///     // One bulk request to the search index for the whole batch.
    ///     println!("indexing {} listings", listings.len());
    ///     Ok(())
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = Bus::builder().service("search").broker("memory://batch-doc").build().await?;
    /// bus.subscribe_batch(index_all, BatchOptions::new(500, Duration::from_millis(100)), SubscribeOptions::new())?;
    /// # bus.shutdown().await?;
    /// # Ok::<(), herald::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn subscribe_batch<E, H, Fut, R>(
        &self,
        handler: H,
        batch: BatchOptions,
        options: SubscribeOptions,
    ) -> Result<()>
    where
        E: Event,
        H: Fn(Vec<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoBatchResult,
    {
        if !matches!(options.consumer.schema, SchemaCheck::None) {
            return Err(Error::Config(format!(
                "schema validation is not available on batch subscriptions (`{}`): validate in the handler, or subscribe one at a time",
                E::NAME
            )));
        }
        let queue = format!("{}.{}", self.inner.config.service, E::ROUTING_KEY);
        let batching = consumer::Batching {
            max_size: batch.max_size,
            max_wait: batch.max_wait,
            run: Arc::new(BatchDecoding::<E, H>::new(handler, expected::<E>())),
        };
        self.register(
            queue,
            vec![E::ROUTING_KEY.to_string()],
            Arc::new(consumer::Verdict),
            options,
            Some(batching),
        )
    }

    /// Subscribe to a routing-key pattern (`*` one word, `#` any number) with a payload type of
    /// your choosing, for messages from non-Herald publishers, e.g. `{"event_type": ...,
    /// "data": {...}}` from a pika client. The queue is `<service>.<queue_suffix>` unless the
    /// options name one.
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
    /// `ctx.envelope().body`. The queue is `<service>.<queue_suffix>` unless the options name
    /// one.
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
        let innermost = with_schema(innermost, &options.consumer.schema, || {
            Err(Error::Config(format!(
                "validate_schema needs an event type; pattern `{pattern}` has none: give the schema with ConsumerOptions::schema"
            )))
        })?;
        let queue = format!("{}.{}", self.inner.config.service, queue_suffix);
        self.register(queue, vec![pattern.to_string()], innermost, options, None)
    }

    /// Build the subscription's pipeline around `innermost` and register its consumer (taking
    /// messages in batches when `batch` says so). `default_queue` and `default_bindings` apply
    /// unless the queue options name others.
    fn register(
        &self,
        default_queue: String,
        default_bindings: Vec<String>,
        innermost: Arc<dyn Handle>,
        options: SubscribeOptions,
        batch: Option<consumer::Batching>,
    ) -> Result<()> {
        let inner = &self.inner;
        let config = &inner.config;
        let queue_options = &options.queue;
        let name = format!(
            "{}{}",
            inner.namespace,
            queue_options.name.as_deref().unwrap_or(&default_queue)
        );
        for key in &queue_options.bindings {
            validate_pattern(key).map_err(Error::Config)?;
        }
        let pipeline = Pipeline::around(
            &inner.layers,
            options.pipeline.as_ref().unwrap_or(&inner.pipeline),
        );
        let built = pipeline.build(innermost, &inner.defaults);
        let queue = queue_options.spec(name, default_bindings, built.retry_delays);
        let exchange = match &queue_options.exchange {
            Some(x) => format!("{}{x}", inner.namespace),
            None => config.exchange.clone(),
        };
        let consumer = &options.consumer;
        let concurrency = consumer.concurrency.unwrap_or(config.concurrency);
        let mut prefetch = consumer.prefetch.unwrap_or(config.prefetch);
        if let Some(b) = &batch {
            // A batch can only fill from what the transport hands out at once.
            prefetch = prefetch.max(b.max_size.saturating_mul(concurrency));
        }
        let spec = Arc::new(ConsumerSpec {
            queue,
            pipeline: built.handle,
            readiness: built.readiness,
            prefetch,
            concurrency,
            key: consumer.key,
            max_message_bytes: config.max_message_bytes,
            observer: inner.observer.clone(),
            batch,
        });
        let mut subs = lock(&inner.subscriptions);
        if subs.iter().any(|s| s.spec.queue.name == spec.queue.name) {
            return Err(Error::DuplicateSubscription(spec.queue.name.clone()));
        }
        subs.push(Subscription {
            spec,
            exchange,
            task: None,
        });
        Ok(())
    }

    /// The topology on the bus's exchange: its queues and their bindings. A bus whose queues
    /// are bound on other exchanges too has one topology per exchange: see
    /// [`topologies`](Self::topologies).
    pub fn topology(&self) -> Topology {
        self.topologies()
            .into_iter()
            .next()
            .unwrap_or_else(|| Topology::new(&self.inner.config.exchange))
    }

    /// Everything this bus declares, one topology per exchange: the bus's own first, then each
    /// other exchange a subscription's queue is bound on.
    pub fn topologies(&self) -> Vec<Topology> {
        let mut out = vec![Topology::new(&self.inner.config.exchange)];
        for s in lock(&self.inner.subscriptions).iter() {
            let at = match out.iter().position(|t| t.exchange == s.exchange) {
                Some(i) => i,
                None => {
                    out.push(Topology::new(&s.exchange));
                    out.len() - 1
                }
            };
            out[at].add_queue(s.spec.queue.clone());
        }
        out
    }

    /// Declare the topology and start every subscription not yet running. Call again after
    /// adding subscriptions to start those.
    pub async fn start(&self) -> Result<()> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let topologies = self.topologies();
        for topology in &topologies {
            check_supported(topology, &*self.inner.transport)?;
        }
        for topology in &topologies {
            self.inner.transport.apply_topology(topology).await?;
        }
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
        let mut tasks: Vec<JoinHandle<()>> = lock(&self.inner.subscriptions)
            .iter_mut()
            .filter_map(|s| s.task.take())
            .collect();
        tasks.extend(self.inner.requester.take_task());
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

/// What a body should decode to, for decode errors: "`course.enrolled` v1 (CourseEnrolled)".
fn expected<E: Event>() -> String {
    format!(
        "`{}` v{} ({})",
        E::NAME,
        E::VERSION,
        std::any::type_name::<E>()
    )
}

/// `handle` with the schema check of the consumer options in front of it (always innermost:
/// validation belongs right before decoding). `of_event` gives the event's own schema.
fn with_schema(
    handle: Arc<dyn Handle>,
    check: &SchemaCheck,
    of_event: impl FnOnce() -> Result<serde_json::Value>,
) -> Result<Arc<dyn Handle>> {
    Ok(match check {
        SchemaCheck::None => handle,
        SchemaCheck::Given(schema) => schema.layer(handle),
        SchemaCheck::OfEvent => crate::middleware::SchemaLayer::new(&of_event()?)?.layer(handle),
    })
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
