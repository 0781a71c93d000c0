//! The event store on SQLite (`rusqlite`), with its outbox in the same file: the embedded
//! default, no server. Several processes may share the file (WAL, `BEGIN IMMEDIATE` writes).
//! SQLite has one writer at a time, so positions are assigned in commit order and a reader that
//! reads past its checkpoint skips nothing.
//!
//! ```
//! use herald_es::sqlite::SqliteEventStore;
//! use herald_es::{EventStore, ExpectedVersion};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteEventStore::open(dir.path().join("es.db"), "order-service")?;
//! let e = herald::Envelope::new("order.placed", 1, "order.placed", "x", bytes::Bytes::from_static(b"{}"));
//! let appended = store.append("order-1", ExpectedVersion::NoStream, vec![e]).await?;
//! assert_eq!(appended.version, 1);
//! let again = herald::Envelope::new("order.placed", 1, "order.placed", "x", bytes::Bytes::from_static(b"{}"));
//! assert!(matches!(store.append("order-1", ExpectedVersion::NoStream, vec![again]).await,
//!     Err(herald_es::Error::Conflict { actual: 1, .. })));
//! # Ok::<(), herald_es::Error>(())
//! # }).unwrap();
//! ```

mod projection;
mod saga;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::Envelope;
use herald_outbox::sqlite::SqliteOutbox;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::Notify;

pub use projection::{SqliteProjection, SqliteProjector};

use crate::error::{sql, Error, Result};
use crate::recorded::{rows, Checkpoint, RecordedEvent, StoredRow};
use crate::store::{Appended, Backlog, EventStore, ExpectedVersion, ProjectionInfo, Snapshot};
use crate::telemetry;
use crate::upcast::Upcasters;

const SCHEMA: &str = include_str!("schema.sql");
const MIGRATION: &str = "herald_es:0001_store";

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn time_of(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

/// An event store (and saga store) in one SQLite file.
pub struct SqliteEventStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    service: String,
    outbox: SqliteOutbox,
    upcasters: Upcasters,
    appended: Notify,
}

impl SqliteEventStore {
    /// Open (or create) the file and its tables, the outbox's included, publishing as
    /// `service`.
    pub fn open(path: impl AsRef<Path>, service: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Data(format!(
                    "cannot create the directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let conn = Connection::open(&path).map_err(sql("opening the database"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(sql("setting the busy timeout"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(sql("configuring the database"))?;
        let outbox = SqliteOutbox::new(service)?;
        migrate(&conn)?;
        outbox.migrate(&conn)?;
        Ok(SqliteEventStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            service: service.to_string(),
            outbox,
            upcasters: Upcasters::new(),
            appended: Notify::new(),
        })
    }

    /// Upcast old event versions on read.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The outbox the store stages its events in (relay it with
    /// [`herald_outbox::sqlite::SqliteStore`] on [`path`](Self::path)).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    /// Run `f` on the store's connection, on the blocking pool.
    pub async fn with_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS herald_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(sql("creating the migrations table"))?;
    let done: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM herald_migrations WHERE name = ?1",
            [MIGRATION],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading applied migrations"))?;
    if done.is_some() {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA}; INSERT OR IGNORE INTO herald_migrations (name, applied_at) VALUES ('{MIGRATION}', {}); COMMIT;",
        now_ms()
    ))
    .map_err(sql("applying the store's migration"))?;
    Ok(())
}

const COLUMNS: &str =
    "position, stream_id, version, event_id, event_type, event_version, headers, body, recorded_at";

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        checkpoint: Checkpoint {
            tx: 0,
            position: r.get::<_, i64>(0)?.max(0) as u64,
        },
        stream_id: r.get(1)?,
        version: r.get::<_, i64>(2)?.max(0) as u64,
        event_id: r.get(3)?,
        event_type: r.get(4)?,
        event_version: r.get::<_, i64>(5)?.max(0) as u32,
        headers: r.get(6)?,
        body: r.get(7)?,
        recorded_at: time_of(r.get(8)?),
    })
}

fn stream_version(conn: &Connection, stream: &str) -> Result<u64> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT version FROM es_streams WHERE stream_id = ?1",
            [stream],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading a stream's version"))?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// The append, in the caller's transaction.
fn append_on(
    tx: &rusqlite::Transaction<'_>,
    outbox: &SqliteOutbox,
    stream: &str,
    expected: ExpectedVersion,
    events: &[Envelope],
) -> Result<Appended> {
    let current = stream_version(tx, stream)?;
    if let Some(want) = expected.exact() {
        if want != current {
            return Err(Error::Conflict {
                stream: stream.to_string(),
                expected,
                actual: current,
            });
        }
    }
    let version = current + events.len() as u64;
    let now = now_ms();
    tx.execute(
        "INSERT INTO es_streams (stream_id, version, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        params![stream, version as i64, now],
    )
    .map_err(sql("moving a stream's version"))?;
    let mut positions = Vec::with_capacity(events.len());
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO es_events (stream_id, version, event_id, event_type, event_version, headers, body, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(sql("preparing the append"))?;
        for (i, row) in rows(events, current + 1)?.into_iter().enumerate() {
            insert
                .execute(params![
                    stream,
                    (current + 1 + i as u64) as i64,
                    row.staged.event_id,
                    row.staged.event_type,
                    row.event_version,
                    row.staged.headers,
                    row.staged.body,
                    now
                ])
                .map_err(sql("appending an event"))?;
            positions.push(tx.last_insert_rowid().max(0) as u64);
            outbox.stage_row(tx, &row.staged)?;
        }
    }
    Ok(Appended {
        version,
        event_ids: events.iter().map(|e| e.id.clone()).collect(),
        positions,
    })
}

