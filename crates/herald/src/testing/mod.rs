//! Testing a Herald service: run its real bus and handlers in-process and assert what was
//! handled, published and how each message was settled (FastStream's `TestBroker`,
//! RustStream's `TestApp`).
//!
//! A service registers its handlers in a function of its own (`fn register(bus: &Bus)`); a test
//! starts a [`TestApp`] with that function, publishes, waits until everything is
//! [settled](TestApp::settle), and asks what happened:
//!
//! ```
//! use herald::testing::TestApp;
//! use herald::{Bus, Context, Event, HandlerError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "user.registered")]
//! struct UserRegistered { email: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "email.queued")]
//! struct EmailQueued { to: String }
//!
//! // The service's own code.
//! async fn send_welcome(e: UserRegistered, ctx: Context) -> Result<(), HandlerError> {
//!     if !e.email.contains('@') {
//!         return Err(HandlerError::permanent(format!("not an address: {}", e.email)));
//!     }
//!     ctx.publish(&EmailQueued { to: e.email }).await?;
//!     Ok(())
//! }
//! fn register(bus: &Bus) -> herald::Result<()> {
//!     bus.subscribe(send_welcome)
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let app = TestApp::new("notification-service")
//!     // .broker("amqp://guest:guest@127.0.0.1:5672/%2f")   // the same test on RabbitMQ
//!     .start(register)
//!     .await?;
//! app.publish(&UserRegistered { email: "ada@example.com".into() }).await?;
//! app.publish(&UserRegistered { email: "nobody".into() }).await?;
//! app.settle().await?;
//!
//! app.handled::<UserRegistered>().one_where(|e| e.email == "ada@example.com");
//! assert_eq!(app.published::<EmailQueued>().once().to, "ada@example.com");
//! app.dead_lettered::<UserRegistered>().with_reason("not an address");
//! app.stop().await?;
//! # Ok::<(), herald::Error>(())
//! # }).unwrap();
//! ```
//!
//! The broker is a private `memory://` one unless [`TestAppBuilder::broker`] (or the
//! `HERALD_TEST_BROKER` variable) names another: the same test then runs against a real broker.
//! There every queue and exchange the app declares gets a prefix of its own (`test-<id>.`), so
//! tests sharing a broker never share queues, and [`TestApp::stop`] deletes them again where
//! the transport can ([`TopologyAdmin`](crate::transport::TopologyAdmin)). Queue names the
//! harness reports are without the prefix.
//!
//! The service runs alone, so its follow-up events may have no consumer: a test app allows
//! unroutable publishes (configure `allow_unroutable(false)` to check routing too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::bus::{Bus, BusBuilder, MessageOptions};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::transport::queue_statistics;

mod record;

pub use record::{Published, Seen, Settled, Settlement};

use record::{decoded, Recording};

/// The variable that moves every [`TestApp`] without an explicit broker onto a real one.
pub const BROKER_VARIABLE: &str = "HERALD_TEST_BROKER";

/// How long [`TestApp::settle`] waits at most.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Builds a [`TestApp`]; see the [module docs](self).
pub struct TestAppBuilder {
    service: String,
    broker: Option<String>,
    configure: Vec<Box<dyn FnOnce(BusBuilder) -> BusBuilder + Send>>,
}

impl TestAppBuilder {
    /// Run on this broker instead of a private `memory://` one (the one line that moves a test
    /// onto RabbitMQ). Overrides `HERALD_TEST_BROKER`.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker = Some(url.into());
        self
    }

    /// Configure the bus as the service does (exchange, pipeline, bus-wide layers, ...).
    pub fn configure(mut self, f: impl FnOnce(BusBuilder) -> BusBuilder + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Build the bus, let `register` subscribe the service's handlers, and start it.
    pub async fn start(self, register: impl FnOnce(&Bus) -> Result<()>) -> Result<TestApp> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let broker = self
            .broker
            .or_else(|| {
                std::env::var(BROKER_VARIABLE)
                    .ok()
                    .filter(|b| !b.is_empty())
            })
            .unwrap_or_else(|| format!("memory://test-app-{id}"));
        let shared_broker = !broker.starts_with("memory://test-app-");
        let namespace = if shared_broker {
            format!("test-{}.", &id[..10])
        } else {
            String::new()
        };
        let recording = Arc::new(Recording::new(namespace.clone()));
        // The service runs alone: the services that would consume its follow-ups are not there.
        let mut builder = Bus::builder()
            .service(&self.service)
            .broker(&broker)
            .allow_unroutable(true)
            .namespace(namespace.clone())
            .observer(recording.clone());
        for configure in self.configure {
            builder = configure(builder);
        }
        let bus = builder.build().await?;
        if let Err(e) = register(&bus) {
            let _ = bus.shutdown().await;
            return Err(e);
        }
        bus.start().await?;
        Ok(TestApp {
            bus,
            recording,
            broker,
            shared_broker,
        })
    }
}

