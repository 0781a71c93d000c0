//! The PostgreSQL outbox, on `tokio-postgres`.
//!
//! # Why tokio-postgres
//!
//! Staging must run inside the *application's* transaction, so the outbox takes whatever
//! transaction type the application already uses. `tokio-postgres` is the driver underneath most
//! async Rust PostgreSQL stacks (deadpool-postgres, bb8-postgres, refinery) and its
//! [`GenericClient`] covers both a `Client` and a `Transaction`, so [`PgOutbox::stage`] takes
//! either. It also gives the relay what it needs and sqlx does not expose as directly: a
//! connection whose `LISTEN` notifications arrive as a stream. It compiles without a database at
//! build time and adds no macros. Applications on sqlx execute the same single `INSERT`
//! ([`PgOutbox::insert_sql`] with [`StagedEvent`]'s fields as parameters) on their own
//! `sqlx::Transaction`; the relay and the table are shared.
//!
//! # Example
//!
//! ```no_run
//! use herald::Event;
//! use herald_outbox::postgres::PgOutbox;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(name = "order.placed")]
//! struct OrderPlaced { order_id: u64 }
//!
//! # async fn run() -> herald_outbox::Result<()> {
//! let (mut client, conn) = tokio_postgres::connect("host=127.0.0.1 user=postgres dbname=test", tokio_postgres::NoTls)
//!     .await.map_err(|e| herald_outbox::Error::Postgres { context: "connecting", source: e })?;
//! tokio::spawn(conn);
//! let outbox = PgOutbox::new("order-service")?;
//! outbox.migrate(&mut client).await?;
//! let tx = client.transaction().await.map_err(|e| herald_outbox::Error::Postgres { context: "begin", source: e })?;
//! // ... the application's own writes on `tx` ...
//! outbox.stage(&tx, &OrderPlaced { order_id: 7 }).await?;
//! tx.commit().await.map_err(|e| herald_outbox::Error::Postgres { context: "commit", source: e })?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::{Envelope, Event, MessageOptions};
use tokio_postgres::{Client, GenericClient};

use crate::error::{ident, pg, Error, Result};
use crate::row::{envelope_of, ClaimedEvent, StagedEvent};
use crate::status::{FailedEvent, OutboxStatus, Status};
use crate::store::Retention;

mod conn;
pub(crate) mod schema;
mod store;
mod trigger;

pub(crate) use conn::PgConn;
pub use store::PgStore;
pub use trigger::{TriggerEvents, TriggerSpec};

/// An outbox table in PostgreSQL: where it is, and the service its events are published as.
/// Holds no connection; every call takes the client or transaction to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutbox {
    schema: String,
    table: String,
    service: String,
}

impl PgOutbox {
    /// The outbox `public.herald_outbox`, publishing as `service`.
    pub fn new(service: &str) -> Result<Self> {
        Ok(PgOutbox {
            schema: "public".into(),
            table: "herald_outbox".into(),
            service: service.to_string(),
        })
    }

    /// Use this schema (created by [`migrate`](Self::migrate) when missing).
    pub fn schema(mut self, schema: &str) -> Result<Self> {
        self.schema = ident(schema)?.to_string();
        Ok(self)
    }

    /// Use this table name.
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = ident(table)?.to_string();
        Ok(self)
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The service events are published as (CloudEvents source of trigger-written rows).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The channel relays `LISTEN` on.
    pub fn channel(&self) -> String {
        schema::channel(&self.schema, &self.table)
    }

    /// Create or upgrade the outbox table (idempotent; safe from several processes at once).
    /// Returns how many migrations were applied.
    pub async fn migrate(&self, client: &mut Client) -> Result<usize> {
        schema::migrate(client, &self.schema, &self.table, schema::OUTBOX).await
    }

    /// Turn the `NOTIFY` wake-up hint on (the default after [`migrate`](Self::migrate)) or off.
    ///
    /// PostgreSQL serializes the commits of transactions that issued a `NOTIFY` (a
    /// database-wide lock held through commit), so the trigger notifies from one staging
    /// transaction at a time (the one holding a transaction-scoped advisory lock; the others
    /// skip it) and concurrent stagers still share WAL flushes; a relay looks again for a short
    /// while after a busy round for stagers that committed after the notifier. Off, relays find
    /// new rows only when they poll (latency of about half
    /// [`RelayConfig::poll_interval`](crate::RelayConfig::poll_interval)). Polling remains the
    /// source of truth either way.
    pub async fn set_notify<C: GenericClient + Sync>(
        &self,
        client: &C,
        enabled: bool,
    ) -> Result<()> {
        let action = if enabled { "ENABLE" } else { "DISABLE" };
        client
            .batch_execute(&format!(
                "ALTER TABLE {} {action} TRIGGER {}_notify",
                self.qualified(),
                self.table
            ))
            .await
            .map_err(pg("switching the outbox NOTIFY trigger"))
    }

