//! End to end, reference 001 on Herald (`examples/listing-sync`) on the embedded default broker
//! (SQLite) with reference 001's exact exchanges and queues: admin operations on a `listings`
//! table, the trigger, relays, a full-text search index, a status consumer and health reports.
//! Faults: a relay crashes between publishing and recording, and the relay's database
//! connections are terminated twice. The index must match the table afterwards, every job be
//! `completed`, and the status consumer have seen exactly the status changes. A second test:
//! the search sync marks jobs `failed` when it cannot index, completes them when a retry
//! succeeds, and job monitoring shows processing times per status.

#[path = "../examples/listing-sync/app.rs"]
mod app;
mod common;
mod listing_sync_checks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::health::Health;
use herald::middleware::RetryPolicy;
use herald::transport::dead_letter_admin;
use herald_outbox::{RelayConfig, Status};
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
    let app = app::App::new(PG, &schema, app::Names::reference()).unwrap();
    app.setup().await.unwrap();
    let db = app::connect(PG).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let broker = format!("sqlite://{}", dir.path().join("broker.db").display());
    let bus = app.bus("listing-sync", &broker).await.unwrap();
    app.subscribe(&bus).await.unwrap();
    bus.start().await.unwrap();
    listing_sync_checks::assert_reference_topology(&bus, &app.names);
    let health = Health::new().with(std::sync::Arc::new(bus.clone()));
    app.report_health(&bus, &health).await.unwrap();
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
    listing_sync_checks::assert_health_logged(&app, &db, &["broker", "consumers"]).await;

    cancel.cancel();
    task_b.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_sync_marks_jobs_failed_and_completes_them_when_a_retry_succeeds() {
    let schema = unique("lsf");
    let mut app = app::App::new(PG, &schema, app::Names::reference()).unwrap();
    app.retry = RetryPolicy {
        immediate: 0,
        jitter: 0.0,
        ..RetryPolicy::fixed(20, Duration::from_millis(100))
    };
    app.setup().await.unwrap();
    let db = app::connect(PG).await.unwrap();
    let bus = app
        .bus("listing-sync", &format!("memory://{schema}"))
        .await
        .unwrap();
    app.subscribe(&bus).await.unwrap();
    bus.start().await.unwrap();
    let cancel = CancellationToken::new();
    let relay = app
        .relay(
            &bus,
            RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..RelayConfig::default()
            },
        )
        .await
        .unwrap();
    let c = cancel.clone();
    let relay_task = tokio::spawn(async move { relay.run(c).await });

    // The index is down: the job is marked failed with the reason while Herald retries.
    app.index_down.store(true, Ordering::SeqCst);
    let bike = app.create(&db, "Red bicycle", "fast").await.unwrap();
    let wait = |what: &'static str, f: Box<dyn Fn(&herald_outbox::OutboxStatus) -> bool + Send>| {
        let (app, db) = (&app, &db);
        async move {
            let start = std::time::Instant::now();
            loop {
                let s = app.outbox.status(db).await.unwrap();
                if f(&s) {
                    return s;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "{what}: {s}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let s = wait(
        "the job is marked failed",
        Box::new(|s| s.count(Status::Failed) == 1),
    )
    .await;
    assert_eq!(s.consumer_failed, 1, "{s}");
    assert_eq!(
        s.backlog(),
        0,
        "a consumer's failure is not the relay's backlog: {s}"
    );
    assert_eq!(s.failures[0].error, "search index unavailable");
    // The index comes back: the retry completes the same job.
    app.index_down.store(false, Ordering::SeqCst);
    wait(
        "the job is completed",
        Box::new(|s| s.count(Status::Completed) == 1),
    )
    .await;
    assert_eq!(app.search(&db, "bicycle").await.unwrap(), vec![bike]);

    // A listing the index refuses for good: failed with the reason, and dead-lettered.
    let untitled = app.create(&db, " ", "no title").await.unwrap();
    let s = wait(
        "the untitled job is failed",
        Box::new(|s| s.count(Status::Failed) == 1),
    )
    .await;
    assert!(
        s.failures[0]
            .error
            .contains(&format!("listing {untitled} has no title")),
        "{s}"
    );
    let admin = dead_letter_admin(&**bus.transport()).unwrap();
    let start = std::time::Instant::now();
    let dead = loop {
        let dead = admin.dead_letters("elasticsearch.sync", 10).await.unwrap();
        if !dead.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error().contains("has no title"),
        "{}",
        dead[0].error()
    );
    // Job monitoring as reference 001's query: processing times per status.
    let s = app.outbox.status(&db).await.unwrap();
    for status in [Status::Completed, Status::Failed] {
        let avg = s.avg_processing_secs.get(&status).copied();
        assert!(
            avg.is_some_and(|t| (0.0..30.0).contains(&t)),
            "{status}: {s}"
        );
    }
    assert!(s.to_string().contains("avg time (s)"), "{s}");

    cancel.cancel();
    relay_task.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}
