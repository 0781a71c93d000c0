//! The event store on PostgreSQL (`tokio-postgres`), with its outbox in the same schema.
//!
//! An append is one statement: it moves the stream's version (the optimistic-concurrency check
//! and the per-stream lock), inserts the events and stages them in the outbox, so the store and
//! the bus never disagree. Readers of the global order read in `(tx_id, position)` order and only
//! below `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still in flight: an
//! event a slow transaction commits late has a lower transaction id than anything read past it,
//! so no reader skips it. A long-open transaction on the server holds readers back (it shows as
//! projection lag); it never makes them skip.
//!
//! ```no_run
//! use herald_es::postgres::PgEventStore;
//! # async fn f() -> herald_es::Result<()> {
//! let store = PgEventStore::builder("host=127.0.0.1 user=postgres dbname=app")
//!     .schema("orders")
//!     .service("order-service")
//!     .connect()
//!     .await?; // creates the tables (and the outbox) when missing
//! # Ok(()) }
//! ```

mod pool;
mod projection;
mod saga;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::Envelope;
use herald_outbox::postgres::PgOutbox;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};

pub use pool::{connect_client, PgConnection, PgPool, Pooled};
pub use projection::{PgProjection, PgProjector};

use crate::error::{ident, pg, Error, Result};
use crate::recorded::{rows, Checkpoint, EncodedEvent, RecordedEvent, StoredRow};
use crate::store::{Appended, Backlog, EventStore, ExpectedVersion, ProjectionInfo, Snapshot};
use crate::telemetry;
use crate::upcast::Upcasters;

/// How to reach and lay out a PostgreSQL event store. From [`PgEventStore::builder`].
#[derive(Debug, Clone)]
pub struct PgEventStoreBuilder {
    conninfo: String,
    schema: String,
    service: String,
    pool_size: usize,
    upcasters: Upcasters,
    notify: Option<bool>,
}

impl PgEventStoreBuilder {
    /// Turn the outbox's `NOTIFY` wake-up hint on or off (on after the first migration; one
    /// transaction at a time notifies, so concurrent appends and saga transitions still share
    /// WAL flushes). Off, relays find new rows by polling. See [`PgOutbox::set_notify`].
    pub fn outbox_notify(mut self, enabled: bool) -> Self {
        self.notify = Some(enabled);
        self
    }

    /// The schema holding the store's tables and its outbox (default `public`).
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_string();
        self
    }

    /// The service the events are published as (default `herald-es`).
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_string();
        self
    }

    /// The most connections the store opens (default 8).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Upcast old event versions on read.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Connect and create (or upgrade) the tables, the outbox's included.
    pub async fn connect(self) -> Result<PgEventStore> {
        let schema = ident(&self.schema)?.to_string();
        let outbox = PgOutbox::new(&self.service)?.schema(&schema)?;
        let store = PgEventStore {
            sql: Arc::new(Sql::new(&schema, &outbox.qualified())),
            saga_sql: saga::SagaSql::new(&schema, &outbox.qualified()),
            pool: PgPool::new(&self.conninfo, self.pool_size),
            schema,
            service: self.service,
            outbox,
            upcasters: self.upcasters,
            appended: Notify::new(),
        };
        store.migrate().await?;
        if let Some(enabled) = self.notify {
            let client = connect_client(store.pool.conninfo()).await?;
            store.outbox.set_notify(&client, enabled).await?;
        }
        Ok(store)
    }
}

/// An event store (and saga store) in one PostgreSQL schema.
pub struct PgEventStore {
    pool: PgPool,
    schema: String,
    service: String,
    outbox: PgOutbox,
    upcasters: Upcasters,
    appended: Notify,
    sql: Arc<Sql>,
    saga_sql: saga::SagaSql,
}

/// The statements, with the schema spliced in once.
struct Sql {
    append_new: String,
    append_next: String,
    read_stream: String,
    read_all: String,
    backlog: String,
    stream_version: String,
}

const APPEND_TAIL: &str = "
), e AS (
    INSERT INTO {s}.es_events (stream_id, version, event_id, event_type, event_version, headers, body)
    SELECT $1, s.version - $3 + u.n, u.i, u.t, u.v, u.h, u.b
    FROM s, unnest($4::text[], $5::text[], $6::int[], $7::text[], $8::text[]) WITH ORDINALITY AS u(i, t, v, h, b, n)
    ORDER BY u.n
    RETURNING position, version
), o AS (
    INSERT INTO {outbox} (event_id, aggregate, routing_key, event_type, headers, body)
    SELECT u.i, $1, u.k, u.t, u.h::jsonb, u.b
    FROM s, unnest($4::text[], $9::text[], $5::text[], $7::text[], $8::text[]) WITH ORDINALITY AS u(i, k, t, h, b, n)
    ORDER BY u.n
)
SELECT (SELECT version FROM s), (SELECT array_agg(position ORDER BY version) FROM e)";