    /// The migration SQL, for teams that run migrations with their own tool.
    pub fn migration_sql(&self) -> String {
        schema::OUTBOX
            .iter()
            .map(|(_, sql)| schema::render(sql, &self.schema, &self.table))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `INSERT` that stages one event; parameters `$1..$6` are [`StagedEvent`]'s `event_id`,
    /// `aggregate`, `routing_key`, `event_type`, `headers`, `body`, all text. For drivers other
    /// than tokio-postgres (sqlx): run it on your own transaction.
    pub fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (event_id, aggregate, routing_key, event_type, headers, body) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)",
            self.qualified()
        )
    }

    /// Stage `event` inside the caller's transaction (or on a plain client, autocommit). It is
    /// published by a relay once the transaction commits, and never if it rolls back. Returns
    /// the event id.
    pub async fn stage<C: GenericClient + Sync, E: Event>(
        &self,
        tx: &C,
        event: &E,
    ) -> Result<String> {
        self.stage_with(tx, event, &MessageOptions::default()).await
    }

    /// Stage with options; `options.subject` is the aggregate the event is ordered within.
    pub async fn stage_with<C: GenericClient + Sync, E: Event>(
        &self,
        tx: &C,
        event: &E,
        options: &MessageOptions,
    ) -> Result<String> {
        let row = StagedEvent::from_event(event, &self.service, options)?;
        self.stage_row(tx, &row).await?;
        Ok(row.event_id)
    }

    /// Stage a ready-made envelope.
    pub async fn stage_envelope<C: GenericClient + Sync>(
        &self,
        tx: &C,
        envelope: &Envelope,
    ) -> Result<()> {
        self.stage_row(tx, &StagedEvent::from_envelope(envelope)?)
            .await
    }

    /// Stage an encoded row.
    pub async fn stage_row<C: GenericClient + Sync>(
        &self,
        tx: &C,
        row: &StagedEvent,
    ) -> Result<()> {
        tx.execute(
            &self.insert_sql(),
            &[
                &row.event_id,
                &row.aggregate,
                &row.routing_key,
                &row.event_type,
                &row.headers,
                &row.body,
            ],
        )
        .await
        .map_err(pg("staging an event"))?;
        Ok(())
    }

    /// Stage many rows in one statement (bulk writers, benchmarks).
    pub async fn stage_rows<C: GenericClient + Sync>(
        &self,
        tx: &C,
        rows: &[StagedEvent],
    ) -> Result<u64> {
        let col = |f: fn(&StagedEvent) -> &String| rows.iter().map(f).collect::<Vec<&String>>();
        let (ids, aggs, keys, types, headers, bodies) = (
            col(|r| &r.event_id),
            col(|r| &r.aggregate),
            col(|r| &r.routing_key),
            col(|r| &r.event_type),
            col(|r| &r.headers),
            col(|r| &r.body),
        );
        tx.execute(
            &format!(
                "INSERT INTO {} (event_id, aggregate, routing_key, event_type, headers, body) \
                 SELECT i, a, k, t, h::jsonb, b FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                 WITH ORDINALITY AS u(i, a, k, t, h, b, n) ORDER BY n",
                self.qualified()
            ),
            &[&ids, &aggs, &keys, &types, &headers, &bodies],
        )
        .await
        .map_err(pg("staging events"))
    }

    /// A consumer confirms it handled `event_id`: the row becomes `completed` (reference 001's
    /// last status). Optional; returns false when no unconfirmed row has that id (already
    /// completed, or pruned).
    pub async fn complete<C: GenericClient + Sync>(
        &self,
        client: &C,
        event_id: &str,
    ) -> Result<bool> {
        let n = client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'completed', completed_at = now(), processed_at = now() \
                     WHERE event_id = $1 AND status <> 'completed'",
                    self.qualified()
                ),
                &[&event_id],
            )
            .await
            .map_err(pg("completing an event"))?;
        Ok(n > 0)
    }

    /// A consumer reports it could not handle `event_id` (reference 001: "ES Service -> DB: mark
    /// job failed"): the row becomes `failed` with `error`, counted as a consumer failure (the
    /// relay does not publish it again: the broker redelivers it to the consumer, whose retry
    /// may later [`complete`](Self::complete) it). Returns false when no row has that id or it is
    /// already completed. Call it outside the handler's own transaction, which rolls back.
    pub async fn fail<C: GenericClient + Sync>(
        &self,
        client: &C,
        event_id: &str,
        error: &str,
    ) -> Result<bool> {
        let n = client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'failed', last_error = $2, processed_at = now() \
                     WHERE event_id = $1 AND status <> 'completed'",
                    self.qualified()
                ),
                &[&event_id, &error],
            )
            .await
            .map_err(pg("marking an event failed"))?;
        Ok(n > 0)
    }

    /// The status of every row of the table: counts by status, oldest pending age, average
    /// processing times, the most retried failures. What `herald outbox status` prints.
    pub async fn status<C: GenericClient + Sync>(&self, client: &C) -> Result<OutboxStatus> {
        let t = self.qualified();
        let rows = client
            .query(
                &format!(
                    "SELECT status, count(*)::bigint, \
                            EXTRACT(EPOCH FROM (now() - min(created_at) FILTER (WHERE sent_at IS NULL)))::float8, \
                            avg(EXTRACT(EPOCH FROM (processed_at - created_at)))::float8, \
                            count(*) FILTER (WHERE sent_at IS NOT NULL)::bigint \
                     FROM {t} GROUP BY status"
                ),
                &[],
            )
            .await
            .map_err(pg("reading the outbox status"))?;
        let mut out = OutboxStatus::default();
        for s in Status::ALL {
            out.counts.insert(s, 0);
        }
        for r in rows {
            let name: String = r.get(0);
            let Some(status) = Status::parse(&name) else {
                continue;
            };
            let count: i64 = r.get(1);
            out.counts.insert(status, count.max(0) as u64);
            if matches!(status, Status::Pending | Status::Failed) {
                let age: Option<f64> = r.get(2);
                if let Some(age) = age {
                    let prev = out.oldest_pending_age_secs.unwrap_or(0.0);
                    out.oldest_pending_age_secs = Some(prev.max(age.max(0.0)));
                }
            }
            let avg: Option<f64> = r.get(3);
            if let Some(avg) = avg {
                out.avg_processing_secs.insert(status, avg);
            }
            if status == Status::Failed {
                out.consumer_failed = r.get::<_, i64>(4).max(0) as u64;
            }
        }
        let failed = client
            .query(
                &format!(
                    "SELECT event_id, routing_key, attempts, coalesce(last_error, '') FROM {t} \
                     WHERE status = 'failed' ORDER BY attempts DESC, id LIMIT 5"
                ),
                &[],
            )
            .await
            .map_err(pg("reading failed events"))?;
        out.failures = failed
            .into_iter()
            .map(|r| FailedEvent {
                event_id: r.get(0),
                routing_key: r.get(1),
                attempts: r.get::<_, i32>(2).max(0) as u32,
                error: r.get(3),
            })
            .collect();
        Ok(out)
    }

    /// Latency percentiles (p50, p99) in seconds from staging to `sent`, over sent rows staged
    /// after `since`. For benchmarks and dashboards.
    pub async fn send_latency<C: GenericClient + Sync>(
        &self,
        client: &C,
        since: DateTime<Utc>,
    ) -> Result<Option<(f64, f64)>> {
        let r = client
            .query_one(
                &format!(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (sent_at - created_at)))::float8, \
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (sent_at - created_at)))::float8 \
                     FROM {} WHERE sent_at IS NOT NULL AND created_at >= $1",
                    self.qualified()
                ),
                &[&since],
            )
            .await
            .map_err(pg("reading latencies"))?;
        let (p50, p99): (Option<f64>, Option<f64>) = (r.get(0), r.get(1));
        Ok(p50.zip(p99))
    }

    pub(crate) async fn claim<C: GenericClient + Sync>(
        &self,
        client: &C,
        limit: usize,
        token: &str,
        lease: Duration,
    ) -> Result<Vec<ClaimedEvent>> {
        let t = self.qualified();
        // Rows locked by another relay's claim are skipped; rows that relay already committed
        // as `processing` are open and so block later rows of their aggregate.
        let sql = format!(
            "WITH cand AS (
                 SELECT id, aggregate FROM {t}
                 WHERE sent_at IS NULL AND completed_at IS NULL
                   AND status IN ('pending', 'processing', 'failed') AND available_at <= now()
                 ORDER BY id LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ), ready AS (
                 -- The first open row of the aggregate outside this claim, if any, must come
                 -- later: one index probe per candidate, whatever the backlog.
                 SELECT c.id FROM cand c
                 LEFT JOIN LATERAL (
                     SELECT e.id FROM {t} e
                     WHERE e.aggregate = c.aggregate AND e.id < c.id
                       AND e.sent_at IS NULL AND e.completed_at IS NULL
                       AND e.id NOT IN (SELECT id FROM cand)
                     ORDER BY e.id LIMIT 1
                 ) blocker ON true
                 WHERE blocker.id IS NULL
             )
             UPDATE {t} o SET status = 'processing', attempts = o.attempts + 1, claim_token = $2,
                 available_at = now() + $3 * interval '1 millisecond', processing_started_at = now()
             FROM ready WHERE o.id = ready.id
             RETURNING o.id, o.event_id, o.aggregate, o.routing_key, o.event_type, o.headers::text,
                       o.body, o.attempts, o.created_at"
        );
        let lease_ms = lease.as_millis().min(i64::MAX as u128) as f64;
        let rows = client
            .query(&sql, &[&(limit as i64), &token, &lease_ms])
            .await
            .map_err(pg("claiming outbox rows"))?;
        rows.into_iter()
            .map(|r| {
                let aggregate: String = r.get(2);
                let routing_key: String = r.get(3);
                let headers: String = r.get(5);
                let created_at: DateTime<Utc> = r.get(8);
                let envelope = envelope_of(
                    r.get(1),
                    &aggregate,
                    &routing_key,
                    r.get(4),
                    &headers,
                    r.get(6),
                    created_at,
                    &self.service,
                );
                Ok(ClaimedEvent {
                    seq: r.get(0),
                    aggregate,
                    attempts: r.get::<_, i32>(7).max(0) as u32,
                    envelope,
                })
            })
            .collect::<Result<Vec<_>, Error>>()
    }

    pub(crate) async fn mark_sent<C: GenericClient + Sync>(
        &self,
        client: &C,
        seqs: &[i64],
        token: &str,
    ) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'sent', sent_at = now(), processed_at = now(), last_error = NULL \
                     WHERE id = ANY($1) AND claim_token = $2 AND status = 'processing'",
                    self.qualified()
                ),
                &[&seqs, &token],
            )
            .await
            .map_err(pg("marking events sent"))
    }

    pub(crate) async fn mark_failed<C: GenericClient + Sync>(
        &self,
        client: &C,
        seq: i64,
        token: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<()> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'failed', last_error = $3, processed_at = now(), \
                         available_at = now() + $4 * interval '1 millisecond' \
                     WHERE id = $1 AND claim_token = $2 AND status = 'processing'",
                    self.qualified()
                ),
                &[&seq, &token, &error, &(retry_in.as_millis() as f64)],
            )
            .await
            .map_err(pg("marking an event failed"))?;
        Ok(())
    }

    pub(crate) async fn release<C: GenericClient + Sync>(
        &self,
        client: &C,
        seqs: &[i64],
        token: &str,
    ) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'pending', attempts = greatest(attempts - 1, 0), available_at = now() \
                     WHERE id = ANY($1) AND claim_token = $2 AND status = 'processing'",
                    self.qualified()
                ),
                &[&seqs, &token],
            )
            .await
            .map_err(pg("releasing events"))?;
        Ok(())
    }

    /// Apply a retention policy to `sent` and `completed` rows (at most 10,000 per call).
    pub async fn prune<C: GenericClient + Sync>(
        &self,
        client: &C,
        retention: Retention,
    ) -> Result<u64> {
        let t = self.qualified();
        let (age, archive) = match retention {
            Retention::Keep => return Ok(0),
            Retention::Delete(age) => (age, false),
            Retention::Archive(age) => (age, true),
        };
        let doomed = format!(
            // `sent` and `completed` rows are the ones with either time set (the predicate of the
            // `_finished` index, which orders them by this expression).
            "SELECT id FROM {t} WHERE (sent_at IS NOT NULL OR completed_at IS NOT NULL) \
             AND coalesce(completed_at, sent_at) < now() - $1 * interval '1 millisecond' \
             ORDER BY coalesce(completed_at, sent_at) LIMIT 10000"
        );
        let sql = if archive {
            format!(
                "WITH moved AS (DELETE FROM {t} WHERE id IN ({doomed}) RETURNING *) \
                 INSERT INTO {t}_archive SELECT * FROM moved"
            )
        } else {
            format!("DELETE FROM {t} WHERE id IN ({doomed})")
        };
        client
            .execute(&sql, &[&(age.as_millis() as f64)])
            .await
            .map_err(pg("pruning published events"))
    }
}

/// For `herald outbox status`: connect, read the status of `outbox`, disconnect. Print it with
/// `{}` (a table) or serialize it (JSON); [`OutboxStatus::metrics`] gives the gauges.
pub async fn status(conninfo: &str, outbox: &PgOutbox) -> Result<OutboxStatus> {
    let client = connect(conninfo).await?;
    outbox.status(&client).await
}

/// For `herald outbox trigger --table ...`: connect, create the outbox table if needed, install
/// the trigger.
pub async fn install_trigger(conninfo: &str, outbox: &PgOutbox, spec: &TriggerSpec) -> Result<()> {
    let mut client = connect(conninfo).await?;
    outbox.migrate(&mut client).await?;
    spec.install(&client, outbox).await
}

async fn connect(conninfo: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(pg("connecting to PostgreSQL"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}
