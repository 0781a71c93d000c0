//! The envelope: one message on the wire, its CloudEvents attributes and its JSON body.
//!
//! Herald uses CloudEvents *binary mode*: the body is the event's own JSON, and the attributes
//! travel as transport headers named `cloudEvents_<attribute>` (the AMQP binding's prefix), so a
//! plain client in any language reads the body as ordinary JSON. `docs/wire-format.md` lists them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{Error, Result};
use crate::event::Event;

/// Header names, shared by every transport so they all speak the same wire format.
pub mod header {
    /// CloudEvents `id`.
    pub const ID: &str = "cloudEvents_id";
    /// CloudEvents `source`: the publishing service.
    pub const SOURCE: &str = "cloudEvents_source";
    /// CloudEvents `type`: the event name.
    pub const TYPE: &str = "cloudEvents_type";
    /// CloudEvents `specversion`.
    pub const SPEC_VERSION: &str = "cloudEvents_specversion";
    /// CloudEvents `time`, RFC 3339 in UTC.
    pub const TIME: &str = "cloudEvents_time";
    /// CloudEvents `datacontenttype`.
    pub const CONTENT_TYPE: &str = "cloudEvents_datacontenttype";
    /// CloudEvents `subject`.
    pub const SUBJECT: &str = "cloudEvents_subject";
    /// Extension: the contract version.
    pub const EVENT_VERSION: &str = "cloudEvents_eventversion";
    /// Extension: the id shared by every event of one business flow.
    pub const CORRELATION_ID: &str = "cloudEvents_correlationid";
    /// Extension: the id of the event whose handler published this one.
    pub const CAUSATION_ID: &str = "cloudEvents_causationid";
    /// Extension (distributed tracing): W3C trace context.
    pub const TRACEPARENT: &str = "cloudEvents_traceparent";
    /// Herald: the delivery attempt (1 for the first delivery).
    pub const ATTEMPT: &str = "herald_attempt";
    /// Herald: the last handler error, on retried and dead-lettered messages.
    pub const ERROR: &str = "herald_error";
    /// Herald: the failure kind (`handler`, `timeout`, `panic`, `decode`, `schema`, ...).
    pub const ERROR_KIND: &str = "herald_error_kind";
    /// Herald: the queue the failure happened on.
    pub const ORIGINAL_QUEUE: &str = "herald_original_queue";
    /// Herald: the routing key the message was first published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "herald_original_routing_key";
    /// Herald: when the first failure happened.
    pub const FIRST_FAILURE: &str = "herald_first_failure";
    /// Herald: when the last failure happened.
    pub const LAST_FAILURE: &str = "herald_last_failure";
    /// Herald: when the message was dead-lettered.
    pub const DEAD_LETTERED_AT: &str = "herald_dead_lettered_at";
    /// Herald request/reply: the routing key the reply goes to (the requester's reply queue).
    pub const REPLY_TO: &str = "herald_reply_to";
    /// Herald request/reply: the exchange the requester's reply queue is bound on.
    pub const REPLY_EXCHANGE: &str = "herald_reply_exchange";
    /// Herald request/reply: on a reply, the responder's error instead of an answer.
    pub const REPLY_ERROR: &str = "herald_reply_error";
}

/// The CloudEvents spec version Herald writes.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every body Herald writes.
pub const JSON: &str = "application/json";

/// One message: attributes plus body. Transports store and carry it; handlers read it through
/// [`Context`](crate::Context).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id (UUIDv7 for Herald events; whatever a foreign publisher sent otherwise).
    pub id: String,
    /// The publishing service.
    pub source: String,
    /// The event name (CloudEvents `type`).
    pub event_type: String,
    /// The contract version.
    pub event_version: u32,
    /// The routing key on the topic exchange.
    pub routing_key: String,
    /// When the event happened, in UTC.
    pub time: DateTime<Utc>,
    /// The body's content type.
    pub content_type: String,
    /// Optional CloudEvents subject (e.g. the aggregate id).
    pub subject: Option<String>,
    /// The id shared by every event of one business flow.
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// Priority 0..=9 (higher first where the transport supports it).
    pub priority: u8,
    /// Time to live: the message expires if not consumed within it.
    pub ttl: Option<Duration>,
    /// Delivery attempt, 1 for the first delivery. Set by the transport on delivery.
    pub attempt: u32,
    /// Other headers: extensions and failure metadata.
    pub headers: BTreeMap<String, String>,
    /// The body: the event's JSON.
    pub body: Bytes,
}

