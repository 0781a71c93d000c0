//! The SQLite outbox: the same API shape as the PostgreSQL one, on `rusqlite`.
//!
//! Stage with [`SqliteOutbox::stage`] on the application's own `rusqlite::Transaction` (or
//! connection); a [`Relay`](crate::Relay) over a [`SqliteStore`] publishes. SQLite has one writer
//! at a time, so relays claim in a `BEGIN IMMEDIATE` transaction instead of `SKIP LOCKED`;
//! several relays on one file take turns. There is no NOTIFY: relays poll.
//!
//! ```
//! use herald::Event;
//! use herald_outbox::sqlite::SqliteOutbox;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(name = "order.placed")]
//! struct OrderPlaced { order_id: u64 }
//!
//! let mut db = rusqlite::Connection::open_in_memory().unwrap();
//! let outbox = SqliteOutbox::new("order-service").unwrap();
//! outbox.migrate(&db).unwrap();
//! let tx = db.transaction().unwrap();
//! // ... the application's own writes on `tx` ...
//! outbox.stage(&tx, &OrderPlaced { order_id: 7 }).unwrap();
//! tx.commit().unwrap();
//! assert_eq!(outbox.status(&db).unwrap().count(herald_outbox::Status::Pending), 1);
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::{Envelope, Event, MessageOptions};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ident, sql, Result};
use crate::row::{envelope_of, ClaimedEvent, StagedEvent};
use crate::status::{FailedEvent, OutboxStatus, Status};
use crate::store::Retention;

pub(crate) mod store;

pub use store::SqliteStore;

const OUTBOX_SQL: &str = include_str!("schema.sql");
pub(crate) const INBOX_SQL: &str = include_str!("inbox.sql");

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Apply a migration once, recorded in `herald_migrations`.
pub(crate) fn migrate(conn: &Connection, name: &str, sql_text: &str) -> Result<bool> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS herald_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(sql("creating the migrations table"))?;
    let done: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM herald_migrations WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading applied migrations"))?;
    if done.is_some() {
        return Ok(false);
    }
    conn.execute_batch(&format!(
        "SAVEPOINT herald_migrate; {sql_text}; RELEASE herald_migrate;"
    ))
    .map_err(sql("applying a migration"))?;
    conn.execute(
        "INSERT OR IGNORE INTO herald_migrations (name, applied_at) VALUES (?1, ?2)",
        params![name, now_ms()],
    )
    .map_err(sql("recording a migration"))?;
    Ok(true)
}

/// An outbox table in SQLite and the service its events are published as. Holds no connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOutbox {
    table: String,
    service: String,
}

impl SqliteOutbox {
    /// The table `herald_outbox`, publishing as `service`.
    pub fn new(service: &str) -> Result<Self> {
        Ok(SqliteOutbox {
            table: "herald_outbox".into(),
            service: service.to_string(),
        })
    }

