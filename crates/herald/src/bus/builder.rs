//! [`BusBuilder`]: configuration, the transport, and what every subscription of the bus shares
//! (its default pipeline and the bus-wide layers around it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::request::Requester;
use super::{Bus, BusInner};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::middleware::{Layer, Pipeline, PipelineDefaults};
use crate::publisher::{PublishCore, Publisher};
use crate::telemetry::counters::Metrics;
use crate::telemetry::observe::Observe;
use crate::topology::Topology;
use crate::transport::Transport;

/// Builds a [`Bus`]. Starts from [`Config`]'s defaults (or [`Bus::from_config`]'s file and
/// environment); every call overrides.
///
/// ```
/// use std::time::Duration;
/// use herald::Bus;
/// use herald::middleware::{from_fn, Message, Next, Pipeline, RetryPolicy};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = Bus::builder()
///     .service("billing")
///     .broker("memory://builder-doc")
///     // Every subscription's default pipeline...
///     .pipeline(Pipeline::standard().retry(RetryPolicy::linear(3, Duration::from_millis(200))))
///     // ...and a layer around every subscription's pipeline, as Watermill's router middleware.
///     .layer(from_fn(|msg: Message, next: Next| async move {
///         tracing::debug!(id = %msg.envelope.id, queue = %msg.queue, "received");
///         next.run(msg).await
///     }))
///     .build()
///     .await?;
/// # bus.shutdown().await?;
/// # Ok::<(), herald::Error>(())
/// # }).unwrap();
/// ```
#[derive(Default)]
pub struct BusBuilder {
    config: Config,
    transport: Option<Arc<dyn Transport>>,
    queue_depth_interval: Option<Duration>,
    pipeline: Option<Pipeline>,
    layers: Pipeline,
    observer: Option<Arc<dyn Observe>>,
    namespace: String,
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
    /// The topic exchange events are published to and queues bound on, unless an event or a
    /// queue names another.
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
    /// How long [`Bus::request`] waits for a reply unless told otherwise.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout_ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
        self
    }
    /// Use this transport instead of opening one from the URL.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The pipeline of every subscription that sets none ([`Pipeline::standard`] by default,
    /// with the configured retry policy and handler timeout).
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// A layer around every subscription's pipeline, outside it (like Watermill's router
    /// middleware): it sees each message before any of the subscription's own layers, and the
    /// final decision after them. Layers added first are outermost.
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers = std::mem::take(&mut self.layers).layer(layer);
        self
    }

    /// Sample every queue's depth into `herald_queue_depth{queue,state}` at this interval while
    /// the bus runs (see [`crate::telemetry::spawn_queue_depth_sampler`]).
    pub fn sample_queue_depth(mut self, interval: Duration) -> Self {
        self.queue_depth_interval = Some(interval);
        self
    }

    /// Tell `observer` about every publish, delivery and settlement (the test harness).
    pub(crate) fn observer(mut self, observer: Arc<dyn Observe>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Put `prefix` in front of the name of every queue and exchange this bus declares or
    /// publishes to (the test harness: tests sharing a real broker must not share either).
    pub(crate) fn namespace(mut self, prefix: impl Into<String>) -> Self {
        self.namespace = prefix.into();
        self
    }

    /// Validate the configuration, open the transport (within `connect_timeout_ms` when set)
    /// and declare the exchange.
    pub async fn build(mut self) -> Result<Bus> {
        self.config.validate()?;
        self.config.exchange = format!("{}{}", self.namespace, self.config.exchange);
        let transport = match self.transport {
            Some(t) => t,
            None => connect(&self.config).await?,
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
            observer: self.observer.clone(),
            declared: Mutex::default(),
            namespace: self.namespace.clone(),
        });
        let shutdown = CancellationToken::new();
        if let Some(interval) = self.queue_depth_interval {
            crate::telemetry::spawn_queue_depth_sampler(
                transport.clone(),
                interval,
                shutdown.clone(),
            );
        }
        let defaults = PipelineDefaults {
            retry: self.config.retry.policy(),
            timeout: (self.config.handler_timeout_ms > 0)
                .then(|| Duration::from_millis(self.config.handler_timeout_ms)),
        };
        Ok(Bus {
            inner: Arc::new(BusInner {
                requester: Requester::new(&format!("{}{}", self.namespace, self.config.service)),
                config: self.config,
                transport,
                publisher,
                metrics,
                subscriptions: Mutex::new(Vec::new()),
                shutdown,
                pipeline: self.pipeline.unwrap_or_else(Pipeline::standard),
                layers: self.layers,
                defaults,
                observer: self.observer,
                namespace: self.namespace,
            }),
        })
    }
}

/// Open the configured broker, giving up after `connect_timeout_ms` when it is set.
async fn connect(config: &Config) -> Result<Arc<dyn Transport>> {
    let connecting = crate::transport::connect(&config.broker, &config.service);
    if config.connect_timeout_ms == 0 {
        return connecting.await;
    }
    let limit = Duration::from_millis(config.connect_timeout_ms);
    match tokio::time::timeout(limit, connecting).await {
        Ok(result) => result,
        Err(_) => Err(Error::Unavailable {
            waited: limit,
            reason: format!(
                "no answer from {} (raise connect_timeout_ms / HERALD_CONNECT_TIMEOUT_MS, or check the broker is up)",
                config.broker_redacted()
            ),
        }),
    }
}