impl Envelope {
    /// Build the envelope for a typed event published by `source`.
    pub fn for_event<E: Event>(event: &E, source: &str) -> Result<Self> {
        // Sized for a typical event up front: growing from empty costs three reallocations.
        let mut body = Vec::with_capacity(256);
        serde_json::to_writer(&mut body, event).map_err(|source| Error::Encode {
            event: E::NAME.to_string(),
            source,
        })?;
        Ok(Self::new(
            E::NAME,
            E::VERSION,
            E::ROUTING_KEY,
            source,
            body.into(),
        ))
    }

    /// Build an envelope around an already-encoded JSON body.
    pub fn new(
        event_type: &str,
        event_version: u32,
        routing_key: &str,
        source: &str,
        body: Bytes,
    ) -> Self {
        let (id, time) = new_id_and_time();
        Envelope {
            id,
            source: source.to_string(),
            event_type: event_type.to_string(),
            event_version,
            routing_key: routing_key.to_string(),
            time,
            content_type: JSON.to_string(),
            subject: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            priority: 0,
            ttl: None,
            attempt: 1,
            headers: BTreeMap::new(),
            body,
        }
    }

    /// The body for display: its JSON value, or, when it is not JSON (a foreign publisher's
    /// text or bytes), a string of it with invalid UTF-8 replaced.
    ///
    /// ```
    /// let e = herald::Envelope::new("a.b", 1, "a.b", "svc", bytes::Bytes::from_static(b"plain"));
    /// assert_eq!(e.body_value(), serde_json::json!("plain"));
    /// ```
    pub fn body_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        })
    }

    /// The correlation id, falling back to the event's own id (a flow starts at its first event).
    pub fn correlation_or_id(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or(&self.id)
    }

    /// The headers to put on the wire: CloudEvents attributes, Herald extensions, then the rest.
    pub fn wire_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(12);
        self.for_each_wire_header(|_| true, |name, value| out.push((name, value.into_owned())));
        out
    }

    /// Visit the wire headers `wanted` accepts, without collecting them: values that are fields
    /// are lent, and those that must be formatted (the time) are formatted only when wanted, so
    /// a transport that leaves some out allocates nothing for them.
    pub fn for_each_wire_header(
        &self,
        wanted: impl Fn(&'static str) -> bool,
        mut visit: impl FnMut(&'static str, Cow<'_, str>),
    ) {
        let lent = [
            (header::ID, &self.id),
            (header::SOURCE, &self.source),
            (header::TYPE, &self.event_type),
        ];
        for (name, value) in lent {
            if wanted(name) {
                visit(name, Cow::Borrowed(value));
            }
        }
        if wanted(header::SPEC_VERSION) {
            visit(header::SPEC_VERSION, Cow::Borrowed(SPEC_VERSION));
        }
        if wanted(header::TIME) {
            visit(header::TIME, Cow::Owned(format_time(&self.time)));
        }
        if wanted(header::CONTENT_TYPE) {
            visit(header::CONTENT_TYPE, Cow::Borrowed(&self.content_type));
        }
        if wanted(header::EVENT_VERSION) {
            visit(header::EVENT_VERSION, number(self.event_version));
        }
        if wanted(header::ATTEMPT) {
            visit(header::ATTEMPT, number(self.attempt));
        }
        let optional = [
            (header::SUBJECT, &self.subject),
            (header::CORRELATION_ID, &self.correlation_id),
            (header::CAUSATION_ID, &self.causation_id),
            (header::TRACEPARENT, &self.traceparent),
        ];
        for (name, value) in optional {
            if let Some(v) = value.as_ref().filter(|_| wanted(name)) {
                visit(name, Cow::Borrowed(v));
            }
        }
    }

    /// All headers as one map: the wire headers plus [`Envelope::headers`]. Transports that store
    /// a flat map (SQLite) use this with [`Envelope::from_headers`].
    pub fn header_map(&self) -> BTreeMap<String, String> {
        let mut map = self.headers.clone();
        for (k, v) in self.wire_headers() {
            map.insert(k.to_string(), v);
        }
        map
    }

    /// Rebuild an envelope from a header map, routing key and body. Missing CloudEvents
    /// attributes (a foreign publisher) get defaults: a fresh id, `unknown` source, the routing
    /// key as type, the receive time.
    pub fn from_headers(headers: BTreeMap<String, String>, routing_key: &str, body: Bytes) -> Self {
        let mut attributes = ReceivedAttributes::default();
        for (k, v) in headers {
            attributes.set(k, Cow::Owned(v));
        }
        attributes.into_envelope(routing_key.to_string(), body)
    }

    /// True when the envelope carries failure metadata from an earlier attempt.
    pub fn last_error(&self) -> Option<&str> {
        self.headers.get(header::ERROR).map(String::as_str)
    }
}

