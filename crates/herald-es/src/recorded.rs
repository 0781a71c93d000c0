//! What the store gives back: a recorded event with its position, and the metadata an append
//! carries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald::{Envelope, Event};
use herald_outbox::StagedEvent;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event_set::EventSet;
use crate::upcast::Upcasters;

/// Header carrying an event's version within its stream (on the stored and published envelope).
pub const STREAM_VERSION_HEADER: &str = "herald_stream_version";

/// A reader's place in the store's global order. Readers read in `(tx, position)` order:
/// `position` is the event's global sequence number, `tx` orders the transactions that wrote
/// (PostgreSQL: the writing transaction's id, so a reader reads only transactions older than
/// every one still in flight and never skips an event committed late; SQLite: always 0, its
/// single writer commits in position order).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Checkpoint {
    /// The writing transaction's order (0 on SQLite).
    pub tx: u64,
    /// The global position of the last event read.
    pub position: u64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint { tx: 0, position: 0 };
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tx == 0 {
            write!(f, "{}", self.position)
        } else {
            write!(f, "{}@tx{}", self.position, self.tx)
        }
    }
}

/// One stored event, as read back (already upcast to the current contract version).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where it is in the global order.
    pub checkpoint: Checkpoint,
    /// The stream (aggregate instance) it belongs to.
    pub stream_id: String,
    /// Its version within the stream, from 1.
    pub version: u64,
    /// When the store wrote it.
    pub recorded_at: DateTime<Utc>,
    /// The event: id, type, version, time, correlation, causation, traceparent, body.
    pub envelope: Envelope,
}

impl RecordedEvent {
    /// The global position.
    pub fn position(&self) -> u64 {
        self.checkpoint.position
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    /// The event name.
    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }

    /// Decode into one of a set's members; `Ok(None)` when it is none of them.
    pub fn decode<S: EventSet>(&self) -> Result<Option<S>> {
        S::from_envelope(&self.envelope)
    }

    /// Decode as `E` when it is an `E` (same name and version); `Ok(None)` otherwise.
    pub fn decode_as<E: Event>(&self) -> Result<Option<E>> {
        if self.envelope.event_type != E::NAME || self.envelope.event_version != E::VERSION {
            return Ok(None);
        }
        crate::event_set::__private::decode::<E>(&self.envelope).map(Some)
    }

    /// An event received from the bus rather than read from the store: no global position;
    /// the stream and version come from the subject and the `herald_stream_version` header.
    pub fn from_bus(envelope: Envelope) -> Self {
        let version = envelope
            .headers
            .get(STREAM_VERSION_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        RecordedEvent {
            checkpoint: Checkpoint::START,
            stream_id: envelope.subject.clone().unwrap_or_default(),
            version,
            recorded_at: envelope.time,
            envelope,
        }
    }
}

/// The flow an append belongs to: correlation, causation, trace, extra headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The business flow's id; none starts a flow at the first event.
    pub correlation_id: Option<String>,
    /// The id of the message that caused this append.
    pub causation_id: Option<String>,
    /// W3C trace context; none continues the trace in force (or starts one per event).
    pub traceparent: Option<String>,
    /// Extra headers stored and published with each event.
    pub headers: BTreeMap<String, String>,
}

impl Metadata {
    /// No correlation: the events start a flow.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caused by the message a Herald handler is handling: its correlation (or its id) and its
    /// id as causation. The trace continues by itself (the handler's trace is in force).
    pub fn caused_by(ctx: &herald::Context) -> Self {
        Self::caused_by_envelope(ctx.envelope())
    }

    /// Caused by an envelope (a message, or a recorded event's).
    pub fn caused_by_envelope(envelope: &Envelope) -> Self {
        Metadata {
            correlation_id: Some(envelope.correlation_or_id().to_string()),
            causation_id: Some(envelope.id.clone()),
            traceparent: None,
            headers: BTreeMap::new(),
        }
    }

    /// With this correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Fill an envelope's flow fields.
    pub(crate) fn apply(&self, envelope: &mut Envelope) {
        envelope.correlation_id.clone_from(&self.correlation_id);
        envelope.causation_id.clone_from(&self.causation_id);
        envelope.traceparent.clone_from(&self.traceparent);
        envelope
            .headers
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// An event ready to be written: the outbox row (id, type, routing key, headers, body) and the
/// contract version. The stored headers are the outbox's, so what the store keeps and what the
/// relay publishes are the same bytes.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEvent {
    pub staged: StagedEvent,
    pub event_version: u32,
}

/// Build the envelopes of an append to `stream` whose first event gets version `first_version`.
pub(crate) fn encode<S: EventSet>(
    events: &[S],
    service: &str,
    stream: &str,
    meta: &Metadata,
) -> Result<Vec<Envelope>> {
    events
        .iter()
        .map(|e| {
            let mut envelope = e.to_envelope(service)?;
            meta.apply(&mut envelope);
            envelope.subject = Some(stream.to_string());
            Ok(envelope)
        })
        .collect()
}

/// Encode envelopes into rows, stamping each with its stream version.
pub(crate) fn rows(envelopes: &[Envelope], first_version: u64) -> Result<Vec<EncodedEvent>> {
    envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.headers.insert(
                STREAM_VERSION_HEADER.to_string(),
                (first_version + i as u64).to_string(),
            );
            Ok(EncodedEvent {
                staged: StagedEvent::from_envelope(&e)?,
                event_version: e.event_version,
            })
        })
        .collect()
}

/// A stored row, before decoding.
pub(crate) struct StoredRow {
    pub checkpoint: Checkpoint,
    pub stream_id: String,
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    pub event_version: u32,
    pub headers: String,
    pub body: String,
    pub recorded_at: DateTime<Utc>,
}

impl StoredRow {
    /// The recorded event, upcast.
    pub fn into_recorded(self, upcasters: &Upcasters) -> Result<RecordedEvent> {
        let mut map: BTreeMap<String, String> = match serde_json::from_str(&self.headers) {
            Ok(serde_json::Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
            _ => {
                return Err(Error::Data(format!(
                    "event {} has headers that are not a JSON object",
                    self.event_id
                )))
            }
        };
        map.insert(herald::envelope::header::ID.into(), self.event_id);
        map.insert(
            herald::envelope::header::TYPE.into(),
            self.event_type.clone(),
        );
        map.insert(
            herald::envelope::header::EVENT_VERSION.into(),
            self.event_version.to_string(),
        );
        map.insert(
            herald::envelope::header::SUBJECT.into(),
            self.stream_id.clone(),
        );
        let routing_key = herald::event::routing_key_for(&self.event_type, self.event_version);
        let mut envelope = Envelope::from_headers(map, &routing_key, bytes::Bytes::from(self.body));
        upcasters.upcast(&mut envelope)?;
        Ok(RecordedEvent {
            checkpoint: self.checkpoint,
            stream_id: self.stream_id,
            version: self.version,
            recorded_at: self.recorded_at,
            envelope,
        })
    }
}
