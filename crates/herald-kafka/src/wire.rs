//! The envelope as a Kafka record: CloudEvents' Kafka protocol binding in binary mode (the
//! value is the event's JSON; attributes are `ce_*` headers and `content-type`), plus Herald's
//! own headers, in the compact form by default (what has its default value or what the
//! UUIDv7 id carries is left out; `?cloudevents=full` writes everything). The record key is the envelope's subject (the aggregate id), so an aggregate's
//! events share a partition and keep their order; without a subject, the event id.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use herald::envelope::{header, time_of_v7_id, Envelope, ReceivedAttributes};
use herald::trace::TraceContext;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;

/// Herald's routing key on the exchange (Kafka has no routing key of its own).
pub const ROUTING_KEY: &str = "herald_routing_key";
/// The message's time to live in milliseconds, counted from the record's timestamp.
pub const TTL_MS: &str = "herald_ttl_ms";
/// On a retry topic: not to be delivered before this Unix time in milliseconds.
pub const NOT_BEFORE: &str = "herald_not_before";
/// On a dead-letter topic: a marker (no value) that removes the dead letter with this id
/// (replayed or purged); Kafka cannot delete one record.
pub const REMOVES: &str = "herald_dlq_removes";

/// The Kafka header for one of Herald's `cloudEvents_*` names (the binding's `ce_` prefix;
/// the content type is `content-type`); other names travel as they are.
fn kafka_name(name: &'static str) -> &'static str {
    match name {
        header::ID => "ce_id",
        header::SOURCE => "ce_source",
        header::TYPE => "ce_type",
        header::SPEC_VERSION => "ce_specversion",
        header::TIME => "ce_time",
        header::CONTENT_TYPE => "content-type",
        header::SUBJECT => "ce_subject",
        header::EVENT_VERSION => "ce_eventversion",
        header::CORRELATION_ID => "ce_correlationid",
        header::CAUSATION_ID => "ce_causationid",
        header::TRACEPARENT => "ce_traceparent",
        other => other,
    }
}

/// Herald's name for a Kafka header: `ce_x` is `cloudEvents_x`, `content-type` the data
/// content type; anything else is kept.
fn herald_name(name: &str) -> Cow<'_, str> {
    match name {
        "content-type" => Cow::Borrowed(header::CONTENT_TYPE),
        _ => match name.strip_prefix("ce_") {
            Some(attr) => Cow::Owned(format!("cloudEvents_{attr}")),
            None => Cow::Borrowed(name),
        },
    }
}

/// The record key: the subject, else the event id.
pub fn key(envelope: &Envelope) -> &str {
    envelope.subject.as_deref().unwrap_or(&envelope.id)
}

/// Whether a header is worth writing in the compact form: an attribute with its default
/// value (spec version 1.0, JSON, version and attempt 1), the time and the trace context a
/// UUIDv7 id already carries, or a routing key equal to the type is left out; the reader
/// restores them ([`read`]). The full form writes every attribute.
fn compact_keeps(envelope: &Envelope, name: &'static str, value: &str) -> bool {
    match name {
        header::SPEC_VERSION => false,
        header::CONTENT_TYPE => value != herald::envelope::JSON,
        header::EVENT_VERSION | header::ATTEMPT => value != "1",
        header::TIME => time_of_v7_id(&envelope.id) != Some(envelope.time),
        header::TRACEPARENT => {
            TraceContext::for_event_id(&envelope.id)
                .map(|c| c.to_traceparent())
                .as_deref()
                != Some(value)
        }
        _ => true,
    }
}

