//! Reference 001 end to end on RabbitMQ: the listing-sync app (trigger, relay, full-text index,
//! status consumer) while the broker side closes every client connection twice
//! (`rabbitmqctl close_all_connections`). Publishers, relay and consumers must recover; the
//! index must match the table afterwards, every job be `completed`, and duplicates from
//! redelivery be absorbed by the inbox.

#[path = "../examples/listing-sync/app.rs"]
mod app;
mod common;
mod listing_sync_checks;

use std::time::Duration;

use common::*;
use herald::health::Health;
use herald_outbox::RelayConfig;
use tokio_util::sync::CancellationToken;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The client-provided names of the broker's open connections.
async fn broker_connection_names() -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "client_properties"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn close_all_broker_connections() {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "close_all_connections",
            "herald listing-sync fault test",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs (scripts/services.sh installs RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_sync_survives_broker_connection_kills() {
    let schema = unique("lsr");
    // Reference 001's names; queues are global on a broker: a prefix of this run's own.
    let app = app::App::new(PG, &schema, app::Names::prefixed(&format!("{schema}."))).unwrap();
    app.setup().await.unwrap();
    let db = app::connect(PG).await.unwrap();

    herald_rabbitmq::register();
    let bus = app
        .bus(&format!("listing-sync-{schema}"), AMQP)
        .await
        .unwrap();
    app.subscribe(&bus).await.unwrap();
    bus.start().await.unwrap();
    listing_sync_checks::assert_reference_topology(&bus, &app.names);
    let health = Health::new().with(std::sync::Arc::new(bus.clone()));
    app.report_health(&bus, &health).await.unwrap();
    let cancel = CancellationToken::new();
    let config = RelayConfig {
        batch_size: 10,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let relay = app.relay(&bus, config).await.unwrap();
    let c = cancel.clone();
    let relay_task = tokio::spawn(async move { relay.run(c).await });

    let mut ids = Vec::new();
    let mut status_changes = 0;
    let mut kills = 0;
    for i in 0..40 {
        let word = if i == 13 { "zeppelin" } else { "bicycle" };
        let id = app
            .create(
                &db,
                &format!("listing {i} {word}"),
                &format!("description of {i}"),
            )
            .await
            .unwrap();
        ids.push(id);
        if i % 3 == 0 {
            app.rename(&db, id, &format!("renamed {i} bicycle"))
                .await
                .unwrap();
        }
        if i % 2 == 0 {
            app.set_status(&db, id, "active").await.unwrap();
            status_changes += 1;
        }
        if i == 12 || i == 28 {
            // Let some events get in flight, then cut every connection from the broker side.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let names = broker_connection_names().await;
            assert!(
                names.contains(&format!("listing-sync-{schema} herald publisher"))
                    && names.contains(&format!("listing-sync-{schema} herald consumer")),
                "the bus's connections are up before the kill: {names}"
            );
            close_all_broker_connections().await;
            kills += 1;
        }
        if i % 7 == 0 && i != 13 {
            app.delete(&db, id).await.unwrap();
        }
    }
    app.wait_in_sync(&db, Duration::from_secs(60))
        .await
        .unwrap();

    listing_sync_checks::assert_in_sync(&app, &db, ids[13], status_changes).await;
    listing_sync_checks::assert_health_logged(&app, &db, &["broker", "consumers"]).await;

    assert_eq!(kills, 2);
    assert!(bus.transport().is_connected(), "the bus reconnected");

    cancel.cancel();
    relay_task.await.unwrap();
    let topologies = bus.topologies();
    bus.shutdown().await.unwrap();
    // Leave nothing behind on the shared broker.
    let cleanup = herald::transport::connect(AMQP, "cleanup").await.unwrap();
    let admin = cleanup
        .topology_admin()
        .expect("RabbitMQ deletes topologies");
    for t in &topologies {
        admin.delete_topology(t).await.unwrap();
    }
    cleanup.close().await.unwrap();
    drop_schema(&schema).await;
}
