//! The event catalog: every event of a system with its contract, who publishes it, who consumes
//! it, its JSON Schema and an example, rendered as JSON (the shape `GET /api/catalog` serves, see
//! `docs/http-api.md`), an AsyncAPI 3.0 document, one self-contained HTML page, or Markdown.
//!
//! Publishers come from `#[event(publisher = ...)]` and [`Catalog::publisher`]. Consumers are
//! the services declared with `#[event(consumers = [...])]` together with every queue of a
//! [`Topology`] (or a [`Bus`]) whose binding pattern matches the event's routing key, so a
//! consumer subscribed with `course.*` shows up under `course.enrolled` without being declared.
//!
//! ```
//! use herald::catalog::Catalog;
//! use herald::{Event, QueueSpec, Topology};
//! use serde::{Deserialize, Serialize};
//!
//! /// A learner enrolled in a course.
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "course.enrolled", publisher = "course-service")]
//! struct CourseEnrolled { enrollment_id: u64 }
//!
//! let mut topology = Topology::new("herald.events");
//! topology.add_queue(QueueSpec::new("analytics-service.course", "course.*"));
//!
//! let catalog = Catalog::new("herald.events")
//!     .event::<CourseEnrolled>()
//!     .example::<CourseEnrolled>(&CourseEnrolled { enrollment_id: 456 })
//!     .with_topology(&topology);
//!
//! let json = catalog.to_json();
//! let event = &json["events"][0];
//! assert_eq!(event["publishers"][0], "course-service");
//! assert_eq!(event["consumers"][0]["service"], "analytics-service");
//! assert_eq!(event["example"]["enrollment_id"], 456);
//! assert_eq!(catalog.to_asyncapi()["asyncapi"], "3.0.0");
//! assert!(catalog.to_html().contains("course.enrolled"));
//! ```

mod asyncapi;
mod example;
mod html;
mod markdown;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::pattern::topic_matches;
use crate::topology::{QueueSpec, Topology};
use crate::Bus;

pub use example::example_from_schema;

/// The documentation of one system's events. Build it with [`Catalog::new`] and the builder
/// methods, or read one a service exported with [`Catalog::from_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// The topic exchange every event is published to.
    pub exchange: String,
    /// The events, in the order they were added.
    pub events: Vec<CatalogEvent>,
    /// The broker URL the AsyncAPI `servers` are made from (not part of the catalog JSON).
    #[serde(skip)]
    broker: Option<String>,
    /// Queues seen in topologies, with the service that owns each when it is known for sure.
    #[serde(skip)]
    queues: Vec<(Option<String>, QueueSpec)>,
}

/// One event of the catalog: its contract and where it flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEvent {
    /// The event name, e.g. `course.enrolled`.
    pub name: String,
    /// The contract version.
    pub version: u32,
    /// The routing key on the exchange.
    pub routing_key: String,
    /// The Rust type name.
    pub type_name: String,
    /// The type's doc comment.
    #[serde(default)]
    pub description: String,
    /// The services that publish it.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// The services that consume it, each with its queue.
    #[serde(default)]
    pub consumers: Vec<CatalogConsumer>,
    /// The JSON Schema of the body, when the event has one (`#[event(schema)]`).
    #[serde(default)]
    pub schema: Option<Value>,
    /// An example body: registered with [`Catalog::example`], or generated from the schema.
    #[serde(default)]
    pub example: Option<Value>,
}

/// One consuming service of an event. Two are equal when service and queue are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogConsumer {
    /// The service name.
    pub service: String,
    /// Its queue. For a consumer only declared on the event (not seen in a topology) this is the
    /// queue `Bus::subscribe` would use, `<service>.<routing key>`.
    pub queue: String,
    /// True when only `#[event(consumers)]` says so; a topology's queue replaces it.
    #[serde(skip)]
    declared_only: bool,
}

impl PartialEq for CatalogConsumer {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service && self.queue == other.queue
    }
}

impl Eq for CatalogConsumer {}

impl Catalog {
    /// An empty catalog for the events on `exchange`.
    pub fn new(exchange: impl Into<String>) -> Self {
        Catalog {
            exchange: exchange.into(),
            events: Vec::new(),
            broker: None,
            queues: Vec::new(),
        }
    }

