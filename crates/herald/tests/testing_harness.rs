//! The test harness (`herald::testing::TestApp`) on the embedded transports: the same test body
//! (`testing_support/billing.rs`) runs on a private `memory://` broker and, by changing the
//! broker line, on SQLite (and, in `herald-rabbitmq`, on RabbitMQ).

#[path = "testing_support/billing.rs"]
mod billing;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use billing::{billing, billing_behaves};
use herald::testing::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_tested_in_process_on_memory() {
    let flaky = Arc::new(AtomicU32::new(0));
    let app = TestApp::new("billing")
        .start(|bus| billing(bus, flaky))
        .await
        .unwrap();
    billing_behaves(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_test_on_sqlite_by_changing_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(AtomicU32::new(0));
    let app = TestApp::new("billing")
        .broker(format!("sqlite://{}", dir.path().join("b.db").display()))
        .start(|bus| billing(bus, flaky))
        .await
        .unwrap();
    billing_behaves(app).await;
}