/// The attributes of a received message, gathered one header at a time: a transport feeds
/// its own header format in without building a map of strings first, and an attribute costs
/// one allocation (none for those parsed, like the time, or dropped, like the spec version).
///
/// ```
/// use std::borrow::Cow;
/// use herald::envelope::{header, ReceivedAttributes};
///
/// let mut received = ReceivedAttributes::default();
/// received.set(header::TYPE, Cow::Borrowed("order.placed"));
/// received.set("x-tenant", Cow::Borrowed("acme"));
/// let e = received.into_envelope("order.placed".into(), bytes::Bytes::from_static(b"{}"));
/// assert_eq!(e.event_type, "order.placed");
/// assert_eq!(e.headers["x-tenant"], "acme");
/// ```
#[derive(Debug, Default)]
pub struct ReceivedAttributes {
    /// `ce_id`.
    pub id: Option<String>,
    /// `ce_source`.
    pub source: Option<String>,
    /// `ce_type`.
    pub event_type: Option<String>,
    /// `ce_time`.
    pub time: Option<DateTime<Utc>>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// The event's schema version.
    pub event_version: Option<u32>,
    /// The delivery attempt.
    pub attempt: Option<u32>,
    /// `ce_subject`.
    pub subject: Option<String>,
    /// The flow's correlation id.
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// Everything else: extensions and failure metadata.
    pub headers: BTreeMap<String, String>,
}

impl ReceivedAttributes {
    /// Take one header. `name` is only turned into an owned key for the headers that are not
    /// attributes. A value that does not parse (a time, a version) falls back to the default,
    /// as a missing one does.
    pub fn set<'a>(&mut self, name: impl AsRef<str> + Into<String>, value: Cow<'a, str>) {
        let text = |v: Cow<'a, str>| Some(v.into_owned());
        match name.as_ref() {
            header::ID => self.id = text(value),
            header::SOURCE => self.source = text(value),
            header::TYPE => self.event_type = text(value),
            header::TIME => {
                self.time = DateTime::parse_from_rfc3339(&value)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            header::CONTENT_TYPE => self.content_type = text(value),
            header::EVENT_VERSION => self.event_version = value.parse().ok(),
            header::ATTEMPT => self.attempt = value.parse().ok(),
            header::SUBJECT => self.subject = text(value),
            header::CORRELATION_ID => self.correlation_id = text(value),
            header::CAUSATION_ID => self.causation_id = text(value),
            header::TRACEPARENT => self.traceparent = text(value),
            header::SPEC_VERSION => {}
            _ => {
                self.headers.insert(name.into(), value.into_owned());
            }
        }
    }

    /// The envelope, with defaults for what the message did not carry: a fresh id, `unknown`
    /// source, the routing key as type, the receive time.
    pub fn into_envelope(self, routing_key: String, body: Bytes) -> Envelope {
        Envelope {
            id: self.id.unwrap_or_else(new_id),
            source: self.source.unwrap_or_else(|| "unknown".to_string()),
            event_type: self.event_type.unwrap_or_else(|| routing_key.clone()),
            event_version: self.event_version.unwrap_or(1),
            routing_key,
            time: self.time.unwrap_or_else(Utc::now),
            content_type: self.content_type.unwrap_or_else(|| JSON.to_string()),
            subject: self.subject,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            traceparent: self.traceparent,
            priority: 0,
            ttl: None,
            attempt: self.attempt.unwrap_or(1),
            headers: self.headers,
            body,
        }
    }
}

/// A new event id: a UUIDv7, hyphenated. Encoded directly rather than through `Display`, which
/// costs as much again as making the UUID (this runs for every event published).
pub(crate) fn new_id() -> String {
    encode_id(uuid::Uuid::now_v7())
}