    /// Read a catalog from its JSON (what [`Catalog::to_json`], `herald docs --format json` and
    /// `GET /api/catalog` produce). Events without an example get one generated from their schema.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut catalog: Catalog = serde_json::from_str(text).map_err(|e| {
            Error::Config(format!(
                "not a Herald event catalog ({e}); expected the JSON that `herald docs --format json` or GET /api/catalog writes"
            ))
        })?;
        for event in &mut catalog.events {
            if event.example.is_none() {
                event.example = event.schema.as_ref().map(example_from_schema);
            }
        }
        Ok(catalog)
    }

    /// Add event `E`: its descriptor, its JSON Schema if it has one, and an example generated
    /// from that schema. Adding an event twice keeps the first.
    pub fn event<E: Event>(mut self) -> Self {
        let d = E::descriptor();
        if self
            .events
            .iter()
            .any(|e| e.name == d.name && e.version == d.version)
        {
            return self;
        }
        let schema = E::event_schema();
        let mut event = CatalogEvent {
            name: d.name.to_string(),
            version: d.version,
            routing_key: d.routing_key.to_string(),
            type_name: d.type_name.to_string(),
            description: d.description.to_string(),
            publishers: d.publisher.iter().map(|p| p.to_string()).collect(),
            consumers: Vec::new(),
            example: schema.as_ref().map(example_from_schema),
            schema,
        };
        for service in d.consumers {
            event.add_consumer(CatalogConsumer {
                service: service.to_string(),
                queue: format!("{service}.{}", d.routing_key),
                declared_only: true,
            });
        }
        for (service, queue) in &self.queues {
            event.bind_queue(service.as_deref(), queue);
        }
        self.events.push(event);
        self
    }

    /// Declare one more publisher of `E` (besides `#[event(publisher = ...)]`). Adds `E` first if
    /// it is not in the catalog yet.
    pub fn publisher<E: Event>(mut self, service: impl Into<String>) -> Self {
        self = self.event::<E>();
        let service = service.into();
        if let Some(event) = self.find_mut::<E>() {
            if !event.publishers.contains(&service) {
                event.publishers.push(service);
            }
        }
        self
    }

    /// Use `example` as `E`'s example body instead of the one generated from its schema. Adds
    /// `E` first if it is not in the catalog yet. A value that cannot be encoded as JSON leaves
    /// the example as it was (and logs why).
    pub fn example<E: Event>(mut self, example: &E) -> Self {
        self = self.event::<E>();
        match serde_json::to_value(example) {
            Ok(value) => {
                if let Some(event) = self.find_mut::<E>() {
                    event.example = Some(value);
                }
            }
            Err(e) => {
                tracing::warn!(event = E::NAME, error = %e, "example not encodable as JSON; kept the generated one")
            }
        }
        self
    }

    /// Add the consumers a topology implies: every queue with a binding that matches an event's
    /// routing key consumes it. The service is read from the queue name (`<service>.<binding>`,
    /// the name `Bus::subscribe` gives); for a queue named otherwise it is the name's first
    /// dot-separated word (`subscribe_pattern`'s `<service>.<suffix>`), or the whole name when
    /// there is no dot. Use [`Catalog::with_bus`] when the service is known. Temporary queues
    /// (`herald tail`) are skipped.
    pub fn with_topology(mut self, topology: &Topology) -> Self {
        for queue in &topology.queues {
            self.add_queue(None, queue);
        }
        self
    }

    /// Add the consumers of one bus: its subscriptions' queues, under the bus's service name.
    pub fn with_bus(mut self, bus: &Bus) -> Self {
        let service = bus.publisher().service().to_string();
        for queue in &bus.topology().queues {
            self.add_queue(Some(service.clone()), queue);
        }
        self
    }

    /// The broker the system runs on, for the AsyncAPI `servers`: each `amqp://`, `amqps://`,
    /// `nats://` or `kafka://` URL of a cluster list becomes a server (credentials left out); an embedded broker
    /// (`sqlite://`, `memory://`) is not a network server, so it is recorded as the extension
    /// `x-herald-broker` instead.
    /// An empty URL means the default embedded broker, as everywhere else.
    pub fn broker(mut self, url: &str) -> Result<Self> {
        // A catalog documents a broker; the program writing it need not link its transport.
        let documented = ["amqp", "amqps", "nats", "tls", "kafka"];
        match crate::transport::scheme_of(url) {
            Some(s) if documented.contains(&s) => {}
            _ => crate::transport::check_url(url)?,
        }
        let url = match url.trim() {
            "" => format!("sqlite://{}", crate::transport::DEFAULT_SQLITE_PATH),
            url => url.to_string(),
        };
        self.broker = Some(url);
        Ok(self)
    }

    /// The catalog as the JSON of `docs/http-api.md`:
    /// `{"exchange": ..., "events": [{"name", "version", "routing_key", "type_name",
    /// "description", "publishers", "consumers": [{"service", "queue"}], "schema", "example"}]}`.
    pub fn to_json(&self) -> Value {
        // Serializing plain strings, numbers and JSON values cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// An AsyncAPI 3.0.0 document: one channel per routing key (AMQP topic exchange binding),
    /// one per consumer queue, a message per event with its payload schema and CloudEvents
    /// headers, a `send` operation per publisher and a `receive` operation per consumer.
    pub fn to_asyncapi(&self) -> Value {
        asyncapi::document(self, self.broker.as_deref())
    }

    /// One self-contained HTML page (no external assets) with a search box and, per event, its
    /// name, version, routing key, publishers → consumers, description, schema and example.
    pub fn to_html(&self) -> String {
        html::page(self)
    }

    /// The catalog as a Markdown document, one section per event.
    pub fn to_markdown(&self) -> String {
        markdown::document(self)
    }

    fn find_mut<E: Event>(&mut self) -> Option<&mut CatalogEvent> {
        self.events
            .iter_mut()
            .find(|e| e.name == E::NAME && e.version == E::VERSION)
    }

    fn add_queue(&mut self, service: Option<String>, queue: &QueueSpec) {
        if queue.auto_delete {
            return;
        }
        for event in &mut self.events {
            event.bind_queue(service.as_deref(), queue);
        }
        self.queues.push((service, queue.clone()));
    }
}

