//! The read model: orders by status, a projection of every stream in the store. Each row counts
//! the events applied to it, so the final check can tell an event applied twice (or skipped)
//! from the store's own count.

use async_trait::async_trait;
use herald_es::postgres::PgProjection;
use herald_es::sqlite::SqliteProjection;
use herald_es::{BoxError, Database, RecordedEvent};

/// The projection's name (its checkpoint's key; `herald projections rebuild orders_by_status`).
pub const NAME: &str = "orders_by_status";

/// The order a demo event is about, and the status it moves the order to (none: unchanged). A
/// finished order keeps its status: a payment answering after the order was cancelled is refunded,
/// and does not make the order look paid.
fn change(e: &RecordedEvent) -> Option<(String, Option<String>)> {
    let body = e.envelope.body_value();
    let order_id = body.get("order_id")?.as_str()?.to_string();
    let status = match e.event_type() {
        "order.placed" => Some("placed".to_string()),
        "inventory.reserved" => Some("reserved".into()),
        "payment.captured" => Some("paid".into()),
        "payment.declined" => Some("payment_declined".into()),
        "shipment.dispatched" => Some("shipped".into()),
        "order.completed" => Some("completed".into()),
        "order.cancelled" => Some(format!(
            "cancelled:{}",
            body.get("reason").and_then(|r| r.as_str()).unwrap_or("")
        )),
        "inventory.released" | "payment.refunded" | "payment.voided" => None,
        _ => return None,
    };
    Some((order_id, status))
}

/// Orders by status, in PostgreSQL (table `<schema>.demo_orders_by_status`) or SQLite.
pub struct OrdersByStatus {
    table: String,
}

impl OrdersByStatus {
    /// The read model in the store's schema (PostgreSQL) or file (SQLite).
    pub fn new(db: &Database) -> Self {
        let table = match db {
            Database::Postgres(s) => format!("{}.demo_orders_by_status", s.schema()),
            Database::Sqlite(_) => "demo_orders_by_status".to_string(),
        };
        OrdersByStatus { table }
    }

    fn create(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, events_applied BIGINT NOT NULL)",
            self.table
        )
    }

    fn upsert(&self, p: [&str; 2]) -> String {
        format!(
            "INSERT INTO {t} AS o (order_id, status, events_applied) VALUES ({a}, coalesce({b}, 'unknown'), 1)
             ON CONFLICT (order_id) DO UPDATE SET status = CASE
                     WHEN o.status = 'completed' OR o.status LIKE 'cancelled:%' THEN o.status
                     ELSE coalesce({b}, o.status) END,
                 events_applied = o.events_applied + 1",
            t = self.table,
            a = p[0],
            b = p[1],
        )
    }
}

#[async_trait]
impl PgProjection for OrdersByStatus {
    fn name(&self) -> &str {
        NAME
    }
    async fn setup(&self, c: &tokio_postgres::Client) -> Result<(), BoxError> {
        c.batch_execute(&self.create()).await?;
        Ok(())
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), BoxError> {
        if let Some((order, status)) = change(e) {
            tx.execute(&self.upsert(["$1", "$2::text"]), &[&order, &status])
                .await?;
        }
        Ok(())
    }
    async fn reset(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), BoxError> {
        tx.execute(&format!("DELETE FROM {}", self.table), &[])
            .await?;
        Ok(())
    }
}

impl SqliteProjection for OrdersByStatus {
    fn name(&self) -> &str {
        NAME
    }
    fn setup(&self, c: &rusqlite::Connection) -> Result<(), BoxError> {
        c.execute_batch(&self.create())?;
        Ok(())
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &RecordedEvent) -> Result<(), BoxError> {
        if let Some((order, status)) = change(e) {
            tx.prepare_cached(&self.upsert(["?1", "?2"]))?
                .execute(rusqlite::params![order, status])?;
        }
        Ok(())
    }
    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), BoxError> {
        tx.execute(&format!("DELETE FROM {}", self.table), [])?;
        Ok(())
    }
}

/// One row of the read model.
#[derive(Debug, Clone)]
pub struct Row {
    pub order_id: String,
    pub status: String,
    pub events_applied: u64,
}

/// The read model's rows of one run (order ids `<run>-<n>`).
pub async fn rows(db: &Database, run: &str) -> Result<Vec<Row>, BoxError> {
    let pattern = format!("{run}-%");
    match db {
        Database::Postgres(s) => {
            let conn = s.pool().get().await?;
            let rows = conn
                .client()
                .query(
                    &format!(
                        "SELECT order_id, status, events_applied FROM {}.demo_orders_by_status WHERE order_id LIKE $1",
                        s.schema()
                    ),
                    &[&pattern],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Row {
                    order_id: r.get(0),
                    status: r.get(1),
                    events_applied: r.get::<_, i64>(2).max(0) as u64,
                })
                .collect())
        }
        Database::Sqlite(s) => Ok(s
            .with_connection(move |c| {
                let read = || -> rusqlite::Result<Vec<Row>> {
                    let mut st = c.prepare(
                        "SELECT order_id, status, events_applied FROM demo_orders_by_status WHERE order_id LIKE ?1",
                    )?;
                    let rows = st
                        .query_map([&pattern], |r| {
                            Ok(Row {
                                order_id: r.get(0)?,
                                status: r.get(1)?,
                                events_applied: r.get::<_, i64>(2)?.max(0) as u64,
                            })
                        })?
                        .collect();
                    rows
                };
                read().map_err(|e| herald_es::Error::Data(format!("reading the read model: {e}")))
            })
            .await?),
    }
}
