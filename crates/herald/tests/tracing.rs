//! Tracing across a publish and its handling: `herald.publish` / `herald.handle` spans and the
//! W3C `traceparent` linking them, on the memory and SQLite transports.

mod tracing_support;

use herald::Bus;
use tracing_support::{check_flow, Capture};

#[tokio::test]
async fn memory_handler_spans_continue_the_publishers_trace() {
    let capture = Capture::default();
    let _guard = capture.install();
    let bus = Bus::builder()
        .service("trace-svc")
        .broker(format!("memory://trace-{}", uuid::Uuid::new_v4()))
        .build()
        .await
        .unwrap();
    check_flow(bus, &capture, "memory").await;
}

#[tokio::test]
async fn sqlite_keeps_the_traceparent_in_storage() {
    let capture = Capture::default();
    let _guard = capture.install();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .service("trace-svc")
        .broker(format!(
            "sqlite://{}",
            dir.path().join("herald.db").display()
        ))
        .build()
        .await
        .unwrap();
    check_flow(bus, &capture, "sqlite").await;
}
