//! Envelope <-> AMQP: the standard basic properties plus the CloudEvents / Herald headers.
//!
//! Herald sets `content_type`, `delivery_mode` (persistent), `message_id`, `timestamp`, `type`,
//! `app_id`, `correlation_id`, `priority` and `expiration`, so a plain AMQP client reads a Herald
//! event as ordinary JSON with ordinary properties. The headers carry the CloudEvents attributes
//! that have no property (see [`carried_by_property`]). Reading, the headers win; the standard
//! properties fill in the rest, for Herald's compact form and for foreign publishers alike.

use std::borrow::Cow;
use std::time::Duration;

use amqprs::{BasicProperties, FieldName, FieldTable, FieldValue};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};

use super::config::CloudEventsHeaders;
use herald::envelope::{format_time, header, parse_v7_id, v7_time, Envelope, ReceivedAttributes};
use herald::trace::TraceContext;

/// The header a received request carries its reply address in (its AMQP `reply_to`).
pub const REPLY_TO_HEADER: &str = "x-herald-reply-to";

/// Header carrying the envelope's routing key on copies Herald moves through the default
/// exchange (retry levels, dead letters, replays), where the AMQP routing key is a queue name.
pub(crate) const ROUTING_KEY_HEADER: &str = "x-herald-routing-key";

fn name(s: &str) -> Option<FieldName> {
    s.try_into().ok()
}

/// Insert a string header, skipping names AMQP cannot carry (over 255 bytes).
fn put(table: &mut FieldTable, k: &str, v: &str) {
    if let Some(n) = name(k) {
        table.insert(n, FieldValue::from(v));
    }
}

/// The AMQP properties for an envelope. `routing_key_header` adds [`ROUTING_KEY_HEADER`].
pub(crate) fn to_properties(
    e: &Envelope,
    routing_key_header: bool,
    cloudevents: CloudEventsHeaders,
) -> BasicProperties {
    let mut headers = FieldTable::new();
    for (k, v) in &e.headers {
        if k != REPLY_TO_HEADER {
            put(&mut headers, k, v);
        }
    }
    // Short-string properties hold at most 255 bytes (amqprs panics beyond); longer values still
    // travel in the CloudEvents headers.
    let fits = |v: &str| v.len() <= 255;
    let from_id = (cloudevents == CloudEventsHeaders::Compact).then(|| FromId::of(e, fits));
    e.for_each_wire_header(
        |k| from_id.is_none_or(|id| !carried_by_property(e, k, fits, id)),
        |k, v| {
            if let Some(n) = name(k) {
                headers.insert(n, FieldValue::from(v.into_owned()));
            }
        },
    );
    if routing_key_header {
        put(&mut headers, ROUTING_KEY_HEADER, &e.routing_key);
    }
    let mut p = BasicProperties::default();
    p.with_persistence(true)
        .with_timestamp(e.time.timestamp().max(0) as u64);
    // No table at all when there is nothing in it (the usual compact message): an empty one
    // is still encoded, sent and decoded.
    if !headers.as_ref().is_empty() {
        p.with_headers(headers);
    }
    if fits(&e.content_type) {
        p.with_content_type(&e.content_type);
    }
    if fits(&e.id) {
        p.with_message_id(&e.id);
    }
    if fits(&e.event_type) {
        p.with_message_type(&e.event_type);
    }
    if fits(&e.source) {
        p.with_app_id(&e.source);
    }
    if let Some(c) = e.correlation_id.as_deref().filter(|c| fits(c)) {
        p.with_correlation_id(c);
    }
    if e.priority > 0 {
        p.with_priority(e.priority.min(9));
    }
    if let Some(ttl) = e.ttl {
        p.with_expiration(&ttl.as_millis().max(1).to_string());
    }
    // Not `finish()`: it clones the whole property set, headers included.
    p
}

/// Whether the wire header `k` is left out because a standard property carries its value:
/// `message_id` (id), `type`, `app_id` (source), `content_type` (datacontenttype, as the
/// CloudEvents AMQP binding maps it) and `correlation_id`; the time and the trace context when
/// they are the ones a UUIDv7 id in `message_id` carries (as for every event Herald creates
/// that does not continue another trace); the spec version, the event version and the attempt
/// when they are the value a reader assumes (1.0, 1, 1).
///
/// Every header costs the broker and both clients on every message: amqprs builds and hashes a
/// table entry and two strings for it on each side, about 4,500 client instructions per header
/// per event on W1, where raw amqprs spends 33,000 on the whole event. [`from_message`] fills
/// the attributes back from the properties, so Herald reads both this compact form and the full
/// one (older Herald versions, other CloudEvents publishers).
fn carried_by_property(e: &Envelope, k: &str, fits: impl Fn(&str) -> bool, id: FromId) -> bool {
    match k {
        header::SPEC_VERSION => true,
        header::TRACEPARENT => id.trace,
        header::TIME => id.time,
        header::ID => fits(&e.id),
        header::TYPE => fits(&e.event_type),
        header::SOURCE => fits(&e.source),
        header::CONTENT_TYPE => fits(&e.content_type),
        header::CORRELATION_ID => e.correlation_id.as_deref().is_some_and(fits),
        header::EVENT_VERSION => e.event_version == 1,
        header::ATTEMPT => e.attempt == 1,
        _ => false,
    }
}

