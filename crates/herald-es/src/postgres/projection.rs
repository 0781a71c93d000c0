//! Projections whose read model lives in the store's PostgreSQL database.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::{Client, Transaction};

use super::PgEventStore;
use crate::error::{pg, BoxError, Error, Result};
use crate::projection::{Position, Projector};
use crate::recorded::{Checkpoint, RecordedEvent};

/// A read model in PostgreSQL. `apply` and `reset` write on the transaction they are given,
/// which also carries the checkpoint.
///
/// ```no_run
/// use async_trait::async_trait;
/// use herald_es::postgres::PgProjection;
/// use herald_es::{BoxError, RecordedEvent};
///
/// struct OrdersByStatus;
///
/// #[async_trait]
/// impl PgProjection for OrdersByStatus {
///     fn name(&self) -> &str { "orders_by_status" }
///     async fn setup(&self, db: &tokio_postgres::Client) -> Result<(), BoxError> {
///         db.batch_execute("CREATE TABLE IF NOT EXISTS orders_by_status (order_id TEXT PRIMARY KEY, status TEXT NOT NULL)").await?;
///         Ok(())
///     }
///     async fn apply(&self, tx: &tokio_postgres::Transaction<'_>, e: &RecordedEvent) -> Result<(), BoxError> {
///         tx.execute("INSERT INTO orders_by_status VALUES ($1, $2) ON CONFLICT (order_id) DO UPDATE SET status = $2",
///             &[&e.stream_id, &e.event_type()]).await?;
///         Ok(())
///     }
///     async fn reset(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), BoxError> {
///         tx.execute("DELETE FROM orders_by_status", &[]).await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait PgProjection: Send + Sync + 'static {
    /// The projection's name (its checkpoint's key).
    fn name(&self) -> &str;

    /// Create the read model's tables (idempotent). Runs before the first batch.
    async fn setup(&self, _client: &Client) -> Result<(), BoxError> {
        Ok(())
    }

    /// Apply one event on `tx`.
    async fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError>;

    /// Clear the read model on `tx` (a rebuild then replays every event).
    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), BoxError>;
}

/// A [`PgProjection`] bound to a store's database: the [`Projector`] a runner drives.
pub struct PgProjector<P> {
    store: Arc<PgEventStore>,
    projection: P,
}

