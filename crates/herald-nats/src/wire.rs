//! The envelope on NATS: the body is the payload, as published; the attributes are NATS headers
//! with the names every Herald transport uses (`cloudEvents_id`, `cloudEvents_type`, ...,
//! `herald_attempt`, see `docs/wire-format.md`). Each header costs both clients and the server
//! on every message, so by default (the *compact* form) those a reader can work out are left
//! out: the id is `Nats-Msg-Id`; the time and the trace context are the ones the UUIDv7 id
//! carries; the type is the routing key; the spec version, a version or attempt of 1 and the
//! JSON content type are the defaults. `cloudevents=full` on the URL writes them all; reading
//! takes both forms. Besides:
//!
//! - `Nats-Msg-Id`: the event id (JetStream drops a second publish of it within the stream's
//!   duplicate window, so a publish retried after a reconnect is stored once); a copy (a retry,
//!   a dead letter, a replay) has an id of its own and carries `cloudEvents_id`;
//! - `herald_expires_at`: when a message with a TTL expires (Unix milliseconds);
//! - `herald_priority`: the publisher's priority (NATS does not order by it);
//! - on a message addressed to one queue (a retry or a replay): `herald_routing_key`, the
//!   event's routing key (its subject names the queue instead), and `herald_not_before`, the
//!   Unix millisecond before which it must not be handled.
//!
//! A message from a plain NATS client (no headers) reads as an event whose type is its routing
//! key, with a fresh id.

use std::borrow::Cow;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use chrono::Utc;
use herald::envelope::{header, parse_v7_id, v7_time, Envelope, ReceivedAttributes};
use herald::error::{Error, Result};
use herald::trace::TraceContext;

/// JetStream's de-duplication header.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
pub(crate) const EXPIRES_AT: &str = "herald_expires_at";
pub(crate) const PRIORITY: &str = "herald_priority";
pub(crate) const ROUTING_KEY: &str = "herald_routing_key";
pub(crate) const NOT_BEFORE: &str = "herald_not_before";

/// A header value NATS can carry: header lines end at CR or LF, so those are written escaped.
fn value(v: &str) -> Cow<'_, str> {
    if v.contains(['\r', '\n']) {
        Cow::Owned(v.replace('\r', "\\r").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(v)
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "header `{}` cannot go on NATS: header names are printable ASCII without `:` or spaces",
            herald::transport::escape_controls(name)
        )))
    }
}

/// Which CloudEvents attributes go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloudEventsHeaders {
    /// Only those a reader cannot work out (the default).
    #[default]
    Compact,
    /// Every attribute, for consumers that read only headers.
    Full,
}

/// Whether a reader works out attribute `name` of `e` without its header (compact form).
fn implied(e: &Envelope, name: &str, msg_id: &str, from_id: FromId) -> bool {
    match name {
        header::SPEC_VERSION => true,
        header::ID => msg_id == e.id,
        header::TYPE => e.event_type == e.routing_key,
        header::TIME => from_id.time,
        header::TRACEPARENT => from_id.trace,
        header::CONTENT_TYPE => e.content_type == herald::envelope::JSON,
        header::EVENT_VERSION => e.event_version == 1,
        header::ATTEMPT => e.attempt == 1,
        _ => false,
    }
}

/// What an envelope's UUIDv7 id carries for a reader.
#[derive(Clone, Copy)]
struct FromId {
    time: bool,
    trace: bool,
}

impl FromId {
    fn of(e: &Envelope) -> Self {
        let Some((id, time)) = parse_v7_id(&e.id).and_then(|id| Some((id, v7_time(&id)?))) else {
            return FromId {
                time: false,
                trace: false,
            };
        };
        FromId {
            time: time == e.time,
            trace: e
                .traceparent
                .as_deref()
                .is_some_and(|tp| TraceContext::for_event_uuid(&id).is_written_as(tp)),
        }
    }
}

/// The headers of an envelope, with `msg_id` for de-duplication.
pub(crate) fn headers(
    envelope: &Envelope,
    msg_id: &str,
    form: CloudEventsHeaders,
) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    // Names are made from the static strings: no allocation, and the standard ones (the
    // message id) are an enum, cheap to hash.
    h.insert(HeaderName::from_static(MSG_ID), msg_id);
    let mut bad = None;
    let from_id = FromId::of(envelope);
    let compact = form == CloudEventsHeaders::Compact;
    envelope.for_each_wire_header(
        |name| !(compact && implied(envelope, name, msg_id, from_id)),
        |name, v| h.insert(HeaderName::from_static(name), value(&v).into_owned()),
    );
    for (name, v) in &envelope.headers {
        if let Err(e) = check_name(name) {
            bad = Some(e);
            continue;
        }
        h.insert(name.as_str(), value(v).into_owned());
    }
    if let Some(e) = bad {
        return Err(e);
    }
    if envelope.priority > 0 {
        h.insert(
            HeaderName::from_static(PRIORITY),
            envelope.priority.to_string(),
        );
    }
    if let Some(ttl) = envelope.ttl {
        let at =
            Utc::now().timestamp_millis() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        h.insert(HeaderName::from_static(EXPIRES_AT), at.to_string());
    }
    Ok(h)
}