const COLUMNS: &str = "position, tx_id::text::bigint, stream_id, version, event_id, event_type, event_version, headers, body, recorded_at";

impl Sql {
    fn new(schema: &str, outbox: &str) -> Self {
        let tail = APPEND_TAIL
            .replace("{s}", schema)
            .replace("{outbox}", outbox);
        Sql {
            // A new stream: the row must not exist (a concurrent creator makes this one wait,
            // then find it and insert nothing: a conflict).
            append_new: format!(
                "WITH s AS (
                    INSERT INTO {schema}.es_streams (stream_id, version)
                    SELECT $1, $3::bigint WHERE $2::bigint = 0
                    ON CONFLICT (stream_id) DO NOTHING
                    RETURNING version{tail}"
            ),
            append_next: format!(
                "WITH s AS (
                    UPDATE {schema}.es_streams SET version = version + $3::bigint, updated_at = now()
                    WHERE stream_id = $1 AND version = $2::bigint
                    RETURNING version{tail}"
            ),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {schema}.es_events WHERE stream_id = $1 AND version > $2 ORDER BY version"
            ),
            read_all: format!(
                "SELECT {COLUMNS} FROM {schema}.es_events
                 WHERE (tx_id, position) > ($1::bigint::text::xid8, $2::bigint)
                   AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY tx_id, position LIMIT $3"
            ),
            backlog: format!(
                "SELECT count(*)::bigint, min(recorded_at) FROM {schema}.es_events
                 WHERE (tx_id, position) > ($1::bigint::text::xid8, $2::bigint)"
            ),
            stream_version: format!(
                "SELECT version FROM {schema}.es_streams WHERE stream_id = $1"
            ),
        }
    }
}

fn stored(r: &Row) -> StoredRow {
    StoredRow {
        checkpoint: Checkpoint {
            position: r.get::<_, i64>(0).max(0) as u64,
            tx: r.get::<_, i64>(1).max(0) as u64,
        },
        stream_id: r.get(2),
        version: r.get::<_, i64>(3).max(0) as u64,
        event_id: r.get(4),
        event_type: r.get(5),
        event_version: r.get::<_, i32>(6).max(0) as u32,
        headers: r.get(7),
        body: r.get(8),
        recorded_at: r.get(9),
    }
}

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The columns of an append, one array each.
struct Columns {
    ids: Vec<String>,
    types: Vec<String>,
    versions: Vec<i32>,
    headers: Vec<String>,
    bodies: Vec<String>,
    keys: Vec<String>,
}

fn columns(rows: Vec<EncodedEvent>) -> Columns {
    let mut c = Columns {
        ids: Vec::with_capacity(rows.len()),
        types: Vec::with_capacity(rows.len()),
        versions: Vec::with_capacity(rows.len()),
        headers: Vec::with_capacity(rows.len()),
        bodies: Vec::with_capacity(rows.len()),
        keys: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        c.ids.push(r.staged.event_id);
        c.types.push(r.staged.event_type);
        c.versions.push(r.event_version.min(i32::MAX as u32) as i32);
        c.headers.push(r.staged.headers);
        c.bodies.push(r.staged.body);
        c.keys.push(r.staged.routing_key);
    }
    c
}

