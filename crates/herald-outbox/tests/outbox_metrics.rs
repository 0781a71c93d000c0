//! The outbox gauges: the relay loop records the backlog and the oldest row's age before its
//! first round; `telemetry::record_status` records any status read. The DebuggingRecorder is
//! this thread's recorder (`#[tokio::test]` runs spawned tasks on the same thread).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::telemetry::names::{OUTBOX_OLDEST_AGE, OUTBOX_PENDING};
use herald::Bus;
use herald_outbox::sqlite::{SqliteOutbox, SqliteStore};
use herald_outbox::{telemetry, OutboxStore, Relay, RelayConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, herald::Event)]
#[event(name = "invoice.issued")]
struct InvoiceIssued {
    n: u32,
}

/// The gauges' values; reading resets them (the DebuggingRecorder swaps to zero).
fn gauges(snapshotter: &Snapshotter) -> (Option<f64>, Option<f64>) {
    let mut pending = None;
    let mut age = None;
    for (ck, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Gauge(v) = value {
            match ck.key().name() {
                OUTBOX_PENDING => pending = Some(v.into_inner()),
                OUTBOX_OLDEST_AGE => age = Some(v.into_inner()),
                _ => {}
            }
        }
    }
    (pending, age)
}

#[tokio::test]
async fn relay_loop_records_backlog_and_oldest_age() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let dir = tempfile::tempdir().unwrap();
    let app_db = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("billing").unwrap();
    let mut db = rusqlite::Connection::open(&app_db).unwrap();
    outbox.migrate(&db).unwrap();
    let tx = db.transaction().unwrap();
    for n in 0..3 {
        outbox.stage(&tx, &InvoiceIssued { n }).unwrap();
    }
    tx.commit().unwrap();
    // Make the oldest row measurably old.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let bus = Bus::builder()
        .service("billing")
        .broker(format!("memory://outbox-metrics-{}", uuid::Uuid::new_v4()))
        .allow_unroutable(true)
        .build()
        .await
        .unwrap();
    let store = Arc::new(SqliteStore::open(&app_db, outbox.clone()).unwrap());
    let relay = Relay::new(
        store.clone(),
        bus.publisher().clone(),
        RelayConfig::default(),
    );
    let relay_metrics = relay.metrics();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { relay.run(cancel).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay_metrics.published.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "relay did not publish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    task.await.unwrap();

    // Read before the first round: all three waiting, the oldest over a second old.
    let (pending, age) = gauges(&snapshotter);
    assert_eq!(pending, Some(3.0));
    let age = age.expect("oldest age recorded");
    assert!((1.0..60.0).contains(&age), "oldest age {age}");

    // After publishing, a status read shows an empty backlog.
    telemetry::record_status(&store.status().await.unwrap());
    assert_eq!(gauges(&snapshotter), (Some(0.0), Some(0.0)));
}