impl<P: PgProjection> PgProjector<P> {
    /// Bind `projection` to `store`'s database.
    pub fn new(store: &Arc<PgEventStore>, projection: P) -> Self {
        PgProjector {
            store: store.clone(),
            projection,
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    fn failed(&self, event: &RecordedEvent, source: BoxError) -> Error {
        Error::Projection {
            projection: self.projection.name().to_string(),
            event_id: event.id().to_string(),
            event_type: event.event_type().to_string(),
            source,
        }
    }

    fn reset_failed(&self, source: BoxError) -> Error {
        Error::Projection {
            projection: self.projection.name().to_string(),
            event_id: "-".into(),
            event_type: "(reset)".into(),
            source,
        }
    }
}

fn checkpoint_of(row: &tokio_postgres::Row) -> Checkpoint {
    Checkpoint {
        tx: row.get::<_, i64>(0).max(0) as u64,
        position: row.get::<_, i64>(1).max(0) as u64,
    }
}

#[async_trait]
impl<P: PgProjection> Projector for PgProjector<P> {
    fn name(&self) -> &str {
        self.projection.name()
    }

    async fn prepare(&self) -> Result<()> {
        let conn = self.store.pool().get().await?;
        self.projection
            .setup(conn.client())
            .await
            .map_err(|e| self.reset_failed(e))?;
        conn.client()
            .execute(
                &format!(
                    "INSERT INTO {}.es_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
                    self.store.schema()
                ),
                &[&self.projection.name()],
            )
            .await
            .map_err(pg("registering a projection"))?;
        Ok(())
    }

    async fn position(&self) -> Result<Position> {
        let conn = self.store.pool().get().await?;
        let row = conn
            .client()
            .query_opt(
                &format!(
                    "SELECT tx_id, position, rebuild_requested_at IS NOT NULL FROM {}.es_checkpoints WHERE projection = $1",
                    self.store.schema()
                ),
                &[&self.projection.name()],
            )
            .await
            .map_err(pg("reading a checkpoint"))?
            .ok_or_else(|| Error::UnknownProjection(self.projection.name().to_string()))?;
        Ok(Position {
            checkpoint: checkpoint_of(&row),
            rebuild_requested: row.get(2),
        })
    }

    async fn apply(&self, from: Checkpoint, events: &[RecordedEvent]) -> Result<Checkpoint> {
        let Some(last) = events.last() else {
            return Ok(from);
        };
        let schema = self.store.schema();
        let mut conn = self.store.pool().get().await?;
        let tx = conn
            .client_mut()
            .transaction()
            .await
            .map_err(pg("starting a projection batch"))?;
        // Locks the checkpoint until commit: a second runner of this projection waits here,
        // then sees the moved checkpoint and applies nothing.
        let row = tx
            .query_one(
                &format!(
                    "SELECT tx_id, position FROM {schema}.es_checkpoints WHERE projection = $1 FOR UPDATE"
                ),
                &[&self.projection.name()],
            )
            .await
            .map_err(pg("locking a checkpoint"))?;
        let stored = checkpoint_of(&row);
        if stored != from {
            return Ok(stored);
        }
        for event in events {
            self.projection
                .apply(&tx, event)
                .await
                .map_err(|e| self.failed(event, e))?;
        }
        tx.execute(
            &format!(
                "UPDATE {schema}.es_checkpoints SET tx_id = $2, position = $3, updated_at = now() WHERE projection = $1"
            ),
            &[
                &self.projection.name(),
                &(last.checkpoint.tx as i64),
                &(last.checkpoint.position as i64),
            ],
        )
        .await
        .map_err(pg("moving a checkpoint"))?;
        tx.commit()
            .await
            .map_err(pg("committing a projection batch"))?;
        Ok(last.checkpoint)
    }

    async fn apply_message(&self, event: &RecordedEvent) -> Result<bool> {
        let mut conn = self.store.pool().get().await?;
        let tx = conn
            .client_mut()
            .transaction()
            .await
            .map_err(pg("starting a projection update"))?;
        let new = tx
            .execute(
                &format!(
                    "INSERT INTO {}.es_projection_applied (projection, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    self.store.schema()
                ),
                &[&self.projection.name(), &event.id()],
            )
            .await
            .map_err(pg("recording an applied event"))?;
        if new == 0 {
            return Ok(false);
        }
        self.projection
            .apply(&tx, event)
            .await
            .map_err(|e| self.failed(event, e))?;
        tx.commit()
            .await
            .map_err(pg("committing a projection update"))?;
        Ok(true)
    }

    async fn rebuild(&self) -> Result<()> {
        let schema = self.store.schema();
        let mut conn = self.store.pool().get().await?;
        let tx = conn
            .client_mut()
            .transaction()
            .await
            .map_err(pg("starting a rebuild"))?;
        self.projection
            .reset(&tx)
            .await
            .map_err(|e| self.reset_failed(e))?;
        tx.execute(
            &format!(
                "UPDATE {schema}.es_checkpoints SET tx_id = 0, position = 0, rebuild_requested_at = NULL, updated_at = now() WHERE projection = $1"
            ),
            &[&self.projection.name()],
        )
        .await
        .map_err(pg("resetting a checkpoint"))?;
        tx.execute(
            &format!("DELETE FROM {schema}.es_projection_applied WHERE projection = $1"),
            &[&self.projection.name()],
        )
        .await
        .map_err(pg("resetting a checkpoint"))?;
        tx.commit().await.map_err(pg("committing a rebuild"))?;
        Ok(())
    }
}