/// Which attributes the envelope's id, in `message_id`, carries for a reader; worked out once
/// per message.
#[derive(Clone, Copy)]
struct FromId {
    /// The time is the id's millisecond.
    time: bool,
    /// The trace context is the one derived from the id, and a reader will derive it: it does
    /// so only when the `timestamp` property (the time's second) agrees with the id, so a time
    /// set by hand keeps the trace context as a header.
    trace: bool,
}

impl FromId {
    fn of(e: &Envelope, fits: impl Fn(&str) -> bool) -> Self {
        let Some((id, time)) = parse_v7_id(&e.id)
            .filter(|_| fits(&e.id))
            .and_then(|id| Some((id, v7_time(&id)?)))
        else {
            return FromId {
                time: false,
                trace: false,
            };
        };
        let trace = time.timestamp() == e.time.timestamp()
            && e.traceparent
                .as_deref()
                .is_some_and(|tp| TraceContext::for_event_uuid(&id).is_written_as(tp));
        FromId {
            time: time == e.time,
            trace,
        }
    }
}

/// A header value as a string, for the values that are scalars.
fn scalar(v: &FieldValue) -> Option<String> {
    Some(match v {
        FieldValue::S(s) => s.as_ref().clone(),
        FieldValue::t(b) => b.to_string(),
        FieldValue::b(n) => n.to_string(),
        FieldValue::B(n) => n.to_string(),
        FieldValue::s(n) => n.to_string(),
        FieldValue::u(n) => n.to_string(),
        FieldValue::I(n) => n.to_string(),
        FieldValue::i(n) => n.to_string(),
        FieldValue::l(n) => n.to_string(),
        FieldValue::f(n) => n.to_string(),
        FieldValue::d(n) => n.to_string(),
        FieldValue::T(t) => Utc
            .timestamp_opt(*t as i64, 0)
            .single()
            .map(|t| format_time(&t))?,
        FieldValue::x(b) => String::from_utf8(Vec::from(b.clone())).ok()?,
        _ => return None,
    })
}

/// The first entry of RabbitMQ's `x-death` header: why and where the broker dead-lettered it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Death {
    pub reason: String,
    pub queue: String,
    pub routing_key: Option<String>,
    pub time: Option<DateTime<Utc>>,
}

fn first_death(table: &FieldTable) -> Option<Death> {
    let deaths = table.get(&name("x-death")?)?;
    let FieldValue::A(arr) = deaths else {
        return None;
    };
    let list: Vec<FieldValue> = arr.clone().into();
    let FieldValue::F(first) = list.into_iter().next()? else {
        return None;
    };
    let get = |k: &str| first.get(&name(k)?).and_then(scalar);
    let routing_key = first.get(&name("routing-keys")?).and_then(|v| match v {
        FieldValue::A(a) => {
            let keys: Vec<FieldValue> = a.clone().into();
            keys.first().and_then(scalar)
        }
        _ => None,
    });
    let time = match first.get(&name("time")?) {
        Some(FieldValue::T(t)) => Utc.timestamp_opt(*t as i64, 0).single(),
        _ => None,
    };
    Some(Death {
        reason: get("reason").unwrap_or_default(),
        queue: get("queue").unwrap_or_default(),
        routing_key,
        time,
    })
}

/// A header value as text, lent when it is a string (the usual case).
fn scalar_text(v: &FieldValue) -> Option<Cow<'_, str>> {
    match v {
        FieldValue::S(s) => Some(Cow::Borrowed(s.as_ref().as_str())),
        other => scalar(other).map(Cow::Owned),
    }
}

/// A received message as an envelope, plus the broker's `x-death` record if any.
///
/// The attributes go straight from the AMQP headers and properties into the envelope (no map of
/// copies in between): this runs for every delivery.
pub(crate) fn from_message(
    routing_key: &str,
    props: &BasicProperties,
    body: Vec<u8>,
) -> (Envelope, Option<Death>) {
    let received = receive(routing_key, props, body);
    (received.envelope, received.death)
}