#[async_trait]
impl EventStore for SqliteEventStore {
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
        let (outbox, stream_id, n) = (self.outbox.clone(), stream.to_string(), events.len());
        let appended = self
            .with_connection(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql("starting an append"))?;
                let appended = append_on(&tx, &outbox, &stream_id, expected, &events)?;
                tx.commit().map_err(sql("committing an append"))?;
                Ok(appended)
            })
            .await?;
        telemetry::appended(n);
        self.appended.notify_waiters();
        Ok(appended)
    }

    async fn read_stream(&self, stream: &str, after_version: u64) -> Result<Vec<RecordedEvent>> {
        let stream = stream.to_string();
        let rows = self
            .with_connection(move |c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM es_events WHERE stream_id = ?1 AND version > ?2 ORDER BY version"
                    ))
                    .map_err(sql("reading a stream"))?;
                let rows = st
                    .query_map(params![stream, after_version as i64], stored)
                    .map_err(sql("reading a stream"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("reading a stream"))?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|r| r.into_recorded(&self.upcasters))
            .collect()
    }

    async fn read_all(&self, after: Checkpoint, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = self
            .with_connection(move |c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM es_events WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ))
                    .map_err(sql("reading events"))?;
                let rows = st
                    .query_map(
                        params![after.position as i64, limit.max(1) as i64],
                        stored,
                    )
                    .map_err(sql("reading events"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("reading events"))?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|r| r.into_recorded(&self.upcasters))
            .collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let stream = stream.to_string();
        self.with_connection(move |c| stream_version(c, &stream))
            .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let stream = stream.to_string();
        self.with_connection(move |c| {
            let row: Option<(i64, i64, String)> = c
                .query_row(
                    "SELECT version, schema_version, state FROM es_snapshots WHERE stream_id = ?1",
                    [&stream],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(sql("reading a snapshot"))?;
            row.map(|(version, schema_version, state)| {
                Ok(Snapshot {
                    version: version.max(0) as u64,
                    schema_version: schema_version.max(0) as u32,
                    state: serde_json::from_str(&state)
                        .map_err(|e| Error::Data(format!("snapshot of {stream}: {e}")))?,
                    stream_id: stream.clone(),
                })
            })
            .transpose()
        })
        .await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let s = snapshot.clone();
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO es_snapshots (stream_id, version, schema_version, state, taken_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, schema_version = excluded.schema_version,
                     state = excluded.state, taken_at = excluded.taken_at
                 WHERE es_snapshots.version <= excluded.version",
                params![s.stream_id, s.version as i64, s.schema_version, s.state.to_string(), now_ms()],
            )
            .map_err(sql("saving a snapshot"))?;
            Ok(())
        })
        .await
    }

    async fn backlog(&self, after: Checkpoint) -> Result<Backlog> {
        self.with_connection(move |c| {
            let (n, oldest): (i64, Option<i64>) = c
                .query_row(
                    "SELECT count(*), min(recorded_at) FROM es_events WHERE position > ?1",
                    [after.position as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql("measuring the backlog"))?;
            Ok(Backlog {
                events: n.max(0) as u64,
                oldest: oldest.map(time_of),
            })
        })
        .await
    }

    async fn projections(&self) -> Result<Vec<ProjectionInfo>> {
        let rows = self
            .with_connection(|c| {
                let mut st = c
                    .prepare(
                        "SELECT projection, position, rebuild_requested_at IS NOT NULL, updated_at FROM es_checkpoints ORDER BY projection",
                    )
                    .map_err(sql("listing projections"))?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, bool>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(sql("listing projections"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("listing projections"))?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, position, rebuild_requested, updated) in rows {
            let checkpoint = Checkpoint {
                tx: 0,
                position: position.max(0) as u64,
            };
            out.push(ProjectionInfo {
                name,
                checkpoint,
                backlog: self.backlog(checkpoint).await?,
                rebuild_requested,
                updated_at: time_of(updated),
            });
        }
        Ok(out)
    }

    async fn request_rebuild(&self, projection: &str) -> Result<()> {
        let name = projection.to_string();
        let n = self
            .with_connection(move |c| {
                c.execute(
                    "UPDATE es_checkpoints SET rebuild_requested_at = ?2 WHERE projection = ?1",
                    params![name, now_ms()],
                )
                .map_err(sql("requesting a rebuild"))
            })
            .await?;
        if n == 0 {
            return Err(Error::UnknownProjection(projection.to_string()));
        }
        Ok(())
    }

    async fn wait_for_append(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.appended.notified()).await;
    }
}
