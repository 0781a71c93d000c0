//! Aggregates are plain Rust: a state that applies its events, and command handling that returns
//! new events or a domain error. A [`Repository`] loads them (snapshot + later events), runs a
//! command, appends with optimistic concurrency (retrying the command on a conflict) and takes
//! snapshots every N events.
//!
//! ```
//! use std::sync::Arc;
//! use herald::Event;
//! use herald_es::{event_set, Aggregate, Metadata, Repository};
//! use herald_es::sqlite::SqliteEventStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "counter.incremented")]
//! pub struct Incremented { pub by: u64 }
//!
//! event_set! {
//!     #[derive(Debug, Clone)]
//!     pub enum CounterEvent { Incremented(Incremented) }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("a counter cannot go above {0}")]
//! pub struct TooHigh(u64);
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct Counter { value: u64 }
//!
//! impl Aggregate for Counter {
//!     const KIND: &'static str = "counter";
//!     type Event = CounterEvent;
//!     type Command = u64; // "add this much"
//!     type Error = TooHigh;
//!
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event {
//!             CounterEvent::Incremented(e) => self.value += e.by,
//!         }
//!     }
//!
//!     fn handle(&self, by: &u64) -> Result<Vec<CounterEvent>, TooHigh> {
//!         if self.value + by > 10 {
//!             return Err(TooHigh(10));
//!         }
//!         Ok(vec![Incremented { by: *by }.into()])
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(SqliteEventStore::open(dir.path().join("es.db"), "counter-service")?);
//! let counters = Repository::<Counter>::new(store).snapshot_every(2);
//! counters.handle("c1", &4, &Metadata::new()).await.unwrap();
//! let done = counters.handle("c1", &5, &Metadata::new()).await.unwrap();
//! assert_eq!((done.state.value, done.version), (9, 2));
//! assert!(counters.handle("c1", &5, &Metadata::new()).await.unwrap_err().domain().is_some());
//! # Ok::<(), herald_es::Error>(())
//! # }).unwrap();
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CommandError, Error, Result};
use crate::event_set::EventSet;
use crate::recorded::{encode, Metadata};
use crate::store::{EventStore, ExpectedVersion, Snapshot};
use crate::telemetry;

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stream prefix: instance `42` of kind `order` is stream `order-42`.
    const KIND: &'static str;
    /// The schema version of the serialized state in snapshots; bump it when the state's shape
    /// changes and old snapshots are ignored.
    const SNAPSHOT_VERSION: u32 = 1;
    /// Its events.
    type Event: EventSet;
    /// What it is asked to do.
    type Command: Send + Sync;
    /// Why it refuses.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Fold one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Decide: the events a command produces, or why it is refused. Pure: it may run again
    /// after a conflict.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// An aggregate as loaded: its state and the stream version it includes.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version (0: no events yet).
    pub version: u64,
}

/// What a command did: the state after it, the stream version and the new events' ids.
#[derive(Debug, Clone)]
pub struct Executed<A> {
    /// The state after the command.
    pub state: A,
    /// The stream version after the command.
    pub version: u64,
    /// The ids of the events appended (none when the command produced no events).
    pub event_ids: Vec<String>,
}

/// Loads, runs commands on, and saves aggregates of type `A`.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshot_every: Option<u64>,
    attempts: u32,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            snapshot_every: self.snapshot_every,
            attempts: self.attempts,
            _a: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// On `store`, no snapshots, 10 attempts per command.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Repository {
            store,
            snapshot_every: None,
            attempts: 10,
            _a: PhantomData,
        }
    }

    /// Save a snapshot each time the stream passes a multiple of `n` events (0: never).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = (n > 0).then_some(n);
        self
    }

    /// Run a command at most this many times when appends conflict (at least 1).
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The stream of instance `id`: `<KIND>-<id>`.
    pub fn stream_id(id: &str) -> String {
        format!("{}-{id}", A::KIND)
    }

    /// Load instance `id`: the snapshot (if any, and of the current schema) plus the events
    /// after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = Self::stream_id(id);
        let (mut state, mut version) = match self.store.load_snapshot(&stream).await? {
            Some(s) if s.schema_version == A::SNAPSHOT_VERSION => {
                match serde_json::from_value::<A>(s.state) {
                    Ok(state) => (state, s.version),
                    Err(e) => {
                        tracing::warn!(stream, error = %e, "snapshot does not decode; rebuilding from the events");
                        (A::default(), 0)
                    }
                }
            }
            _ => (A::default(), 0),
        };
        for recorded in self.store.read_stream(&stream, version).await? {
            let event = recorded
                .decode::<A::Event>()?
                .ok_or_else(|| Error::Foreign {
                    stream: stream.clone(),
                    event_type: recorded.envelope.event_type.clone(),
                })?;
            state.apply(&event);
            version = recorded.version;
        }
        Ok(Loaded { state, version })
    }

    /// Run `command` on instance `id` ([`Aggregate::handle`]), retrying on conflicts.
    pub async fn handle(
        &self,
        id: &str,
        command: &A::Command,
        meta: &Metadata,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        self.execute(id, meta, |state| state.handle(command)).await
    }

    /// Run a command given as a function of the state: load, decide, append at the loaded
    /// version; on a conflict load again and decide again.
    pub async fn execute<F>(
        &self,
        id: &str,
        meta: &Metadata,
        decide: F,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        F: Fn(&A) -> Result<Vec<A::Event>, A::Error> + Send + Sync,
    {
        let stream = Self::stream_id(id);
        for _ in 0..self.attempts {
            let Loaded { mut state, version } = self.load(id).await?;
            let events = decide(&state).map_err(CommandError::Domain)?;
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    version,
                    event_ids: Vec::new(),
                });
            }
            let envelopes = encode(&events, self.store.service(), &stream, meta)?;
            match self
                .store
                .append(&stream, ExpectedVersion::Exact(version), envelopes)
                .await
            {
                Ok(appended) => {
                    for e in &events {
                        state.apply(e);
                    }
                    self.maybe_snapshot(&stream, &state, version, appended.version)
                        .await;
                    return Ok(Executed {
                        state,
                        version: appended.version,
                        event_ids: appended.event_ids,
                    });
                }
                Err(Error::Conflict { .. }) => {
                    telemetry::append_conflict();
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::TooManyConflicts {
            what: stream,
            attempts: self.attempts,
        }
        .into())
    }

    /// Save a snapshot when the append crossed a multiple of `snapshot_every`. A snapshot is a
    /// cache: failing to save one is logged, and loading then reads more events.
    async fn maybe_snapshot(&self, stream: &str, state: &A, before: u64, after: u64) {
        let Some(n) = self.snapshot_every else {
            return;
        };
        if before / n == after / n {
            return;
        }
        let saved = match serde_json::to_value(state) {
            Ok(value) => {
                self.store
                    .save_snapshot(&Snapshot {
                        stream_id: stream.to_string(),
                        version: after,
                        schema_version: A::SNAPSHOT_VERSION,
                        state: value,
                    })
                    .await
            }
            Err(e) => Err(Error::Data(format!("the state does not serialize: {e}"))),
        };
        if let Err(e) = saved {
            tracing::warn!(stream, error = %e, "could not save a snapshot");
        }
    }
}
