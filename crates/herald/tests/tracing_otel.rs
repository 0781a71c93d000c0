//! With the `otel` feature, Herald's spans are OpenTelemetry spans linked across the broker:
//! the consumer span has the producer span's trace id and the producer span as its parent.

mod tracing_support;

use std::sync::{Arc, Mutex};

use herald::trace::TraceContext;
use herald::{Bus, Context, Envelope};
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_support::{wait_until, Ping, Pong};

fn exported(exporter: &InMemorySpanExporter, name: &str, event_id: &str) -> Option<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .find(|s| {
            s.name == name
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "cloudevents.event_id" && kv.value.as_str() == event_id
                })
        })
}

#[tokio::test]
async fn exported_consumer_spans_are_children_of_the_producer_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("herald-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let bus = Bus::builder()
        .service("otel-svc")
        .broker(format!("memory://otel-{}", uuid::Uuid::new_v4()))
        .build()
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    bus.subscribe(|p: Ping, ctx: Context| async move {
        ctx.publish(&Pong { n: p.n }).await.map(|_| ())
    })
    .unwrap();
    let s = seen.clone();
    bus.subscribe(move |_: Pong, ctx: Context| {
        let s = s.clone();
        async move { s.lock().unwrap().push(ctx.envelope().clone()) }
    })
    .unwrap();
    bus.start().await.unwrap();

    // Publish from inside an application span: the producer span is its child (inject).
    let request = tracing::info_span!("app.request");
    let request_ctx = request.context().span().span_context().clone();
    let ping_id = bus
        .publish(&Ping { n: 1 })
        .instrument(request.clone())
        .await
        .unwrap();
    drop(request);
    wait_until("pong handled", || !seen.lock().unwrap().is_empty()).await;
    let pong = seen.lock().unwrap()[0].clone();
    wait_until("pong's consumer span exported", || {
        exported(&exporter, "herald.handle", &pong.id).is_some()
    })
    .await;

    let producer = exported(&exporter, "herald.publish", &ping_id).expect("ping producer span");
    let consumer = exported(&exporter, "herald.handle", &ping_id).expect("ping consumer span");
    assert_eq!(producer.span_kind, SpanKind::Producer);
    assert_eq!(consumer.span_kind, SpanKind::Consumer);
    assert_eq!(producer.span_context.trace_id(), request_ctx.trace_id());
    assert_eq!(producer.parent_span_id, request_ctx.span_id());

    // Extract: the consumer continues the producer's trace, under the producer span.
    assert_eq!(
        consumer.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert!(
        consumer.parent_span_is_remote,
        "the parent came over the wire"
    );

    // The follow-up's producer span is a child of the handling; the header names it.
    let pong_producer = exported(&exporter, "herald.publish", &pong.id).expect("pong producer");
    let pong_consumer = exported(&exporter, "herald.handle", &pong.id).expect("pong consumer");
    assert_eq!(
        pong_producer.parent_span_id,
        consumer.span_context.span_id()
    );
    let on_wire = TraceContext::parse(pong.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(
        on_wire.trace_id,
        pong_producer.span_context.trace_id().to_bytes()
    );
    assert_eq!(
        on_wire.span_id,
        pong_producer.span_context.span_id().to_bytes()
    );
    assert_eq!(
        pong_consumer.parent_span_id,
        pong_producer.span_context.span_id()
    );
    assert_eq!(
        pong_consumer.span_context.trace_id(),
        request_ctx.trace_id(),
        "one trace from the request to the last handler"
    );
    let outcome = consumer
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "herald.outcome")
        .map(|kv| kv.value.as_str().to_string());
    assert_eq!(outcome.as_deref(), Some("ack"));

    bus.shutdown().await.unwrap();
    provider.shutdown().unwrap();
}
