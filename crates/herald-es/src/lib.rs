//! # herald-es
//!
//! Event sourcing, CQRS projections and sagas for Herald, atomic with the outbox, on PostgreSQL
//! ([`postgres`]) and SQLite ([`sqlite`]).
//!
//! - **Event store** ([`EventStore`]): streams per aggregate, appends with an expected version
//!   (a conflict is [`Error::Conflict`]), a global order readers never skip in, events that are
//!   Herald events with their envelope (id, correlation, causation, traceparent) stored, and
//!   every append staged in the outbox *in the same transaction*: the store and the bus never
//!   disagree. Snapshots every N events; [`Upcasters`] turn old event versions into the current
//!   one as they are read.
//! - **Aggregates** ([`Aggregate`], [`Repository`]): plain Rust; `apply(&event)` and
//!   `handle(&command)`; loading is snapshot + later events; a command is retried on conflict.
//! - **Projections** ([`projection`]): read models fed from the store (catch-up, then live) or
//!   the bus, their checkpoint written in the read model's own transaction; lag as metrics and a
//!   health component; rebuild on request.
//! - **Sagas** ([`saga`]): typed state machines correlated by an id from their events, state
//!   saved with optimistic concurrency, their commands staged in the outbox in the same
//!   transaction, durable timeouts that fire once after a restart, compensation, stuck instances
//!   listed.
//!
//! The user guide with a worked example is `docs/event-sourcing.md`.
//!
//! ```
//! use std::sync::Arc;
//! use herald_es::{open, EventStore};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}", dir.path().join("es.db").display());
//! let db = open(&url, "order-service", herald_es::Upcasters::new()).await?;
//! assert_eq!(db.events().service(), "order-service");
//! # Ok::<(), herald_es::Error>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs)]

pub mod aggregate;
mod error;
pub mod event_set;
pub mod projection;
mod recorded;
pub mod saga;
mod store;
pub mod telemetry;
mod upcast;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;

pub use aggregate::{Aggregate, Executed, Loaded, Repository};
pub use error::{BoxError, CommandError, Error, Result};
pub use event_set::EventSet;
pub use recorded::{Checkpoint, Metadata, RecordedEvent, STREAM_VERSION_HEADER};
pub use store::{Appended, Backlog, EventStore, ExpectedVersion, ProjectionInfo, Snapshot};
pub use upcast::Upcasters;

/// A store opened from a URL: the same database as an event store and as a saga store.
#[derive(Clone)]
pub enum Database {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(Arc<postgres::PgEventStore>),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<sqlite::SqliteEventStore>),
}

impl Database {
    /// As an event store.
    pub fn events(&self) -> Arc<dyn EventStore> {
        match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(s) => s.clone(),
            #[cfg(feature = "sqlite")]
            Database::Sqlite(s) => s.clone(),
        }
    }

    /// As a saga store.
    pub fn sagas(&self) -> Arc<dyn saga::SagaStore> {
        match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(s) => s.clone(),
            #[cfg(feature = "sqlite")]
            Database::Sqlite(s) => s.clone(),
        }
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Database::Sqlite(_) => "sqlite",
        }
    }
}

/// Open (and migrate) a store from a URL: `sqlite://PATH`, or PostgreSQL as
/// `postgres://...`, `postgresql://...` or a libpq conninfo (`host=... dbname=...`). A
/// PostgreSQL store lives in schema `public` unless the URL ends in `#SCHEMA`
/// (`postgres://postgres@127.0.0.1/app#orders`). For more settings use
/// [`postgres::PgEventStore::builder`].
pub async fn open(url: &str, service: &str, upcasters: Upcasters) -> Result<Database> {
    let (url, schema) = match url.rsplit_once('#') {
        Some((u, s)) if !s.is_empty() => (u, Some(s)),
        _ => (url, None),
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        #[cfg(feature = "sqlite")]
        {
            let store = sqlite::SqliteEventStore::open(path, service)?.with_upcasters(upcasters);
            return Ok(Database::Sqlite(Arc::new(store)));
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(Error::Url(format!(
            "{path} (built without the sqlite feature)"
        )));
    }
    let postgres = url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.contains("host=")
        || url.contains("dbname=");
    if postgres {
        #[cfg(feature = "postgres")]
        {
            let store = postgres::PgEventStore::builder(url)
                .schema(schema.unwrap_or("public"))
                .service(service)
                .upcasters(upcasters)
                .connect()
                .await?;
            return Ok(Database::Postgres(Arc::new(store)));
        }
    }
    Err(Error::Url(url.to_string()))
}
