//! What sagas need from a database: instances with optimistic concurrency, transitions committed
//! atomically with their outbox messages and timeouts, due timeouts, listings.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::Envelope;
use serde::Serialize;

use super::SagaStatus;
use crate::error::Result;

/// One stored instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaInstance {
    /// The instance id (from [`Saga::correlate`](super::Saga::correlate)).
    pub instance_id: String,
    /// The correlation id of the flow that started it.
    pub correlation_id: String,
    /// The state, as JSON.
    pub state: String,
    /// The state's short name.
    pub state_name: String,
    /// Its life cycle.
    pub status: SagaStatus,
    /// Transitions committed so far (the optimistic-concurrency version).
    pub version: u64,
    /// Remembered compensations, as JSON.
    pub compensations: String,
}

/// What caused a transition: its deduplication key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A message, by id: a second transition for the same id is a duplicate.
    Message(String),
    /// A stored timeout, by row id: it fires once (the row is deleted in the transition).
    Timeout(i64),
}

/// A timeout to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTimeout {
    /// Its key within the instance (a new one replaces an old one of the same key).
    pub key: String,
    /// When it comes due.
    pub due_at: DateTime<Utc>,
    /// Its payload, as JSON.
    pub payload: String,
}

/// One transition to commit atomically.
#[derive(Debug, Clone)]
pub struct SagaCommit {
    /// The saga.
    pub saga: String,
    /// The instance.
    pub instance_id: String,
    /// The flow's correlation id (kept from the instance's first message).
    pub correlation_id: String,
    /// The version the transition was computed from (0: the instance is new).
    pub expected_version: u64,
    /// The new state, as JSON.
    pub state: String,
    /// Its short name.
    pub state_name: String,
    /// The new life-cycle status.
    pub status: SagaStatus,
    /// Remembered compensations, as JSON.
    pub compensations: String,
    /// What caused it.
    pub trigger: Trigger,
    /// Messages to stage in the outbox.
    pub outbox: Vec<Envelope>,
    /// Timeouts to write.
    pub schedule: Vec<NewTimeout>,
    /// Keys of timeouts to drop.
    pub cancel: Vec<String>,
    /// Drop every timeout of the instance (it finished).
    pub cancel_all: bool,
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written.
    Committed,
    /// The trigger was handled before (or the timeout was cancelled or fired): nothing written.
    Duplicate,
    /// The instance moved since it was loaded: nothing written; load and run again.
    Conflict,
}

/// A timeout that came due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTimeout {
    /// Its row id.
    pub id: i64,
    /// The instance.
    pub instance_id: String,
    /// Its key.
    pub key: String,
    /// When it came due.
    pub due_at: DateTime<Utc>,
    /// Its payload, as JSON.
    pub payload: String,
}

/// Which instances to list.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceQuery {
    /// Only this saga's.
    pub saga: Option<String>,
    /// Only the stuck ones.
    pub stuck_only: bool,
    /// An active instance is stuck when it has no pending timeout and has not moved for this
    /// long, or when its next timeout is overdue by this long.
    pub stuck_after: Duration,
    /// At most this many (the oldest first).
    pub limit: usize,
}

impl Default for InstanceQuery {
    fn default() -> Self {
        InstanceQuery {
            saga: None,
            stuck_only: false,
            stuck_after: Duration::from_secs(60),
            limit: 1000,
        }
    }
}

/// An instance as listings show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaInstanceInfo {
    /// The saga.
    pub saga: String,
    /// The instance id.
    pub instance_id: String,
    /// The flow's correlation id.
    pub correlation_id: String,
    /// The state's short name.
    pub state_name: String,
    /// Its life cycle.
    pub status: SagaStatus,
    /// Transitions committed.
    pub version: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
    /// Seconds since it started.
    pub age_secs: f64,
    /// Seconds since it last moved.
    pub idle_secs: f64,
    /// Its next pending timeout.
    pub next_timeout_at: Option<DateTime<Utc>>,
    /// Active, and neither moving nor waiting for a timeout that is still to come.
    pub stuck: bool,
}

impl SagaInstanceInfo {
    /// Fill in ages and the stuck flag from the stored times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        saga: String,
        instance_id: String,
        correlation_id: String,
        state_name: String,
        status: SagaStatus,
        version: u64,
        started_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        next_timeout_at: Option<DateTime<Utc>>,
        stuck_after: Duration,
    ) -> Self {
        let now = Utc::now();
        let secs = |t: DateTime<Utc>| (now - t).num_milliseconds().max(0) as f64 / 1000.0;
        let limit = stuck_after.as_secs_f64();
        let stuck = status == SagaStatus::Active
            && match next_timeout_at {
                None => secs(updated_at) > limit,
                Some(due) => secs(due) > limit,
            };
        SagaInstanceInfo {
            saga,
            instance_id,
            correlation_id,
            state_name,
            status,
            version,
            age_secs: secs(started_at),
            idle_secs: secs(updated_at),
            started_at,
            updated_at,
            next_timeout_at,
            stuck,
        }
    }
}

/// A database sagas keep their instances in. The event stores implement it.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// The service the sagas' messages are published as.
    fn saga_service(&self) -> &str;

    /// An instance, without locking it.
    async fn load_instance(&self, saga: &str, instance_id: &str) -> Result<Option<SagaInstance>>;

    /// Commit a transition in one transaction: record the trigger, compare-and-set the
    /// instance, stage the outbox messages, write and drop timeouts.
    async fn commit_transition(&self, commit: &SagaCommit) -> Result<CommitOutcome>;

    /// Up to `limit` timeouts of `saga` that are due, the earliest first.
    async fn due_timeouts(&self, saga: &str, limit: usize) -> Result<Vec<DueTimeout>>;

    /// Drop a timeout whose instance is gone.
    async fn drop_timeout(&self, id: i64) -> Result<()>;

    /// Instances, the oldest first.
    async fn instances(&self, query: &InstanceQuery) -> Result<Vec<SagaInstanceInfo>>;
}
