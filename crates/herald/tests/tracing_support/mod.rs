//! Shared by the tracing tests: a `tracing` layer that records every span's fields and parent,
//! and the publish → handle → follow-up flow each transport runs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::trace::TraceContext;
use herald::{Bus, Context, Envelope, Event, MessageOptions};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One span as the capture layer saw it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: String,
    pub fields: HashMap<String, String>,
    /// Index (in the capture) of the `tracing` parent span.
    pub parent: Option<usize>,
}

impl SpanRecord {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every span; the handle is cheap to clone and read from the test.
#[derive(Clone, Default)]
pub struct Capture {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

struct Index(usize);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Index>().map(|i| i.0));
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push(SpanRecord {
            name: attrs.metadata().name().to_string(),
            fields,
            parent,
        });
        span.extensions_mut().insert(Index(spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(i) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Fields(&mut spans[i].fields));
    }
}

impl Capture {
    /// Install for the current thread (the tests run on a current-thread runtime, so the
    /// bus's consumer tasks record here too).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }

    /// Index and record of the only span named `name` whose `cloudevents.event_id` is `id`.
    pub fn find(&self, name: &str, event_id: &str) -> (usize, SpanRecord) {
        let all = self.spans();
        let found: Vec<_> = all
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.name == name && s.field("cloudevents.event_id") == Some(event_id))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one `{name}` span for event {event_id}: {found:#?}"
        );
        found.into_iter().next().unwrap()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trace.ping")]
pub struct Ping {
    pub n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trace.pong")]
pub struct Pong {
    pub n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trace.echo")]
pub struct Echo {
    pub n: u32,
}

pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn trace_of(e: &Envelope) -> TraceContext {
    let tp = e
        .traceparent
        .as_deref()
        .expect("every event carries a traceparent");
    TraceContext::parse(tp).unwrap_or_else(|| panic!("valid traceparent: {tp}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Everything the handlers saw, by event type.
type Seen = Arc<Mutex<HashMap<&'static str, Envelope>>>;

/// Publish a ping on `bus` (already configured, not started); its handler publishes a pong
/// through `Context` and an echo through a plain `Publisher`. Checks, from the captured spans
/// and the envelopes the handlers got:
/// - the `herald.handle` span of the ping has the publisher's trace id and the publish span as
///   parent (`parent_span_id`), and records the outcome;
/// - the follow-ups carry the same trace id with new span ids whose parent is the handle span,
///   and their publish spans are children of it in `tracing` too;
/// - a publish outside any handling starts a new trace; an explicit traceparent is sent as is.
pub async fn check_flow(bus: Bus, capture: &Capture, transport: &str) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    bus.subscribe(move |p: Ping, ctx: Context| {
        let s = s.clone();
        async move {
            s.lock().unwrap().insert("ping", ctx.envelope().clone());
            if p.n == 1 {
                ctx.publish(&Pong { n: p.n }).await?;
                ctx.publisher().publish(&Echo { n: p.n }).await?;
            }
            Ok::<(), herald::Error>(())
        }
    })
    .unwrap();
    let s = seen.clone();
    bus.subscribe(move |_: Pong, ctx: Context| {
        let s = s.clone();
        async move {
            s.lock().unwrap().insert("pong", ctx.envelope().clone());
        }
    })
    .unwrap();
    let s = seen.clone();
    bus.subscribe(move |_: Echo, ctx: Context| {
        let s = s.clone();
        async move {
            s.lock().unwrap().insert("echo", ctx.envelope().clone());
        }
    })
    .unwrap();
    bus.start().await.unwrap();

    let ping_id = bus.publish(&Ping { n: 1 }).await.unwrap();
    wait_until("ping, pong and echo handled", || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let got = seen.lock().unwrap().clone();

    // The publish span's context is what travelled.
    let (publish_idx, publish) = capture.find("herald.publish", &ping_id);
    let ping_trace = trace_of(&got["ping"]);
    assert_eq!(publish.field("otel.kind"), Some("producer"));
    assert_eq!(publish.field("messaging.system"), Some(transport));
    assert_eq!(publish.field("cloudevents.event_type"), Some("trace.ping"));
    assert_eq!(
        publish.field("trace_id"),
        Some(hex(&ping_trace.trace_id).as_str())
    );
    assert_eq!(
        publish.field("span_id"),
        Some(hex(&ping_trace.span_id).as_str())
    );
    assert_eq!(
        publish.field("parent_span_id"),
        None,
        "a new trace has no parent"
    );
    assert_eq!(
        Some(ping_trace),
        TraceContext::for_event_id(&ping_id),
        "a new trace is derived from the event that started it"
    );

    // The consumer's span continues the publisher's trace.
    let (handle_idx, handle) = capture.find("herald.handle", &ping_id);
    assert_eq!(handle.field("otel.kind"), Some("consumer"));
    assert_eq!(handle.field("trace_id"), publish.field("trace_id"));
    assert_eq!(handle.field("parent_span_id"), publish.field("span_id"));
    assert_ne!(handle.field("span_id"), publish.field("span_id"));
    assert_eq!(handle.field("herald.attempt"), Some("1"));
    assert!(handle
        .field("messaging.destination.name")
        .is_some_and(|q| q.contains("trace.ping")));
    assert_ne!(publish_idx, handle_idx);

    // Follow-ups (through Context and through a plain Publisher): same trace, new span, parent
    // = the handle span.
    for kind in ["pong", "echo"] {
        let e = &got[kind];
        let t = trace_of(e);
        assert_eq!(t.trace_id, ping_trace.trace_id, "{kind} stays in the trace");
        assert_ne!(t.span_id, ping_trace.span_id, "{kind} gets its own span");
        let (_, p) = capture.find("herald.publish", &e.id);
        assert_eq!(p.field("span_id"), Some(hex(&t.span_id).as_str()));
        assert_eq!(p.field("parent_span_id"), handle.field("span_id"), "{kind}");
        assert_eq!(
            p.parent,
            Some(handle_idx),
            "{kind}'s publish span is inside the handle span"
        );
        let (_, h) = capture.find("herald.handle", &e.id);
        assert_eq!(h.field("trace_id"), handle.field("trace_id"));
        assert_eq!(h.field("parent_span_id"), p.field("span_id"));
    }
    assert_eq!(got["pong"].causation_id.as_deref(), Some(ping_id.as_str()));

    // The outcome is recorded once the pipeline has answered.
    wait_until("outcome recorded", || {
        capture
            .find("herald.handle", &ping_id)
            .1
            .field("herald.outcome")
            == Some("ack")
    })
    .await;

    // Outside a handler: a new trace. With an explicit traceparent: sent unchanged.
    let other_id = bus.publish(&Ping { n: 2 }).await.unwrap();
    let explicit = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = MessageOptions {
        traceparent: Some(explicit.to_string()),
        ..Default::default()
    };
    let explicit_id = bus.publish_with(&Ping { n: 3 }, options).await.unwrap();
    wait_until("the other pings handled", || {
        let g = seen.lock().unwrap();
        g["ping"].id == explicit_id || g["ping"].id == other_id
    })
    .await;
    let (_, other) = capture.find("herald.publish", &other_id);
    assert_ne!(
        other.field("trace_id"),
        publish.field("trace_id"),
        "a new trace"
    );
    let (_, with_explicit) = capture.find("herald.publish", &explicit_id);
    assert_eq!(
        with_explicit.field("trace_id"),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    wait_until("the explicit one handled", || {
        capture.spans().iter().any(|s| {
            s.name == "herald.handle" && s.field("cloudevents.event_id") == Some(&explicit_id)
        })
    })
    .await;
    let (_, explicit_handle) = capture.find("herald.handle", &explicit_id);
    assert_eq!(
        explicit_handle.field("parent_span_id"),
        Some("b7ad6b7169203331")
    );

    bus.shutdown().await.unwrap();
}
