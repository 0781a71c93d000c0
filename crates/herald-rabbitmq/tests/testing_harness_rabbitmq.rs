//! The test harness on RabbitMQ: the billing test of `herald/tests/testing_support/billing.rs`,
//! which `herald`'s own tests run on `memory://` and SQLite, here on a real broker by changing
//! the broker line. Afterwards the app's queues and exchange are gone from the broker.

#[path = "../../herald/tests/testing_support/billing.rs"]
mod billing;
mod common;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use herald::testing::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_test_on_rabbitmq() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    herald_rabbitmq::register();
    let flaky = Arc::new(AtomicU32::new(0));
    let app = TestApp::new("billing")
        .broker(common::amqp_url())
        .start(|bus| billing::billing(bus, flaky))
        .await
        .unwrap();
    let declared: Vec<String> = app
        .bus()
        .topologies()
        .iter()
        .flat_map(|t| t.queues.iter().map(|q| q.name.clone()))
        .collect();
    assert!(
        declared.iter().all(|q| q.starts_with("test-")),
        "isolated from other tests on the broker: {declared:?}"
    );
    billing::billing_behaves(app).await;
    // `stop` deleted what the app declared.
    let queues = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(queues.status.success(), "rabbitmqctl list_queues failed");
    let listed = String::from_utf8_lossy(&queues.stdout);
    for q in &declared {
        assert!(
            !listed.lines().any(|l| l.trim() == q),
            "{q} still on the broker"
        );
    }
}
