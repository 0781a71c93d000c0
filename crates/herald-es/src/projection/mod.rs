//! CQRS projections: read models fed from the event store (catch-up from a checkpoint, then
//! live) or from the bus, with the checkpoint written **in the read model's own transaction**:
//! a crash before the commit leaves neither the changes nor the checkpoint, so no event is applied
//! twice and none is skipped.
//!
//! Write the read model against your database ([`PgProjection`](crate::postgres::PgProjection)
//! or [`SqliteProjection`](crate::sqlite::SqliteProjection)), wrap it in its database's
//! [`Projector`], and run it with a [`ProjectionRunner`]. The runner publishes its lag as metrics
//! (`herald_es_projection_lag_events`, `herald_es_projection_lag_seconds`) and as a health
//! component ([`ProjectionHealth`]); `herald projections rebuild NAME` asks it to rebuild from
//! the first event.
//!
//! ```
//! use std::sync::Arc;
//! use herald_es::projection::ProjectionRunner;
//! use herald_es::sqlite::{SqliteEventStore, SqliteProjection, SqliteProjector};
//! use herald_es::{BoxError, EventStore, ExpectedVersion, RecordedEvent};
//!
//! /// Counts events per type.
//! struct EventCounts;
//!
//! impl SqliteProjection for EventCounts {
//!     fn name(&self) -> &str { "event_counts" }
//!     fn setup(&self, db: &rusqlite::Connection) -> Result<(), BoxError> {
//!         db.execute_batch("CREATE TABLE IF NOT EXISTS event_counts (event_type TEXT PRIMARY KEY, n INTEGER NOT NULL)")?;
//!         Ok(())
//!     }
//!     fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &RecordedEvent) -> Result<(), BoxError> {
//!         tx.execute("INSERT INTO event_counts VALUES (?1, 1) ON CONFLICT (event_type) DO UPDATE SET n = n + 1",
//!             [e.event_type()])?;
//!         Ok(())
//!     }
//!     fn reset(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), BoxError> {
//!         tx.execute("DELETE FROM event_counts", [])?;
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(SqliteEventStore::open(dir.path().join("es.db"), "svc")?);
//! let e = herald::Envelope::new("thing.done", 1, "thing.done", "svc", bytes::Bytes::from_static(b"{}"));
//! store.append("thing-1", ExpectedVersion::NoStream, vec![e]).await?;
//! let runner = ProjectionRunner::new(store.clone(), Arc::new(SqliteProjector::new(&store, EventCounts)));
//! assert_eq!(runner.catch_up().await?, 1);
//! assert_eq!(runner.catch_up().await?, 0); // the checkpoint moved with the read model
//! # Ok::<(), herald_es::Error>(())
//! # }).unwrap();
//! ```

mod runner;

use async_trait::async_trait;
use herald::{Bus, Context, SubscribeOptions};
use std::sync::Arc;

pub use runner::{ProjectionHealth, ProjectionRunner, ProjectionStatus, StatusView};

use crate::error::Result;
use crate::recorded::{Checkpoint, RecordedEvent};
use crate::upcast::Upcasters;

/// Where a projection is: its checkpoint, and whether a rebuild was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The last event applied.
    pub checkpoint: Checkpoint,
    /// `herald projections rebuild` asked for a rebuild that has not started.
    pub rebuild_requested: bool,
}

/// A read model bound to its database: applies events together with its checkpoint.
/// [`PgProjector`](crate::postgres::PgProjector) and
/// [`SqliteProjector`](crate::sqlite::SqliteProjector) implement it.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The projection's name (its checkpoint's key).
    fn name(&self) -> &str;

    /// Create the read model (the projection's setup) and its checkpoint row if missing.
    async fn prepare(&self) -> Result<()>;

    /// The stored checkpoint and rebuild request.
    async fn position(&self) -> Result<Position>;

    /// Apply `events` (which follow `from`) and move the checkpoint to the last of them, in one
    /// transaction. When the stored checkpoint is not `from` (another runner got there first),
    /// nothing is applied and the stored checkpoint is returned.
    async fn apply(&self, from: Checkpoint, events: &[RecordedEvent]) -> Result<Checkpoint>;

    /// Apply one event received from the bus unless its id was applied before, recording the
    /// id in the same transaction. Returns `false` for a duplicate.
    async fn apply_message(&self, event: &RecordedEvent) -> Result<bool>;

    /// Clear the read model and move the checkpoint back to the start, in one transaction.
    async fn rebuild(&self) -> Result<()>;
}

/// Feed a projection from the bus instead of the store: every message whose routing key
/// matches `pattern` is applied once (its id is recorded in the read model's transaction; a
/// redelivery is skipped). A failure rolls back and the bus retries. The queue is
/// `<service>.projection.<name>`.
pub fn subscribe_bus(
    bus: &Bus,
    projector: Arc<dyn Projector>,
    upcasters: Upcasters,
    pattern: &str,
    options: SubscribeOptions,
) -> herald::Result<()> {
    let suffix = format!("projection.{}", projector.name());
    bus.subscribe_raw(
        &suffix,
        pattern,
        move |ctx: Context| {
            let (projector, upcasters) = (projector.clone(), upcasters.clone());
            async move {
                let mut envelope = ctx.envelope().clone();
                upcasters.upcast(&mut envelope)?;
                projector
                    .apply_message(&RecordedEvent::from_bus(envelope))
                    .await?;
                Ok::<(), crate::Error>(())
            }
        },
        options,
    )
}
