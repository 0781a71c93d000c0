//! End to end, reference 001 on Herald (`examples/listing-sync`): admin operations on a
//! `listings` table, the trigger, relays, a full-text search index and a status consumer. Faults:
//! a relay crashes between publishing and recording, and the relay's database connections are
//! terminated twice. The index must match the table afterwards, every job be `completed`, and the
//! status consumer have seen exactly the status changes.

#[path = "../examples/listing-sync/app.rs"]
mod app;
mod common;
mod listing_sync_checks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::Bus;
use herald_outbox::RelayConfig;
use tokio_util::sync::CancellationToken;

async fn terminate_relay_connections(c: &tokio_postgres::Client) -> i64 {
    let rows = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'listing_relay' AND datname = 'test'",
            &[],
        )
        .await
        .unwrap();
    rows.len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_sync_index_matches_the_table_after_faults() {
    let schema = unique("ls");
    let app = app::App::new(PG, &schema).unwrap();
    app.setup().await.unwrap();
    let db = app::connect(PG).await.unwrap();

    let bus = Bus::builder()
        .service("listing-sync")
        .broker(format!("memory://{schema}"))
        .build()
        .await
        .unwrap();
    app.subscribe(&bus).await.unwrap();
    bus.start().await.unwrap();
    let cancel = CancellationToken::new();
    let config = RelayConfig {
        batch_size: 10,
        lease: Duration::from_millis(800),
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };

    // Relay A crashes after publishing its second batch, before marking it sent.
    let batches = Arc::new(AtomicUsize::new(0));
    let b = batches.clone();
    let crashing = RelayConfig {
        after_publish: Some(Arc::new(move |_| {
            if b.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("simulated relay crash between publish and status update");
            }
        })),
        ..config.clone()
    };
    let relay_a = app.relay(&bus, crashing).await.unwrap();
    let c = cancel.clone();
    let task_a = tokio::spawn(async move { relay_a.run(c).await });

    let mut ids = Vec::new();
    for i in 0..40 {
        let word = if i == 13 { "zeppelin" } else { "bicycle" };
        ids.push(
            app.create(
                &db,
                &format!("listing {i} {word}"),
                &format!("description of {i}"),
            )
            .await
            .unwrap(),
        );
    }
    assert!(task_a.await.unwrap_err().is_panic(), "relay A crashed");

    let relay_b = app.relay(&bus, config.clone()).await.unwrap();
    let c = cancel.clone();
    let task_b = tokio::spawn(async move { relay_b.run(c).await });
    let mut status_changes = 0;
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 0 {
            app.rename(&db, *id, &format!("renamed {i} bicycle"))
                .await
                .unwrap();
        }
        if i % 2 == 0 {
            app.set_status(&db, *id, "active").await.unwrap();
            status_changes += 1;
        }
        if i % 5 == 0 {
            app.set_status(&db, *id, "sold").await.unwrap();
            status_changes += 1;
        }
        if i == 10 || i == 25 {
            // The relay (re)connected by now; close its connections under it.
            let start = std::time::Instant::now();
            while terminate_relay_connections(&db).await == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the relay never reconnected"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if i % 7 == 0 && i != 13 {
            app.delete(&db, *id).await.unwrap();
        }
    }
    app.wait_in_sync(&db, Duration::from_secs(40))
        .await
        .unwrap();

    listing_sync_checks::assert_in_sync(&app, &db, ids[13], status_changes).await;

    cancel.cancel();
    task_b.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}
