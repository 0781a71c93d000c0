//! The event store seam: what aggregates, projections and the CLI need from a database.
//! [`PgEventStore`](crate::postgres::PgEventStore) and
//! [`SqliteEventStore`](crate::sqlite::SqliteEventStore) implement it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::Envelope;
use serde::Serialize;

use crate::error::Result;
use crate::recorded::{Checkpoint, RecordedEvent};
use crate::upcast::Upcasters;

/// What an append expects of its stream (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever the stream's version is (new or not).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (0 = no stream).
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any version"),
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => write!(f, "no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// The exact version expected, 0 for no stream, `None` for any.
    pub fn exact(self) -> Option<u64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v),
        }
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// The appended events' ids, in order.
    pub event_ids: Vec<String>,
    /// Their global positions, in order.
    pub positions: Vec<u64>,
}

/// An aggregate's state saved at a version, so loading reads only the events after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: String,
    /// The stream version the state includes.
    pub version: u64,
    /// The state's own schema version (an aggregate's `SNAPSHOT_VERSION`); a snapshot of another
    /// schema is ignored and the state rebuilt from the events.
    pub schema_version: u32,
    /// The state, as JSON.
    pub state: serde_json::Value,
}

/// How far a reader is behind the store's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Backlog {
    /// Events after the checkpoint.
    pub events: u64,
    /// When the oldest of them was recorded.
    pub oldest: Option<DateTime<Utc>>,
}

impl Backlog {
    /// Seconds since the oldest unread event was recorded (0 when there is none).
    pub fn age_secs(&self) -> f64 {
        self.oldest
            .map(|t| ((Utc::now() - t).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0)
    }
}

/// A projection's row in the store: its checkpoint and whether a rebuild was asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionInfo {
    /// The projection's name.
    pub name: String,
    /// The last event it applied.
    pub checkpoint: Checkpoint,
    /// Events recorded after the checkpoint.
    pub backlog: Backlog,
    /// A rebuild was requested (`herald projections rebuild`) and not yet started.
    pub rebuild_requested: bool,
    /// When the checkpoint last moved.
    pub updated_at: DateTime<Utc>,
}

/// An event store. Reads return events upcast with the store's [`Upcasters`].
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The service events are published as (the outbox's service).
    fn service(&self) -> &str;

    /// The upcasters applied on read.
    fn upcasters(&self) -> &Upcasters;

    /// Append events to `stream` if it is at `expected`, and stage them in the outbox, in one
    /// transaction. The envelopes' subject is set to the stream. A version mismatch is
    /// [`Error::Conflict`](crate::Error::Conflict) and writes nothing.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<Appended>;

    /// The stream's events with a version above `after_version`, in order.
    async fn read_stream(&self, stream: &str, after_version: u64) -> Result<Vec<RecordedEvent>>;

    /// Up to `limit` events after `after` in the global order. Never returns an event while an
    /// earlier one may still commit.
    async fn read_all(&self, after: Checkpoint, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// The stream's version (0: no stream).
    async fn stream_version(&self, stream: &str) -> Result<u64>;

    /// The stream's snapshot, if one was saved.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>>;

    /// Save (replace) the stream's snapshot.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<()>;

    /// How many events come after `after`, and the oldest one's time.
    async fn backlog(&self, after: Checkpoint) -> Result<Backlog>;

    /// Every projection registered in this store.
    async fn projections(&self) -> Result<Vec<ProjectionInfo>>;

    /// Ask the process running `projection` to rebuild it from the first event.
    async fn request_rebuild(&self, projection: &str) -> Result<()>;

    /// Wait until an append from this process may have happened, or `max` passed. Readers in
    /// other processes find new events by polling.
    async fn wait_for_append(&self, max: Duration);
}