/// What [`receive`] read from a message.
pub(crate) struct Received {
    pub envelope: Envelope,
    pub death: Option<Death>,
    /// The trace context derived from the message's UUIDv7 id, when the message left it out
    /// (the envelope's `traceparent` is this, formatted).
    pub derived_trace: Option<TraceContext>,
}

/// [`from_message`], with the trace context when it was derived from the id.
pub(crate) fn receive(routing_key: &str, props: &BasicProperties, body: Vec<u8>) -> Received {
    let mut attributes = ReceivedAttributes::default();
    let mut death = None;
    let mut derived_trace = None;
    let mut key_header = None;
    if let Some(h) = props.headers() {
        for (k, v) in h.as_ref() {
            let k: &String = k.as_ref();
            if k == "x-death" {
                death = first_death(h);
                continue;
            }
            if k.starts_with("x-first-death") || k.starts_with("x-last-death") {
                continue;
            }
            let Some(v) = scalar_text(v) else { continue };
            if k == ROUTING_KEY_HEADER {
                key_header = Some(v.into_owned());
            } else {
                attributes.set(k, v);
            }
        }
    }
    let key = key_header
        .or_else(|| death.as_ref().and_then(|d| d.routing_key.clone()))
        .unwrap_or_else(|| routing_key.to_string());
    // Fill CloudEvents attributes a foreign publisher (or Herald's compact form) left out from
    // the standard properties.
    fn fill(attribute: &mut Option<String>, property: Option<&String>) {
        if attribute.is_none() {
            *attribute = property.cloned();
        }
    }
    let a = &mut attributes;
    fill(&mut a.id, props.message_id());
    fill(&mut a.event_type, props.message_type());
    fill(&mut a.source, props.app_id());
    fill(&mut a.content_type, props.content_type());
    fill(&mut a.correlation_id, props.correlation_id());
    if a.time.is_none() || a.traceparent.is_none() {
        // The compact form leaves out the time and the trace context a UUIDv7 id carries (see
        // `carried_by_property`). The id counts as such only when the `timestamp` property
        // (whole seconds) agrees with its time, so a foreign id that happens to be a UUIDv7
        // minted at another time is not taken for the event's time or trace.
        let stamp = props.timestamp().map(|t| t as i64);
        let id = a.id.as_deref().and_then(parse_v7_id).and_then(|id| {
            let time = v7_time(&id).filter(|t| stamp == Some(t.timestamp()))?;
            Some((id, time))
        });
        if a.traceparent.is_none() {
            derived_trace = id.map(|(id, _)| TraceContext::for_event_uuid(&id));
            a.traceparent = derived_trace.map(|c| c.to_traceparent());
        }
        if a.time.is_none() {
            a.time = id
                .map(|(_, time)| time)
                .or_else(|| stamp.and_then(|t| Utc.timestamp_opt(t, 0).single()));
        }
    }
    if let Some(r) = props.reply_to() {
        a.headers.insert(REPLY_TO_HEADER.to_string(), r.clone());
    }
    let mut e = attributes.into_envelope(key, Bytes::from(body));
    e.priority = props.priority().unwrap_or(0);
    e.ttl = props
        .expiration()
        .and_then(|x| x.parse::<u64>().ok())
        .map(Duration::from_millis);
    Received {
        envelope: e,
        death,
        derived_trace,
    }
}