/// The headers of a record carrying `envelope`, and `not_before` (Unix ms) on a retry topic;
/// every attribute with `full`, else the compact form.
pub fn headers(envelope: &Envelope, not_before: Option<i64>, full: bool) -> OwnedHeaders {
    // `insert` takes the headers by value; the slot lends them to the visitor.
    let mut slot = Some(OwnedHeaders::new_with_capacity(8 + envelope.headers.len()));
    envelope.for_each_wire_header(
        |_| true,
        |name, value| {
            if full || compact_keeps(envelope, name, &value) {
                slot = slot.take().map(|h| {
                    h.insert(Header {
                        key: kafka_name(name),
                        value: Some(value.as_bytes()),
                    })
                });
            }
        },
    );
    let mut h = slot.unwrap_or_default();
    if full || envelope.routing_key != envelope.event_type {
        h = h.insert(Header {
            key: ROUTING_KEY,
            value: Some(envelope.routing_key.as_bytes()),
        });
    }
    if let Some(ttl) = envelope.ttl {
        h = h.insert(Header {
            key: TTL_MS,
            value: Some(ttl.as_millis().to_string().as_bytes()),
        });
    }
    if let Some(at) = not_before {
        h = h.insert(Header {
            key: NOT_BEFORE,
            value: Some(at.to_string().as_bytes()),
        });
    }
    for (k, v) in &envelope.headers {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// A record read back.
pub struct Received {
    /// The envelope (routing key from [`ROUTING_KEY`], else its type, else the topic).
    pub envelope: Envelope,
    /// [`NOT_BEFORE`], when the record carries it.
    pub not_before: Option<i64>,
    /// [`REMOVES`]: the dead letter this marker removes.
    pub removes: Option<String>,
    /// The record's timestamp (Unix ms), when it has one.
    pub timestamp: Option<i64>,
}

/// Read a record: headers into the envelope's attributes, the value as the body.
pub fn read(msg: &BorrowedMessage<'_>) -> Received {
    let mut attributes = ReceivedAttributes::default();
    let mut routing_key = None;
    let mut not_before = None;
    let mut removes = None;
    let mut ttl = None;
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
            match h.key {
                ROUTING_KEY => routing_key = Some(value.into_owned()),
                TTL_MS => ttl = value.parse().ok().map(Duration::from_millis),
                NOT_BEFORE => not_before = value.parse().ok(),
                REMOVES => removes = Some(value.into_owned()),
                key => match herald_name(key) {
                    Cow::Borrowed(name) => attributes.set(name, value),
                    Cow::Owned(name) => attributes.set(name, value),
                },
            }
        }
    }
    let routing_key = routing_key
        .or_else(|| attributes.event_type.clone())
        .unwrap_or_else(|| msg.topic().to_string());
    // What the compact form leaves out, the UUIDv7 id carries.
    if let Some(id) = attributes.id.as_deref() {
        if attributes.time.is_none() {
            attributes.time = time_of_v7_id(id);
        }
        if attributes.traceparent.is_none() {
            attributes.traceparent = TraceContext::for_event_id(id).map(|c| c.to_traceparent());
        }
    }
    let body = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
    let mut envelope = attributes.into_envelope(routing_key, body);
    envelope.ttl = ttl;
    Received {
        envelope,
        not_before,
        removes,
        timestamp: msg.timestamp().to_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kafka_binding() {
        assert_eq!(kafka_name(header::ID), "ce_id");
        assert_eq!(kafka_name(header::CONTENT_TYPE), "content-type");
        assert_eq!(kafka_name(header::ATTEMPT), header::ATTEMPT);
        assert_eq!(herald_name("ce_id"), header::ID);
        assert_eq!(herald_name("ce_traceparent"), header::TRACEPARENT);
        assert_eq!(herald_name("content-type"), header::CONTENT_TYPE);
        assert_eq!(herald_name("x-tenant"), "x-tenant");
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::new());
        assert_eq!(key(&e), e.id);
        e.subject = Some("order-1".into());
        assert_eq!(key(&e), "order-1");
        let names =
            |h: OwnedHeaders| -> Vec<String> { h.iter().map(|h| h.key.to_string()).collect() };
        let compact = names(headers(&e, Some(5), false));
        assert_eq!(
            compact,
            ["ce_id", "ce_source", "ce_type", "ce_subject", NOT_BEFORE],
            "defaults, the id's time and a routing key equal to the type are left out"
        );
        let full = names(headers(&e, None, true));
        for n in [
            "ce_specversion",
            "ce_time",
            "content-type",
            "herald_attempt",
            ROUTING_KEY,
        ] {
            assert!(full.contains(&n.to_string()), "{n} in {full:?}");
        }
    }
}
