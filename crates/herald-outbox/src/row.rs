//! The stored shape of a staged event, and the conversions to and from an [`Envelope`].

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald::envelope::{format_time, header};
use herald::{Envelope, Event, MessageOptions};

use crate::error::{Error, Result};

/// Stored header carrying the envelope's priority (not a wire header).
const PRIORITY: &str = "herald_outbox_priority";
/// Stored header carrying the envelope's TTL in milliseconds (not a wire header).
const TTL_MS: &str = "herald_outbox_ttl_ms";

/// One event as it is written into the outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedEvent {
    /// The event id (CloudEvents `id`), unique in the table.
    pub event_id: String,
    /// The ordering key: events of one aggregate are published in staging order.
    pub aggregate: String,
    /// The routing key on the topic exchange.
    pub routing_key: String,
    /// The event name (CloudEvents `type`).
    pub event_type: String,
    /// Every other attribute, as JSON text (a flat object of strings).
    pub headers: String,
    /// The JSON body, as text.
    pub body: String,
}

impl StagedEvent {
    /// Encode a typed event published by `service`, with options (subject, correlation, ...).
    ///
    /// The aggregate is the CloudEvents subject when set (`MessageOptions::subject`), otherwise
    /// the event type: events without a subject keep their order per event type.
    pub fn from_event<E: Event>(
        event: &E,
        service: &str,
        options: &MessageOptions,
    ) -> Result<Self> {
        let mut envelope = Envelope::for_event(event, service)?;
        envelope.priority = options.priority;
        envelope.ttl = options.ttl;
        envelope.subject.clone_from(&options.subject);
        envelope.correlation_id.clone_from(&options.correlation_id);
        envelope.causation_id.clone_from(&options.causation_id);
        envelope.traceparent.clone_from(&options.traceparent);
        envelope
            .headers
            .extend(options.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self::from_envelope(&envelope)
    }

    /// Encode a ready-made envelope. Without a `traceparent` it gets the trace context in force
    /// ([`herald::trace::current`]), else the trace its id names
    /// ([`herald::trace::TraceContext::for_event_id`]).
    pub fn from_envelope(envelope: &Envelope) -> Result<Self> {
        let body = std::str::from_utf8(&envelope.body)
            .map_err(|_| {
                Error::Data(format!(
                    "event {} has a body that is not UTF-8 JSON",
                    envelope.id
                ))
            })?
            .to_string();
        let mut map = envelope.header_map();
        if envelope.traceparent.is_none() {
            // The relay publishes this unchanged, so the event continues the trace of the code
            // that staged it (a handler, an OpenTelemetry span) instead of starting a new one;
            // outside any trace it starts the one its id names, as `Bus::publish` does.
            let trace = herald::trace::current()
                .or_else(|| herald::trace::TraceContext::for_event_id(&envelope.id))
                .unwrap_or_else(herald::trace::TraceContext::new_root);
            map.insert(header::TRACEPARENT.into(), trace.to_traceparent());
        }
        // Priority and TTL are not wire headers; keep them for the relay.
        if envelope.priority > 0 {
            map.insert(PRIORITY.into(), envelope.priority.to_string());
        }
        if let Some(ttl) = envelope.ttl {
            map.insert(TTL_MS.into(), ttl.as_millis().to_string());
        }
        let headers = serde_json::to_string(&map)
            .map_err(|e| Error::Data(format!("headers of event {}: {e}", envelope.id)))?;
        Ok(StagedEvent {
            event_id: envelope.id.clone(),
            aggregate: envelope
                .subject
                .clone()
                .unwrap_or_else(|| envelope.event_type.clone()),
            routing_key: envelope.routing_key.clone(),
            event_type: envelope.event_type.clone(),
            headers,
            body,
        })
    }
}

/// A row the relay claimed: its position and the envelope to publish.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    /// The row's sequence number (the order of staging).
    pub seq: i64,
    /// The ordering key.
    pub aggregate: String,
    /// Publish attempts so far, this one included.
    pub attempts: u32,
    /// What to publish.
    pub envelope: Envelope,
}

/// Rebuild the envelope of a stored row. Rows written by a SQL trigger carry no CloudEvents
/// headers: the id, type and subject come from the row's columns, the source from `service`,
/// the time from `created_at`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn envelope_of(
    event_id: String,
    aggregate: &str,
    routing_key: &str,
    event_type: String,
    headers: &str,
    body: String,
    created_at: DateTime<Utc>,
    service: &str,
) -> Envelope {
    let mut map: BTreeMap<String, String> = match serde_json::from_str::<serde_json::Value>(headers)
    {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    map.insert(header::ID.to_string(), event_id);
    map.entry(header::TYPE.to_string()).or_insert(event_type);
    map.entry(header::SOURCE.to_string())
        .or_insert_with(|| service.to_string());
    map.entry(header::TIME.to_string())
        .or_insert_with(|| format_time(&created_at));
    map.entry(header::SUBJECT.to_string())
        .or_insert_with(|| aggregate.to_string());
    map.remove(header::ATTEMPT);
    let priority = map.remove(PRIORITY).and_then(|p| p.parse::<u8>().ok());
    let ttl = map.remove(TTL_MS).and_then(|t| t.parse::<u64>().ok());
    let mut envelope = Envelope::from_headers(map, routing_key, Bytes::from(body));
    envelope.priority = priority.unwrap_or(0).min(9);
    envelope.ttl = ttl.map(std::time::Duration::from_millis);
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_events_round_trip_and_trigger_rows_get_defaults() {
        let mut e = Envelope::new("a.b", 2, "a.b.v2", "svc", Bytes::from_static(b"{\"x\":1}"));
        e.subject = Some("order-7".into());
        e.correlation_id = Some("c1".into());
        e.priority = 5;
        e.ttl = Some(std::time::Duration::from_secs(30));
        let s = StagedEvent::from_envelope(&e).unwrap();
        assert_eq!(s.aggregate, "order-7");
        let back = envelope_of(
            s.event_id,
            &s.aggregate,
            &s.routing_key,
            s.event_type,
            &s.headers,
            s.body,
            Utc::now(),
            "relay",
        );
        assert_eq!(back.id, e.id);
        assert_eq!(back.source, "svc");
        assert_eq!(back.correlation_id.as_deref(), Some("c1"));
        assert_eq!(back.event_version, 2);
        assert_eq!(back.priority, 5);
        assert_eq!(back.ttl, Some(std::time::Duration::from_secs(30)));
        assert!(back.headers.is_empty(), "{:?}", back.headers);
        assert_eq!(back.body, e.body);

        let t = envelope_of(
            "id-1".into(),
            "listings:4",
            "listing.insert",
            "listing.insert".into(),
            "{}",
            "{}".into(),
            Utc::now(),
            "db",
        );
        assert_eq!(t.id, "id-1");
        assert_eq!(t.source, "db");
        assert_eq!(t.event_type, "listing.insert");
        assert_eq!(t.subject.as_deref(), Some("listings:4"));
    }
}