/// Fill the failure headers of a message the broker dead-lettered on its own (TTL expiry,
/// overflow, a plain reject), so it reads like one Herald dead-lettered.
pub(crate) fn record_broker_death(e: &mut Envelope, death: &Death) {
    if e.headers.contains_key(header::ERROR_KIND)
        && e.headers.contains_key(header::DEAD_LETTERED_AT)
    {
        return;
    }
    let (kind, error) = match death.reason.as_str() {
        "expired" => ("expired", "message TTL expired before delivery"),
        "maxlen" => (
            "overflow",
            "dropped by the broker: the queue was at its max-length",
        ),
        "delivery_limit" => ("delivery_limit", "quorum queue delivery limit reached"),
        _ => ("rejected", "rejected by a consumer without requeue"),
    };
    let when = format_time(&death.time.unwrap_or_else(Utc::now));
    let h = &mut e.headers;
    h.insert(header::ERROR.into(), error.into());
    h.insert(header::ERROR_KIND.into(), kind.into());
    h.insert(header::ORIGINAL_QUEUE.into(), death.queue.clone());
    h.entry(header::ORIGINAL_ROUTING_KEY.into())
        .or_insert_with(|| e.routing_key.clone());
    h.entry(header::FIRST_FAILURE.into())
        .or_insert(when.clone());
    h.insert(header::LAST_FAILURE.into(), when.clone());
    h.insert(header::DEAD_LETTERED_AT.into(), when);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_properties() {
        let mut e = Envelope::new("a.b", 2, "a.b.v2", "svc", Bytes::from_static(b"{\"x\":1}"));
        e.correlation_id = Some("c".into());
        e.priority = 5;
        e.headers.insert("x-tenant".into(), "acme".into());
        let p = to_properties(&e, true, CloudEventsHeaders::Compact);
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(p.message_id(), Some(&e.id));
        let (back, death) = from_message("queue-name", &p, e.body.to_vec());
        assert!(death.is_none());
        assert_eq!(back.routing_key, "a.b.v2");
        assert_eq!(back.id, e.id);
        assert_eq!(back.priority, 5);
        assert_eq!(
            back.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(back.correlation_id.as_deref(), Some("c"));
        assert_eq!(back.source, "svc");
        assert_eq!(back.event_type, "a.b");
        assert_eq!(back.event_version, 2);
        assert_eq!(back.content_type, "application/json");
        assert_eq!(format_time(&back.time), format_time(&e.time));
        assert_eq!(back.attempt, 1);
    }

    fn header_names(p: &BasicProperties) -> Vec<String> {
        let mut names: Vec<String> = p
            .headers()
            .map(|h| h.as_ref().keys().map(|k| k.as_ref().clone()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn attributes_with_a_property_are_not_repeated_in_headers() {
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::from_static(b"{}"));
        e.correlation_id = Some("c".into());
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let names = header_names(&to_properties(&e, false, CloudEventsHeaders::Compact));
        assert_eq!(
            names,
            [header::TRACEPARENT],
            "spec version 1.0, version 1 and attempt 1 are the defaults; id, type, source, \
             content type and correlation id are properties; the time is the id's millisecond"
        );
        let (back, _) = from_message(
            "a.b",
            &to_properties(&e, false, CloudEventsHeaders::Compact),
            b"{}".to_vec(),
        );
        assert_eq!(back.time, e.time, "the time comes back from the UUIDv7 id");
        e.event_version = 2;
        e.attempt = 3;
        e.id = "i".repeat(300);
        let p = to_properties(&e, false, CloudEventsHeaders::Compact);
        let names = header_names(&p);
        for h in [header::EVENT_VERSION, header::ATTEMPT, header::ID] {
            assert!(names.iter().any(|n| n == h), "{h} missing from {names:?}");
        }
        let (back, _) = from_message("a.b", &p, b"{}".to_vec());
        assert_eq!((back.event_version, back.attempt), (2, 3));
        assert_eq!(back.id, e.id);
    }

    #[test]
    fn an_event_that_starts_a_trace_travels_without_headers() {
        // What `Bus::publish` sends outside any trace: the id carries the time and the trace.
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::from_static(b"{}"));
        let ctx = TraceContext::for_event_id(&e.id).expect("a UUIDv7 id");
        e.traceparent = Some(ctx.to_traceparent());
        let p = to_properties(&e, false, CloudEventsHeaders::Compact);
        assert!(p.headers().is_none(), "no table at all, not an empty one");
        let (back, _) = from_message("a.b", &p, b"{}".to_vec());
        assert_eq!(back, e, "nothing lost");
        // The consumer gets the derived context parsed, as the envelope's traceparent holds it.
        let r = receive("a.b", &p, b"{}".to_vec());
        assert_eq!(r.derived_trace, Some(ctx));
        assert_eq!(r.derived_trace.map(|c| c.to_traceparent()), e.traceparent);
        // A continued trace (a child span) is not the id's, so it travels.
        e.traceparent = Some(ctx.child().to_traceparent());
        let p = to_properties(&e, false, CloudEventsHeaders::Compact);
        assert_eq!(header_names(&p), [header::TRACEPARENT]);
        assert_eq!(receive("a.b", &p, b"{}".to_vec()).derived_trace, None);
        let (back, _) = from_message("a.b", &p, b"{}".to_vec());
        assert_eq!(back.traceparent, e.traceparent);
    }

    #[test]
    fn a_time_other_than_the_ids_travels_as_a_header() {
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::from_static(b"{}"));
        e.traceparent = TraceContext::for_event_id(&e.id).map(|c| c.to_traceparent());
        e.time = DateTime::parse_from_rfc3339("2024-01-15T10:35:00.123456Z")
            .expect("a time")
            .with_timezone(&Utc);
        let p = to_properties(&e, false, CloudEventsHeaders::Compact);
        // The `timestamp` property no longer agrees with the id, so the reader would not derive
        // the trace: it travels too.
        assert_eq!(header_names(&p), [header::TIME, header::TRACEPARENT]);
        let (back, _) = from_message("a.b", &p, b"{}".to_vec());
        assert_eq!(back.time, e.time, "microseconds kept");
        assert_eq!(back.traceparent, e.traceparent);
    }

    #[test]
    fn a_v7_message_id_gives_the_time_only_when_the_timestamp_agrees() {
        let id = "019ab3f0-6f4a-7cc2-8a1e-5d2b9c0e4f11";
        let ms = 0x019a_b3f0_6f4a_i64;
        let read = |stamp: Option<u64>| {
            let mut p = BasicProperties::default();
            p.with_message_id(id);
            if let Some(s) = stamp {
                p.with_timestamp(s);
            }
            from_message("a.b", &p.finish(), b"{}".to_vec()).0
        };
        let agreeing = read(Some((ms / 1000) as u64));
        assert_eq!(agreeing.time.timestamp_millis(), ms);
        let started = TraceContext::for_event_id(id).map(|c| c.to_traceparent());
        assert_eq!(agreeing.traceparent, started, "the trace the id started");
        let other = read(Some(1_700_000_000));
        assert_eq!(
            other.time.timestamp_millis(),
            1_700_000_000_000,
            "the property wins"
        );
        assert_eq!(other.traceparent, None);
        let before = Utc::now();
        let unstamped = read(None);
        assert!(
            unstamped.time >= before,
            "no timestamp: the receive time, not the id's"
        );
        assert_eq!(unstamped.traceparent, None);
    }

    #[test]
    fn full_headers_repeat_every_attribute() {
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::from_static(b"{}"));
        e.correlation_id = Some("c".into());
        let names = header_names(&to_properties(&e, false, CloudEventsHeaders::Full));
        let wire: Vec<&str> = e.wire_headers().iter().map(|(k, _)| *k).collect();
        for h in wire {
            assert!(names.iter().any(|n| n == h), "{h} missing from {names:?}");
        }
    }

    #[test]
    fn long_values_do_not_panic() {
        let mut e = Envelope::new("a.b", 1, "a.b", "svc", Bytes::new());
        e.id = "i".repeat(300);
        e.correlation_id = Some("c".repeat(300));
        let p = to_properties(&e, false, CloudEventsHeaders::Compact);
        assert!(p.message_id().is_none());
        let (back, _) = from_message("a.b", &p, Vec::new());
        assert_eq!(back.id, e.id);
        assert_eq!(back.correlation_id, e.correlation_id);
    }

    #[test]
    fn headers_of_any_scalar_type_and_the_routing_key_header_are_read() {
        let mut h = FieldTable::new();
        let mut put = |k: &str, v: FieldValue| {
            h.insert(k.try_into().expect("a short name"), v);
        };
        put(header::ATTEMPT, FieldValue::I(3));
        put(header::EVENT_VERSION, FieldValue::from("2"));
        put(header::TIME, FieldValue::from("not a time"));
        put(header::SPEC_VERSION, FieldValue::from("1.0"));
        put(ROUTING_KEY_HEADER, FieldValue::from("orders.placed.v2"));
        put("x-tenant", FieldValue::from("acme"));
        let mut p = BasicProperties::default();
        p.with_timestamp(1_700_000_000).with_headers(h);
        let (e, _) = from_message("svc.orders.retry.1000ms", &p.finish(), b"{}".to_vec());
        assert_eq!((e.attempt, e.event_version), (3, 2));
        assert_eq!(e.routing_key, "orders.placed.v2");
        assert_eq!(e.event_type, "orders.placed.v2", "no type: the routing key");
        // A time header that does not parse gives way to the timestamp property.
        assert_eq!(e.time.timestamp(), 1_700_000_000);
        let extra: Vec<&str> = e.headers.keys().map(String::as_str).collect();
        assert_eq!(
            extra,
            ["x-tenant"],
            "attributes are not repeated as headers"
        );
    }

    #[test]
    fn foreign_message_uses_standard_properties() {
        let mut p = BasicProperties::default();
        p.with_message_id("m1")
            .with_message_type("user.registered")
            .with_app_id("py");
        let (e, _) = from_message("user.registered", &p.finish(), b"{}".to_vec());
        assert_eq!(e.id, "m1");
        assert_eq!(e.event_type, "user.registered");
        assert_eq!(e.source, "py");
    }
}