fn encode_id(id: uuid::Uuid) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// A new event id and the event's time: the millisecond the UUIDv7 carries, so the two always
/// agree and a compact wire format can send the time once, inside the id.
fn new_id_and_time() -> (String, DateTime<Utc>) {
    let id = uuid::Uuid::now_v7();
    (encode_id(id), v7_time(&id).unwrap_or_else(Utc::now))
}

/// The millisecond a UUIDv7 id carries (its first 48 bits, Unix milliseconds), or `None` when
/// `id` is not a hyphenated UUIDv7. Herald's event ids are UUIDv7 and an event's time is the
/// millisecond of its id, so on AMQP the compact form sends the time only inside the id (see
/// `docs/wire-format.md`); any client can read it back: `int(id.replace("-", "")[:12], 16)`.
///
/// ```
/// use herald::envelope::time_of_v7_id;
///
/// let t = time_of_v7_id("019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4f11").unwrap();
/// assert_eq!(t.timestamp_millis(), 0x019a_b3f0_6f4a);
/// assert_eq!(time_of_v7_id("not-a-uuid"), None);
/// assert_eq!(time_of_v7_id(&uuid::Uuid::new_v4().to_string()), None, "v4 carries no time");
/// ```
pub fn time_of_v7_id(id: &str) -> Option<DateTime<Utc>> {
    parse_v7_id(id).and_then(|u| v7_time(&u))
}

/// A hyphenated UUIDv7 (either case), parsed; `None` for any other text. uuid's parser also
/// takes the simple, braced and URN forms; Herald's ids are hyphenated.
pub fn parse_v7_id(id: &str) -> Option<uuid::Uuid> {
    if id.len() != 36 {
        return None;
    }
    let u = uuid::Uuid::try_parse(id).ok()?;
    (u.get_version_num() == 7 && u.get_variant() == uuid::Variant::RFC4122).then_some(u)
}

/// The Unix millisecond in a UUIDv7's first 48 bits.
pub fn v7_time(id: &uuid::Uuid) -> Option<DateTime<Utc>> {
    let b = id.as_bytes();
    DateTime::from_timestamp_millis(i64::from_be_bytes([
        0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
    ]))
}

/// A version or attempt as text; the usual 1 without an allocation (compact wire formats leave
/// it out, and this runs for every message).
fn number(n: u32) -> Cow<'static, str> {
    if n == 1 {
        Cow::Borrowed("1")
    } else {
        Cow::Owned(n.to_string())
    }
}

/// RFC 3339 with microseconds and a `Z`: what Herald writes for every time.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_round_trips() {
        let mut e = Envelope::new("a.b", 2, "a.b.v2", "svc", Bytes::from_static(b"{}"));
        e.correlation_id = Some("c1".into());
        e.subject = Some("s".into());
        e.attempt = 3;
        e.headers.insert("x-custom".into(), "v".into());
        let back = Envelope::from_headers(e.header_map(), "a.b.v2", e.body.clone());
        // time is formatted at microsecond precision
        assert_eq!(back.time.timestamp_micros(), e.time.timestamp_micros());
        let mut back = back;
        back.time = e.time;
        assert_eq!(back, e);
    }

    #[test]
    fn an_events_time_is_the_millisecond_of_its_id() {
        let before = Utc::now();
        let e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::new());
        assert_eq!(time_of_v7_id(&e.id), Some(e.time));
        assert_eq!(
            e.time.timestamp_subsec_nanos() % 1_000_000,
            0,
            "whole milliseconds"
        );
        assert!(e.time >= before - chrono::Duration::milliseconds(1) && e.time <= Utc::now());
        // Upper-case hex is read too; a wrong variant or a missing hyphen is not a UUIDv7.
        let upper = e.id.to_uppercase();
        assert_eq!(time_of_v7_id(&upper), Some(e.time));
        assert_eq!(time_of_v7_id(&e.id.replace('-', "")), None);
        let mut wrong_variant = e.id.clone().into_bytes();
        wrong_variant[19] = b'c';
        assert_eq!(
            time_of_v7_id(&String::from_utf8(wrong_variant).unwrap()),
            None
        );
    }

    #[test]
    fn foreign_messages_get_defaults() {
        let e = Envelope::from_headers(BTreeMap::new(), "user.registered", Bytes::new());
        assert_eq!(e.event_type, "user.registered");
        assert_eq!(e.source, "unknown");
        assert_eq!(e.attempt, 1);
        assert!(!e.id.is_empty());
    }
}
