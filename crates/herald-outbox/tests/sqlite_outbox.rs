//! The SQLite outbox and inbox: staging in the caller's transaction, two relays on one file
//! publishing to a `sqlite://` broker in order per aggregate, failures, retention, the inbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::MessageOptions;
use herald_outbox::inbox::sqlite::{SqliteInbox, SqliteInboxStore};
use herald_outbox::inbox::{check_store, Recorded};
use herald_outbox::sqlite::{SqliteOutbox, SqliteStore};
use herald_outbox::{OutboxStore, Relay, RelayConfig, Retention, RetryBackoff, Status};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn sqlite_outbox_relays_in_order_retries_and_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let app_db = dir.path().join("app.db");
    let broker = format!("sqlite://{}", dir.path().join("broker.db").display());
    let outbox = SqliteOutbox::new("app").unwrap();
    let mut db = rusqlite::Connection::open(&app_db).unwrap();
    assert!(outbox.migrate(&db).unwrap());
    assert!(!outbox.migrate(&db).unwrap(), "applies once");
    db.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, agg TEXT)")
        .unwrap();

    // Committed and rolled-back application transactions.
    let aggs = ["a", "b", "c"];
    let per = 60u64;
    for n in 0..per {
        let tx = db.transaction().unwrap();
        for a in aggs {
            tx.execute("INSERT INTO orders (agg) VALUES (?1)", [a])
                .unwrap();
            outbox
                .stage_with(
                    &tx,
                    &Numbered { agg: a.into(), n },
                    &MessageOptions::default().subject(a),
                )
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let tx = db.transaction().unwrap();
    outbox
        .stage(
            &tx,
            &Numbered {
                agg: "z".into(),
                n: 0,
            },
        )
        .unwrap();
    drop(tx); // rolled back
    assert_eq!(outbox.status(&db).unwrap().count(Status::Pending), per * 3);

    let (bus, seen) = recording_bus(&broker, "c", "test.#").await;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(SqliteStore::open(&app_db, outbox.clone()).unwrap());
        let config = RelayConfig {
            batch_size: 25,
            poll_interval: Duration::from_millis(20),
            ..RelayConfig::default()
        };
        let relay = Relay::new(store, bus.publisher().clone(), config);
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move { relay.run(c).await }));
    }
    let total = (per * 3) as usize;
    eventually(Duration::from_secs(20), "all deliveries", || {
        seen.lock().unwrap().len() >= total
    })
    .await;
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), total);
    for a in aggs {
        let ns: Vec<u64> = got
            .iter()
            .filter(|g| g.1.as_deref() == Some(a))
            .map(|g| g.2["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..per).collect::<Vec<_>>(), "aggregate {a} in order");
    }
    let status = outbox.status(&db).unwrap();
    assert_eq!(status.count(Status::Sent), total as u64);
    assert!(status.avg_processing_secs.contains_key(&Status::Sent));
    assert!(outbox.complete(&db, &got[0].0).unwrap());
    assert!(outbox
        .send_latency(&db, chrono::Utc::now() - chrono::Duration::hours(1))
        .unwrap()
        .is_some());

    // An unroutable event fails, is retried after its backoff, and holds back its aggregate.
    let mut orphan = herald::Envelope::new(
        "orphan.event",
        1,
        "orphan.event",
        "app",
        bytes::Bytes::from_static(b"{}"),
    );
    orphan.subject = Some("o".into());
    outbox.stage_envelope(&db, &orphan).unwrap();
    outbox
        .stage_with(
            &db,
            &Numbered {
                agg: "o".into(),
                n: 1,
            },
            &MessageOptions::default().subject("o"),
        )
        .unwrap();
    let store = Arc::new(SqliteStore::open(&app_db, outbox.clone()).unwrap());
    let config = RelayConfig {
        retry: RetryBackoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), bus.publisher().clone(), config);
    let round = relay.run_once().await.unwrap();
    assert_eq!((round.failed, round.released), (1, 1));
    let status = store.status().await.unwrap();
    assert_eq!(status.failures[0].event_id, orphan.id);
    assert!(status.oldest_pending_age_secs.is_some());
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "not due yet");
    let (bus2, _seen2) = recording_bus(&broker, "d", "orphan.#").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.run_once().await.unwrap().published, 2);

    // Retention.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let archived = store
        .prune(Retention::Archive(Duration::from_millis(5)))
        .await
        .unwrap();
    assert_eq!(archived, total as u64 + 2);
    let in_archive: i64 = db
        .query_row("SELECT count(*) FROM herald_outbox_archive", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(in_archive, archived as i64);
    assert_eq!(
        store.status().await.unwrap().counts.values().sum::<u64>(),
        0
    );
    bus.shutdown().await.unwrap();
    bus2.shutdown().await.unwrap();
}

#[tokio::test]
async fn sqlite_inbox_store_and_same_transaction_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbox.db");
    let store = SqliteInboxStore::open(&path, SqliteInbox::new()).unwrap();
    check_store(&store, "c").await;
    herald_outbox::inbox::InboxStore::begin(&store, "c", "short", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        herald_outbox::inbox::InboxStore::purge_expired(&store)
            .await
            .unwrap()
            >= 1
    );

    let mut db = rusqlite::Connection::open(&path).unwrap();
    // Long enough that a loaded machine cannot expire the record mid-loop; expiry is checked
    // below with a second, short-lived inbox over the same table.
    let inbox = SqliteInbox::new().keep_for(Duration::from_secs(60));
    inbox.migrate(&db).unwrap();
    db.execute_batch("CREATE TABLE applied (n INTEGER)")
        .unwrap();
    for _ in 0..3 {
        let tx = db.transaction().unwrap();
        if inbox.record(&tx, "sync", "e1").unwrap() == Recorded::New {
            tx.execute("INSERT INTO applied VALUES (1)", []).unwrap();
        }
        tx.commit().unwrap();
    }
    let n: i64 = db
        .query_row("SELECT count(*) FROM applied", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "applied once");
    let tx = db.transaction().unwrap();
    assert_eq!(inbox.record(&tx, "sync", "e2").unwrap(), Recorded::New);
    drop(tx);
    assert_eq!(
        inbox.record(&db, "sync", "e2").unwrap(),
        Recorded::New,
        "a rolled-back record is not kept"
    );
    let short = SqliteInbox::new().keep_for(Duration::from_millis(50));
    assert_eq!(short.record(&db, "sync", "e3").unwrap(), Recorded::New);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        short.record(&db, "sync", "e3").unwrap(),
        Recorded::New,
        "expired"
    );
    assert_eq!(
        inbox.record(&db, "sync", "e1").unwrap(),
        Recorded::Duplicate,
        "not expired within keep_for"
    );
}