    /// Use this table name.
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = ident(table)?.to_string();
        Ok(self)
    }

    /// Create or upgrade the table (idempotent). Returns whether anything was applied.
    pub fn migrate(&self, conn: &Connection) -> Result<bool> {
        migrate(
            conn,
            &format!("{}:0001_outbox", self.table),
            &OUTBOX_SQL.replace("{table}", &self.table),
        )
    }

    /// Stage `event` in the caller's transaction. Returns the event id.
    pub fn stage<E: Event>(&self, tx: &Connection, event: &E) -> Result<String> {
        self.stage_with(tx, event, &MessageOptions::default())
    }

    /// Stage with options; `options.subject` is the aggregate the event is ordered within.
    pub fn stage_with<E: Event>(
        &self,
        tx: &Connection,
        event: &E,
        options: &MessageOptions,
    ) -> Result<String> {
        let row = StagedEvent::from_event(event, &self.service, options)?;
        self.stage_row(tx, &row)?;
        Ok(row.event_id)
    }

    /// Stage a ready-made envelope.
    pub fn stage_envelope(&self, tx: &Connection, envelope: &Envelope) -> Result<()> {
        self.stage_row(tx, &StagedEvent::from_envelope(envelope)?)
    }

    /// Stage an encoded row.
    pub fn stage_row(&self, tx: &Connection, row: &StagedEvent) -> Result<()> {
        let now = now_ms();
        let mut stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO {} (event_id, aggregate, routing_key, event_type, headers, body, created_at, available_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                self.table
            ))
            .map_err(sql("preparing the outbox insert"))?;
        stmt.execute(params![
            row.event_id,
            row.aggregate,
            row.routing_key,
            row.event_type,
            row.headers,
            row.body,
            now
        ])
        .map_err(sql("staging an event"))?;
        Ok(())
    }

    /// A consumer confirms it handled `event_id` (status `completed`).
    pub fn complete(&self, conn: &Connection, event_id: &str) -> Result<bool> {
        let now = now_ms();
        let n = conn
            .execute(
                &format!(
                    "UPDATE {} SET status = 'completed', completed_at = ?2, processed_at = ?2 \
                     WHERE event_id = ?1 AND status <> 'completed'",
                    self.table
                ),
                params![event_id, now],
            )
            .map_err(sql("completing an event"))?;
        Ok(n > 0)
    }

    /// A consumer reports it could not handle `event_id`: the row becomes `failed` with `error`
    /// (see [`PgOutbox::fail`](crate::postgres::PgOutbox::fail) for what that means). Call it
    /// outside the handler's own transaction, which rolls back.
    pub fn fail(&self, conn: &Connection, event_id: &str, error: &str) -> Result<bool> {
        let n = conn
            .execute(
                &format!(
                    "UPDATE {} SET status = 'failed', last_error = ?2, processed_at = ?3 \
                     WHERE event_id = ?1 AND status <> 'completed'",
                    self.table
                ),
                params![event_id, error, now_ms()],
            )
            .map_err(sql("marking an event failed"))?;
        Ok(n > 0)
    }

    /// Counts by status, oldest pending age, average processing times, the most retried failures.
    pub fn status(&self, conn: &Connection) -> Result<OutboxStatus> {
        let now = now_ms();
        let mut out = OutboxStatus::default();
        for s in Status::ALL {
            out.counts.insert(s, 0);
        }
        let mut stmt = conn
            .prepare(&format!(
                "SELECT status, count(*), min(CASE WHEN sent_at IS NULL THEN created_at END), \
                        avg(processed_at - created_at), sum(sent_at IS NOT NULL) \
                 FROM {} GROUP BY status",
                self.table
            ))
            .map_err(sql("reading the outbox status"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<f64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .map_err(sql("reading the outbox status"))?;
        for row in rows {
            let (name, count, oldest, avg, published) =
                row.map_err(sql("reading the outbox status"))?;
            let Some(status) = Status::parse(&name) else {
                continue;
            };
            out.counts.insert(status, count.max(0) as u64);
            if let (true, Some(oldest)) =
                (matches!(status, Status::Pending | Status::Failed), oldest)
            {
                let age = (now - oldest).max(0) as f64 / 1000.0;
                out.oldest_pending_age_secs =
                    Some(out.oldest_pending_age_secs.unwrap_or(0.0).max(age));
            }
            if let Some(avg) = avg {
                out.avg_processing_secs.insert(status, avg / 1000.0);
            }
            if status == Status::Failed {
                out.consumer_failed = published.unwrap_or(0).max(0) as u64;
            }
        }
        let mut stmt = conn
            .prepare(&format!(
                "SELECT event_id, routing_key, attempts, coalesce(last_error, '') FROM {} \
                 WHERE status = 'failed' ORDER BY attempts DESC, id LIMIT 5",
                self.table
            ))
            .map_err(sql("reading failed events"))?;
        let failed = stmt
            .query_map([], |r| {
                Ok(FailedEvent {
                    event_id: r.get(0)?,
                    routing_key: r.get(1)?,
                    attempts: r.get::<_, i64>(2)?.max(0) as u32,
                    error: r.get(3)?,
                })
            })
            .map_err(sql("reading failed events"))?;
        for f in failed {
            out.failures.push(f.map_err(sql("reading failed events"))?);
        }
        Ok(out)
    }

    /// p50 and p99 seconds from staging to `sent`, over rows staged at or after `since`.
    pub fn send_latency(
        &self,
        conn: &Connection,
        since: DateTime<Utc>,
    ) -> Result<Option<(f64, f64)>> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT sent_at - created_at FROM {} WHERE sent_at IS NOT NULL AND created_at >= ?1 ORDER BY 1",
                self.table
            ))
            .map_err(sql("reading latencies"))?;
        let v: Vec<i64> = stmt
            .query_map([since.timestamp_millis()], |r| r.get(0))
            .map_err(sql("reading latencies"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql("reading latencies"))?;
        if v.is_empty() {
            return Ok(None);
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Ok(Some((at(0.5), at(0.99))))
    }

    pub(crate) fn claim(
        &self,
        conn: &mut Connection,
        limit: usize,
        token: &str,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>> {
        let t = &self.table;
        let now = now_ms();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting a claim"))?;
        let mut out = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "WITH cand AS (
                         SELECT id, aggregate FROM {t}
                         WHERE status IN ('pending', 'processing', 'failed') AND available_at <= ?1
                         ORDER BY id LIMIT ?2
                     ), ready AS (
                         SELECT c.id FROM cand c
                         WHERE NOT EXISTS (
                             SELECT 1 FROM {t} e
                             WHERE e.aggregate = c.aggregate AND e.id < c.id
                               AND e.status IN ('pending', 'processing', 'failed')
                               AND e.id NOT IN (SELECT id FROM cand))
                     )
                     UPDATE {t} SET status = 'processing', attempts = attempts + 1, claim_token = ?3,
                         available_at = ?1 + ?4, processing_started_at = ?1
                     WHERE id IN (SELECT id FROM ready)
                     RETURNING id, event_id, aggregate, routing_key, event_type, headers, body, attempts, created_at"
                ))
                .map_err(sql("preparing the claim"))?;
            let rows = stmt
                .query_map(params![now, limit as i64, token, ms(lease)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })
                .map_err(sql("claiming outbox rows"))?;
            for row in rows {
                let (
                    seq,
                    event_id,
                    aggregate,
                    routing_key,
                    event_type,
                    headers,
                    body,
                    attempts,
                    created,
                ) = row.map_err(sql("claiming outbox rows"))?;
                let created_at = DateTime::from_timestamp_millis(created).unwrap_or_else(Utc::now);
                let envelope = envelope_of(
                    event_id,
                    &aggregate,
                    &routing_key,
                    event_type,
                    &headers,
                    body,
                    created_at,
                    &self.service,
                );
                out.push(ClaimedEvent {
                    seq,
                    aggregate,
                    attempts: attempts.max(0) as u32,
                    envelope,
                });
            }
        }
        tx.commit().map_err(sql("committing a claim"))?;
        Ok(out)
    }

    pub(crate) fn mark_sent(
        &self,
        conn: &mut Connection,
        seqs: &[i64],
        token: &str,
    ) -> Result<u64> {
        let now = now_ms();
        let tx = conn.transaction().map_err(sql("marking events sent"))?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "UPDATE {} SET status = 'sent', sent_at = ?3, processed_at = ?3, last_error = NULL \
                     WHERE id = ?1 AND claim_token = ?2 AND status = 'processing'",
                    self.table
                ))
                .map_err(sql("marking events sent"))?;
            for seq in seqs {
                n += stmt
                    .execute(params![seq, token, now])
                    .map_err(sql("marking events sent"))? as u64;
            }
        }
        tx.commit().map_err(sql("marking events sent"))?;
        Ok(n)
    }

    pub(crate) fn mark_failed(
        &self,
        conn: &Connection,
        seq: i64,
        token: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<()> {
        let now = now_ms();
        conn.execute(
            &format!(
                "UPDATE {} SET status = 'failed', last_error = ?3, processed_at = ?4, available_at = ?4 + ?5 \
                 WHERE id = ?1 AND claim_token = ?2 AND status = 'processing'",
                self.table
            ),
            params![seq, token, error, now, ms(retry_in)],
        )
        .map_err(sql("marking an event failed"))?;
        Ok(())
    }

    pub(crate) fn release(&self, conn: &Connection, seqs: &[i64], token: &str) -> Result<()> {
        let now = now_ms();
        for seq in seqs {
            conn.execute(
                &format!(
                    "UPDATE {} SET status = 'pending', attempts = max(attempts - 1, 0), available_at = ?3 \
                     WHERE id = ?1 AND claim_token = ?2 AND status = 'processing'",
                    self.table
                ),
                params![seq, token, now],
            )
            .map_err(sql("releasing events"))?;
        }
        Ok(())
    }

    /// Apply a retention policy to `sent` and `completed` rows (at most 10,000 per call).
    pub fn prune(&self, conn: &mut Connection, retention: Retention) -> Result<u64> {
        let t = &self.table;
        let (age, archive) = match retention {
            Retention::Keep => return Ok(0),
            Retention::Delete(age) => (age, false),
            Retention::Archive(age) => (age, true),
        };
        let cutoff = now_ms() - ms(age);
        let doomed = format!(
            "SELECT id FROM {t} WHERE status IN ('sent', 'completed') AND coalesce(completed_at, sent_at) < ?1 LIMIT 10000"
        );
        let tx = conn
            .transaction()
            .map_err(sql("pruning published events"))?;
        if archive {
            tx.execute(
                &format!("INSERT INTO {t}_archive SELECT * FROM {t} WHERE id IN ({doomed})"),
                [cutoff],
            )
            .map_err(sql("archiving published events"))?;
        }
        let n = tx
            .execute(&format!("DELETE FROM {t} WHERE id IN ({doomed})"), [cutoff])
            .map_err(sql("pruning published events"))?;
        tx.commit().map_err(sql("pruning published events"))?;
        Ok(n as u64)
    }
}