/// A service's bus running in-process, recording what it published, took and settled. See the
/// [module docs](self).
pub struct TestApp {
    bus: Bus,
    recording: Arc<Recording>,
    broker: String,
    shared_broker: bool,
}

impl TestApp {
    /// A test app for `service` (its queues are `<service>.<routing key>` as in production).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(service: &str) -> TestAppBuilder {
        TestAppBuilder {
            service: service.to_string(),
            broker: None,
            configure: Vec::new(),
        }
    }

    /// The service's bus (publish, request, topology, ...).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The broker URL the app runs on.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Publish an event as the service would (or as another service would, to its queues).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        self.bus.publish(event).await
    }

    /// Publish with options (subject, priority, exchange, ...).
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: MessageOptions,
    ) -> Result<String> {
        self.bus.publish_with(event, options).await
    }

    /// Wait until nothing is left to do: no message ready, delayed for a retry or in a handler
    /// on any of the app's queues, and nothing new recorded for a moment. Fails with
    /// [`Error::Timeout`] after 30 s.
    pub async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let (mut quiet, mut last) = (0, usize::MAX);
        loop {
            let busy = self.recording.in_flight() > 0 || self.waiting().await? > 0;
            let now = self.recording.len();
            if !busy && now == last {
                quiet += 1;
                // Five quiet looks 20 ms apart: a delivery a broker is handing over now shows.
                if quiet >= 5 {
                    return Ok(());
                }
            } else {
                quiet = 0;
                last = now;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(SETTLE_LIMIT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (up to 30 s) until `done` holds, e.g. `|app| app.handled::<E>().len() == 3`.
    pub async fn wait_until(&self, done: impl Fn(&TestApp) -> bool) -> Result<()> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while !done(self) {
            if Instant::now() > deadline {
                return Err(Error::Timeout(SETTLE_LIMIT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Messages ready, delayed or delivered and unsettled on the app's queues, where the
    /// transport can count them.
    async fn waiting(&self) -> Result<u64> {
        let Ok(stats) = queue_statistics(&**self.bus.transport()) else {
            return Ok(0);
        };
        let names: Vec<String> = self
            .bus
            .topologies()
            .into_iter()
            .flat_map(|t| t.queues.into_iter().map(|q| q.name))
            .collect();
        Ok(stats
            .stats_of(&names)
            .await?
            .iter()
            .map(|s| s.ready.unwrap_or(0) + s.delayed.unwrap_or(0) + s.in_flight.unwrap_or(0))
            .sum())
    }

    /// Events of type `E` a handler handled (acknowledged), each delivery once.
    pub fn handled<E: Event>(&self) -> Seen<E> {
        self.settled_as::<E>("handled", |s| matches!(s, Settlement::Acked))
    }

    /// Events of type `E` moved to the dead letters, with their reasons.
    pub fn dead_lettered<E: Event>(&self) -> Seen<E> {
        self.settled_as::<E>("dead-lettered", |s| {
            matches!(s, Settlement::DeadLettered { .. })
        })
    }

    /// Deliveries of `E` that failed and were scheduled for another attempt, with the reasons.
    pub fn retried<E: Event>(&self) -> Seen<E> {
        self.settled_as::<E>("retried", |s| matches!(s, Settlement::Retried { .. }))
    }

    /// Events of type `E` the app published (the test's own publishes included).
    pub fn published<E: Event + DeserializeOwned>(&self) -> Seen<E> {
        let envelopes = self
            .recording
            .published()
            .into_iter()
            .map(|p| (p.envelope, None));
        Seen::new(format!("{} published", E::NAME), decoded::<E>(envelopes))
    }

    /// Every settlement, in order.
    pub fn settlements(&self) -> Vec<Settled> {
        self.recording.settled()
    }

    /// Every publish, in order.
    pub fn publishes(&self) -> Vec<Published> {
        self.recording.published()
    }

    fn settled_as<E: Event>(&self, what: &str, keep: impl Fn(&Settlement) -> bool) -> Seen<E> {
        let envelopes =
            self.recording
                .settled()
                .into_iter()
                .filter(|s| keep(&s.settlement))
                .map(|s| {
                    let reason = match s.settlement {
                        Settlement::Retried { reason }
                        | Settlement::DeadLettered { reason, .. } => Some(reason),
                        _ => None,
                    };
                    (s.envelope, reason)
                });
        Seen::new(format!("{} {what}", E::NAME), decoded::<E>(envelopes))
    }

    /// Shut the bus down; on a shared broker, delete the queues and exchanges it declared where
    /// the transport can.
    pub async fn stop(self) -> Result<()> {
        let topologies = self.bus.topologies();
        let service = self.bus.config().service.clone();
        self.bus.shutdown().await?;
        if self.shared_broker {
            let transport = crate::transport::connect(&self.broker, &service).await?;
            if let Some(admin) = transport.topology_admin() {
                for t in &topologies {
                    admin.delete_topology(t).await?;
                }
            }
            transport.close().await?;
        }
        Ok(())
    }
}