impl PgEventStore {
    /// Start describing a store on `conninfo` (libpq key/value or a `postgres://` URL).
    pub fn builder(conninfo: &str) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            conninfo: conninfo.to_string(),
            schema: "public".into(),
            service: "herald-es".into(),
            pool_size: 8,
            upcasters: Upcasters::new(),
            notify: None,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The outbox the store stages its events in (run a [`herald_outbox::Relay`] over it with
    /// [`herald_outbox::postgres::PgStore`]).
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    /// The connection pool (projections and sagas use it too).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Create or upgrade the tables (idempotent; safe from several processes at once).
    pub async fn migrate(&self) -> Result<()> {
        let mut client = connect_client(self.pool.conninfo()).await?;
        schema::migrate(&mut client, &self.schema).await?;
        self.outbox.migrate(&mut client).await?;
        Ok(())
    }

    /// Append inside the caller's transaction, so other writes commit (or roll back) with the
    /// events. The append must be the transaction's first write: it fixes the transaction's
    /// place in the readers' order (a transaction that wrote before is refused with
    /// [`Error::Data`]). Nothing is counted or announced until the caller commits.
    pub async fn append_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<Appended> {
        let wrote: Option<String> = tx
            .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
            .await
            .map_err(pg("checking the transaction"))?
            .get(0);
        if wrote.is_some() {
            return Err(Error::Data(
                "append_in must be the transaction's first write: append first, then write the rest".into(),
            ));
        }
        let expected = match expected.exact() {
            Some(v) => v,
            None => self.stream_version_on(tx, stream).await?,
        };
        let (sql, params) = self.append_params(stream, expected, &events)?;
        let row = tx
            .query_one(sql, &params.refs())
            .await
            .map_err(pg("appending events"))?;
        self.appended_or_conflict(tx, stream, expected, &events, &row)
            .await
    }

    fn append_params<'a>(
        &'a self,
        stream: &'a str,
        expected: u64,
        events: &[Envelope],
    ) -> Result<(&'a str, AppendParams<'a>)> {
        let encoded = rows(events, expected + 1)?;
        let sql = if expected == 0 {
            &self.sql.append_new
        } else {
            &self.sql.append_next
        };
        Ok((
            sql,
            AppendParams {
                stream,
                expected: i64_of(expected),
                count: events.len() as i64,
                columns: columns(encoded),
            },
        ))
    }

    async fn appended_or_conflict<C: GenericClient + Sync>(
        &self,
        client: &C,
        stream: &str,
        expected: u64,
        events: &[Envelope],
        row: &Row,
    ) -> Result<Appended> {
        let version: Option<i64> = row.get(0);
        match version {
            Some(v) => {
                let positions: Option<Vec<i64>> = row.get(1);
                Ok(Appended {
                    version: v.max(0) as u64,
                    event_ids: events.iter().map(|e| e.id.clone()).collect(),
                    positions: positions
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| p.max(0) as u64)
                        .collect(),
                })
            }
            None => Err(Error::Conflict {
                stream: stream.to_string(),
                expected: ExpectedVersion::Exact(expected),
                actual: self.stream_version_on(client, stream).await?,
            }),
        }
    }

    async fn stream_version_on<C: GenericClient + Sync>(
        &self,
        client: &C,
        stream: &str,
    ) -> Result<u64> {
        let row = client
            .query_opt(&self.sql.stream_version, &[&stream])
            .await
            .map_err(pg("reading a stream's version"))?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0))
    }

    async fn append_exact(
        &self,
        stream: &str,
        expected: u64,
        events: &[Envelope],
    ) -> Result<Appended> {
        let (sql, params) = self.append_params(stream, expected, events)?;
        let mut conn = self.pool.get().await?;
        let statement = conn.prepare(sql).await?;
        let row = conn
            .client()
            .query_one(&statement, &params.refs())
            .await
            .map_err(pg("appending events"))?;
        self.appended_or_conflict(conn.client(), stream, expected, events, &row)
            .await
    }
}

struct AppendParams<'a> {
    stream: &'a str,
    expected: i64,
    count: i64,
    columns: Columns,
}

