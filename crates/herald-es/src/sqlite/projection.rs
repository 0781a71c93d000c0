//! Projections whose read model lives in the store's SQLite file.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{now_ms, SqliteEventStore};
use crate::error::{sql, BoxError, Error, Result};
use crate::projection::{Position, Projector};
use crate::recorded::{Checkpoint, RecordedEvent};

/// A read model in SQLite. `apply` and `reset` write on the transaction they are given, which
/// also carries the checkpoint. They run on a blocking thread. See the
/// [projection module](crate::projection) for an example.
pub trait SqliteProjection: Send + Sync + 'static {
    /// The projection's name (its checkpoint's key).
    fn name(&self) -> &str;

    /// Create the read model's tables (idempotent). Runs before the first batch.
    fn setup(&self, _conn: &Connection) -> Result<(), BoxError> {
        Ok(())
    }

    /// Apply one event on `tx`.
    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError>;

    /// Clear the read model on `tx` (a rebuild then replays every event).
    fn reset(&self, tx: &Transaction<'_>) -> Result<(), BoxError>;
}

/// A [`SqliteProjection`] bound to a store's file: the [`Projector`] a runner drives.
pub struct SqliteProjector<P> {
    store: Arc<SqliteEventStore>,
    projection: Arc<P>,
    name: String,
}

impl<P: SqliteProjection> SqliteProjector<P> {
    /// Bind `projection` to `store`'s file.
    pub fn new(store: &Arc<SqliteEventStore>, projection: P) -> Self {
        SqliteProjector {
            store: store.clone(),
            name: projection.name().to_string(),
            projection: Arc::new(projection),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }
}

fn failed(projection: &str, event: &RecordedEvent, source: BoxError) -> Error {
    Error::Projection {
        projection: projection.to_string(),
        event_id: event.id().to_string(),
        event_type: event.event_type().to_string(),
        source,
    }
}

fn reset_failed(projection: &str, source: BoxError) -> Error {
    Error::Projection {
        projection: projection.to_string(),
        event_id: "-".into(),
        event_type: "(reset)".into(),
        source,
    }
}

fn immediate(c: &mut Connection) -> Result<Transaction<'_>> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("starting a projection transaction"))
}

#[async_trait]
impl<P: SqliteProjection> Projector for SqliteProjector<P> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&self) -> Result<()> {
        let (p, name) = (self.projection.clone(), self.name.clone());
        self.store
            .with_connection(move |c| {
                p.setup(c).map_err(|e| reset_failed(&name, e))?;
                c.execute(
                    "INSERT INTO es_checkpoints (projection, updated_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![name, now_ms()],
                )
                .map_err(sql("registering a projection"))?;
                Ok(())
            })
            .await
    }

    async fn position(&self) -> Result<Position> {
        let name = self.name.clone();
        self.store
            .with_connection(move |c| {
                let row: Option<(i64, bool)> = c
                    .query_row(
                        "SELECT position, rebuild_requested_at IS NOT NULL FROM es_checkpoints WHERE projection = ?1",
                        [&name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(sql("reading a checkpoint"))?;
                let (position, rebuild_requested) =
                    row.ok_or_else(|| Error::UnknownProjection(name.clone()))?;
                Ok(Position {
                    checkpoint: Checkpoint {
                        tx: 0,
                        position: position.max(0) as u64,
                    },
                    rebuild_requested,
                })
            })
            .await
    }

    async fn apply(&self, from: Checkpoint, events: &[RecordedEvent]) -> Result<Checkpoint> {
        let Some(last) = events.last().map(|e| e.checkpoint) else {
            return Ok(from);
        };
        let (p, name, events) = (self.projection.clone(), self.name.clone(), events.to_vec());
        self.store
            .with_connection(move |c| {
                let tx = immediate(c)?;
                let stored: i64 = tx
                    .query_row(
                        "SELECT position FROM es_checkpoints WHERE projection = ?1",
                        [&name],
                        |r| r.get(0),
                    )
                    .map_err(sql("reading a checkpoint"))?;
                let stored = Checkpoint {
                    tx: 0,
                    position: stored.max(0) as u64,
                };
                if stored != from {
                    return Ok(stored);
                }
                for event in &events {
                    p.apply(&tx, event).map_err(|e| failed(&name, event, e))?;
                }
                tx.execute(
                    "UPDATE es_checkpoints SET position = ?2, updated_at = ?3 WHERE projection = ?1",
                    params![name, last.position as i64, now_ms()],
                )
                .map_err(sql("moving a checkpoint"))?;
                tx.commit().map_err(sql("committing a projection batch"))?;
                Ok(last)
            })
            .await
    }

    async fn apply_message(&self, event: &RecordedEvent) -> Result<bool> {
        let (p, name, event) = (self.projection.clone(), self.name.clone(), event.clone());
        self.store
            .with_connection(move |c| {
                let tx = immediate(c)?;
                let new = tx
                    .execute(
                        "INSERT INTO es_projection_applied (projection, event_id, applied_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                        params![name, event.id(), now_ms()],
                    )
                    .map_err(sql("recording an applied event"))?;
                if new == 0 {
                    return Ok(false);
                }
                p.apply(&tx, &event).map_err(|e| failed(&name, &event, e))?;
                tx.commit().map_err(sql("committing a projection update"))?;
                Ok(true)
            })
            .await
    }

    async fn rebuild(&self) -> Result<()> {
        let (p, name) = (self.projection.clone(), self.name.clone());
        self.store
            .with_connection(move |c| {
                let tx = immediate(c)?;
                p.reset(&tx).map_err(|e| reset_failed(&name, e))?;
                tx.execute(
                    "UPDATE es_checkpoints SET position = 0, rebuild_requested_at = NULL, updated_at = ?2 WHERE projection = ?1",
                    params![name, now_ms()],
                )
                .map_err(sql("resetting a checkpoint"))?;
                tx.execute(
                    "DELETE FROM es_projection_applied WHERE projection = ?1",
                    [&name],
                )
                .map_err(sql("resetting a checkpoint"))?;
                tx.commit().map_err(sql("committing a rebuild"))?;
                Ok(())
            })
            .await
    }
}
