//! # Herald
//!
//! Typed events on a broker: event contracts, a bus that publishes and subscribes, a middleware
//! pipeline around handlers (retry, dead-lettering, timeouts, panic isolation, circuit breaking,
//! rate limiting) and transports behind one small trait. This crate has the embedded durable
//! SQLite broker (the default) and an in-memory one; network brokers are crates of their own
//! built on [`transport`]'s public API (`herald-rabbitmq`, `herald-nats`, `herald-kafka`), each
//! registering its URL scheme.
//!
//! See `ARCHITECTURE.md` for the map and `docs/wire-format.md` for what goes on the wire.
#![warn(missing_docs)]

pub mod bus;
pub mod catalog;
pub mod config;
mod context;
pub mod envelope;
pub mod error;
pub mod event;
pub mod handler;
pub mod health;
pub mod middleware;
pub mod pattern;
mod publisher;
pub mod telemetry;
pub mod testing;
pub mod topology;
pub mod trace;
pub mod transport;

pub use bus::{
    BatchOptions, Bus, BusBuilder, ConsumerOptions, MessageOptions, MetricsSnapshot, Priority,
    Publisher, QueueOptions, RequestOptions, SubscribeOptions,
};
pub use config::Config;
pub use context::Context;
pub use envelope::Envelope;
pub use error::{Error, Result};
pub use event::{Event, EventDescriptor};
#[cfg(feature = "derive")]
pub use herald_derive::Event;
pub use middleware::{FailureKind, HandlerError, Pipeline};
pub use topology::{QueueKind, QueueSpec, Topology};
pub use transport::{Delivery, Outcome, Transport};

/// Used by `#[derive(Event)]`; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;

    /// The JSON Schema of `T` as a JSON value.
    #[cfg(feature = "schema")]
    pub fn json_schema<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(feature = "conformance")]
pub mod conformance;