/// What a received message carries besides the envelope.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// When it expires (Unix ms).
    pub expires_at: Option<i64>,
    /// Not to be handled before (Unix ms).
    pub not_before: Option<i64>,
    /// The trace context of the envelope's `traceparent`, when it was derived from the id here
    /// (the consumer need not parse it again).
    pub trace: Option<TraceContext>,
}

/// Read an envelope from a message's headers and payload; `routing_key` is what its subject
/// says (a queue-addressed message carries the real one in `herald_routing_key`).
pub(crate) fn envelope(
    headers: Option<&HeaderMap>,
    routing_key: &str,
    payload: Bytes,
) -> (Envelope, Extras) {
    let mut attributes = ReceivedAttributes::default();
    let mut extras = Extras::default();
    let mut key = Cow::Borrowed(routing_key);
    let mut priority = 0u8;
    let mut msg_id = None;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let Some(v) = values.last() else { continue };
            let v = v.as_str();
            match name.as_ref() {
                MSG_ID => msg_id = Some(v.to_string()),
                EXPIRES_AT => extras.expires_at = v.parse().ok(),
                NOT_BEFORE => extras.not_before = v.parse().ok(),
                PRIORITY => priority = v.parse().unwrap_or(0),
                ROUTING_KEY => key = Cow::Owned(v.to_string()),
                other if other.starts_with("Nats-") => {}
                other => attributes.set(other, Cow::Borrowed(v)),
            }
        }
    }
    // The compact form: the id is the message id, and a Herald (CloudEvents) publisher's UUIDv7
    // id carries the time and the trace context. Only a message with a CloudEvents source is
    // read that way, so a plain client's message id is never taken for a time.
    if attributes.id.is_none() {
        attributes.id = msg_id;
    }
    if attributes.source.is_some()
        && (attributes.time.is_none() || attributes.traceparent.is_none())
    {
        if let Some((id, time)) = attributes
            .id
            .as_deref()
            .and_then(parse_v7_id)
            .and_then(|id| Some((id, v7_time(&id)?)))
        {
            attributes.time.get_or_insert(time);
            if attributes.traceparent.is_none() {
                let trace = TraceContext::for_event_uuid(&id);
                attributes.traceparent = Some(trace.to_traceparent());
                extras.trace = Some(trace);
            }
        }
    }
    let mut envelope = attributes.into_envelope(key.into_owned(), payload);
    envelope.priority = priority;
    (envelope, extras)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Envelope::new(
            "order.placed",
            2,
            "order.placed",
            "shop",
            Bytes::from_static(b"{}"),
        );
        e.correlation_id = Some("c".into());
        e.headers.insert("x-tenant".into(), "acme".into());
        e.headers
            .insert("herald_error".into(), "line one\nline two".into());
        e.priority = 3;
        e.ttl = Some(std::time::Duration::from_secs(60));
        let h = headers(&e, &e.id, CloudEventsHeaders::Compact).unwrap();
        assert_eq!(
            h.get(HeaderName::from_static(MSG_ID)).map(|v| v.as_str()),
            Some(e.id.as_str())
        );
        let (got, extras) = envelope(Some(&h), "order.placed", e.body.clone());
        assert_eq!(got.id, e.id);
        assert_eq!(got.event_version, 2);
        assert_eq!(got.correlation_id.as_deref(), Some("c"));
        assert_eq!(got.headers["x-tenant"], "acme");
        assert_eq!(got.headers["herald_error"], "line one\\nline two");
        assert_eq!(got.priority, 3);
        assert!(extras.expires_at.is_some());
    }

    #[test]
    fn a_bad_header_name_is_refused() {
        let mut e = Envelope::new("a", 1, "a", "s", Bytes::new());
        e.headers.insert("bad name".into(), "v".into());
        assert!(headers(&e, "id", CloudEventsHeaders::Full).is_err());
    }

    #[test]
    fn compact_and_full_read_the_same() {
        let mut e = Envelope::new(
            "order.placed",
            1,
            "order.placed",
            "shop",
            Bytes::from_static(b"{}"),
        );
        e.traceparent = TraceContext::for_event_id(&e.id).map(|c| c.to_traceparent());
        let compact = headers(&e, &e.id, CloudEventsHeaders::Compact).unwrap();
        let full = headers(&e, &e.id, CloudEventsHeaders::Full).unwrap();
        assert_eq!(compact.len(), 2, "message id and source: {compact:?}");
        assert!(full.len() > 8);
        for h in [compact, full] {
            let (got, _) = envelope(Some(&h), "order.placed", e.body.clone());
            assert_eq!(got, e);
        }
        // A copy keeps its own id apart from its message id.
        let copy = headers(&e, "x.retry.7", CloudEventsHeaders::Compact).unwrap();
        let (got, _) = envelope(Some(&copy), "order.placed", e.body.clone());
        assert_eq!(got.id, e.id);
    }

    #[test]
    fn a_plain_message_reads_as_an_event() {
        let (e, _) = envelope(None, "course.enrolled", Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(e.event_type, "course.enrolled");
        assert_eq!(e.routing_key, "course.enrolled");
        assert_eq!(e.attempt, 1);
    }
}