impl CatalogEvent {
    /// Record `queue` as a consumer when one of its bindings matches this event's routing key.
    fn bind_queue(&mut self, service: Option<&str>, queue: &QueueSpec) {
        let Some(binding) = queue
            .bindings
            .iter()
            .find(|b| topic_matches(b, &self.routing_key))
        else {
            return;
        };
        let service = match service {
            Some(s) => s.to_string(),
            None => service_of_queue(&queue.name, binding),
        };
        self.add_consumer(CatalogConsumer {
            service,
            queue: queue.name.clone(),
            declared_only: false,
        });
    }

    fn add_consumer(&mut self, consumer: CatalogConsumer) {
        if !consumer.declared_only {
            // A queue seen in a topology is better information than the declared guess.
            self.consumers
                .retain(|c| !(c.declared_only && c.service == consumer.service));
        } else if self.consumers.iter().any(|c| c.service == consumer.service) {
            return;
        }
        if !self
            .consumers
            .iter()
            .any(|c| c.service == consumer.service && c.queue == consumer.queue)
        {
            self.consumers.push(consumer);
        }
    }
}

impl std::fmt::Display for Catalog {
    /// A short text summary per event, like [`EventDescriptor`](crate::EventDescriptor)'s:
    /// name, description, publishers, consumers with their queues, routing key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{} v{} ({})", e.name, e.version, e.type_name)?;
            for line in e.description.lines().filter(|l| !l.trim().is_empty()) {
                writeln!(f, "  {line}")?;
            }
            let publishers = if e.publishers.is_empty() {
                "(not declared)".to_string()
            } else {
                e.publishers.join(", ")
            };
            writeln!(f, "  Published by: {publishers}")?;
            if e.consumers.is_empty() {
                writeln!(f, "  Consumed by:  (not declared)")?;
            }
            for (j, c) in e.consumers.iter().enumerate() {
                let label = if j == 0 {
                    "Consumed by: "
                } else {
                    "             "
                };
                writeln!(f, "  {label} {} (queue {})", c.service, c.queue)?;
            }
            writeln!(f, "  Routing key:  {}", e.routing_key)?;
        }
        Ok(())
    }
}

/// The service that owns a queue named `<service>.<suffix>`: the suffix is the binding for
/// `Bus::subscribe` and the last words for `subscribe_pattern`; a queue with an unknown naming
/// is its own service.
fn service_of_queue(queue: &str, binding: &str) -> String {
    if let Some(service) = queue
        .strip_suffix(binding)
        .and_then(|s| s.strip_suffix('.'))
    {
        if !service.is_empty() {
            return service.to_string();
        }
    }
    // `subscribe_pattern` names the queue `<service>.<suffix>`; service names rarely contain
    // dots, so the first word is the best guess.
    match queue.split_once('.') {
        Some((service, _)) if !service.is_empty() => service.to_string(),
        _ => queue.to_string(),
    }
}

#[cfg(test)]
mod tests;