impl AppendParams<'_> {
    fn refs(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.stream,
            &self.expected,
            &self.count,
            &self.columns.ids,
            &self.columns.types,
            &self.columns.versions,
            &self.columns.headers,
            &self.columns.bodies,
            &self.columns.keys,
        ]
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn service(&self) -> &str {
        &self.service
    }

    fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<Appended> {
        if events.is_empty() {
            return Ok(Appended {
                version: self.stream_version(stream).await?,
                event_ids: Vec::new(),
                positions: Vec::new(),
            });
        }
        let appended = match expected.exact() {
            Some(v) => self.append_exact(stream, v, &events).await?,
            // "Any" is an exact append at the version just read, retried when it moved: the
            // lock on the stream is then always taken after the previous writer committed,
            // which keeps the readers' order consistent with each stream's.
            None => {
                let mut attempt = 0;
                loop {
                    let v = self.stream_version(stream).await?;
                    match self.append_exact(stream, v, &events).await {
                        Err(Error::Conflict { .. }) if attempt < 100 => attempt += 1,
                        other => break other?,
                    }
                }
            }
        };
        telemetry::appended(events.len());
        self.appended.notify_waiters();
        Ok(appended)
    }

    async fn read_stream(&self, stream: &str, after_version: u64) -> Result<Vec<RecordedEvent>> {
        let mut conn = self.pool.get().await?;
        let statement = conn.prepare(&self.sql.read_stream).await?;
        let rows = conn
            .client()
            .query(&statement, &[&stream, &i64_of(after_version)])
            .await
            .map_err(pg("reading a stream"))?;
        drop(conn);
        rows.iter()
            .map(|r| stored(r).into_recorded(&self.upcasters))
            .collect()
    }

    async fn read_all(&self, after: Checkpoint, limit: usize) -> Result<Vec<RecordedEvent>> {
        let mut conn = self.pool.get().await?;
        let statement = conn.prepare(&self.sql.read_all).await?;
        let rows = conn
            .client()
            .query(
                &statement,
                &[
                    &i64_of(after.tx),
                    &i64_of(after.position),
                    &(limit.max(1) as i64),
                ],
            )
            .await
            .map_err(pg("reading events"))?;
        drop(conn);
        rows.iter()
            .map(|r| stored(r).into_recorded(&self.upcasters))
            .collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let conn = self.pool.get().await?;
        self.stream_version_on(conn.client(), stream).await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let conn = self.pool.get().await?;
        let row = conn
            .client()
            .query_opt(
                &format!(
                    "SELECT version, schema_version, state FROM {}.es_snapshots WHERE stream_id = $1",
                    self.schema
                ),
                &[&stream],
            )
            .await
            .map_err(pg("reading a snapshot"))?;
        row.map(|r| {
            let state: String = r.get(2);
            Ok(Snapshot {
                stream_id: stream.to_string(),
                version: r.get::<_, i64>(0).max(0) as u64,
                schema_version: r.get::<_, i32>(1).max(0) as u32,
                state: serde_json::from_str(&state)
                    .map_err(|e| Error::Data(format!("snapshot of {stream}: {e}")))?,
            })
        })
        .transpose()
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let conn = self.pool.get().await?;
        conn.client()
            .execute(
                &format!(
                    "INSERT INTO {}.es_snapshots (stream_id, version, schema_version, state) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version,
                         schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, taken_at = now()
                     WHERE {0}.es_snapshots.version <= EXCLUDED.version",
                    self.schema
                ),
                &[
                    &snapshot.stream_id,
                    &i64_of(snapshot.version),
                    &(snapshot.schema_version as i32),
                    &snapshot.state.to_string(),
                ],
            )
            .await
            .map_err(pg("saving a snapshot"))?;
        Ok(())
    }

    async fn backlog(&self, after: Checkpoint) -> Result<Backlog> {
        let mut conn = self.pool.get().await?;
        let statement = conn.prepare(&self.sql.backlog).await?;
        let row = conn
            .client()
            .query_one(&statement, &[&i64_of(after.tx), &i64_of(after.position)])
            .await
            .map_err(pg("measuring the backlog"))?;
        let oldest: Option<DateTime<Utc>> = row.get(1);
        Ok(Backlog {
            events: row.get::<_, i64>(0).max(0) as u64,
            oldest,
        })
    }

    async fn projections(&self) -> Result<Vec<ProjectionInfo>> {
        let rows = {
            let conn = self.pool.get().await?;
            conn.client()
                .query(
                    &format!(
                        "SELECT projection, tx_id, position, rebuild_requested_at IS NOT NULL, updated_at
                         FROM {}.es_checkpoints ORDER BY projection",
                        self.schema
                    ),
                    &[],
                )
                .await
                .map_err(pg("listing projections"))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let checkpoint = Checkpoint {
                tx: r.get::<_, i64>(1).max(0) as u64,
                position: r.get::<_, i64>(2).max(0) as u64,
            };
            out.push(ProjectionInfo {
                name: r.get(0),
                checkpoint,
                backlog: self.backlog(checkpoint).await?,
                rebuild_requested: r.get(3),
                updated_at: r.get(4),
            });
        }
        Ok(out)
    }

    async fn request_rebuild(&self, projection: &str) -> Result<()> {
        let conn = self.pool.get().await?;
        let n = conn
            .client()
            .execute(
                &format!(
                    "UPDATE {}.es_checkpoints SET rebuild_requested_at = now() WHERE projection = $1",
                    self.schema
                ),
                &[&projection],
            )
            .await
            .map_err(pg("requesting a rebuild"))?;
        if n == 0 {
            return Err(Error::UnknownProjection(projection.to_string()));
        }
        Ok(())
    }

    async fn wait_for_append(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.appended.notified()).await;
    }
}
