//! The PostgreSQL outbox against the local server: staging in the caller's transaction, the
//! relay (order, concurrency, failures, NOTIFY), retention and status.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::MessageOptions;
use herald_outbox::postgres::{PgOutbox, PgStore};
use herald_outbox::{OutboxStore, Relay, RelayConfig, Retention, RetryBackoff, Status};
use tokio_util::sync::CancellationToken;

async fn setup(name: &str) -> (String, PgOutbox, tokio_postgres::Client) {
    let schema = unique(name);
    let outbox = PgOutbox::new("test-svc").unwrap().schema(&schema).unwrap();
    let mut client = pg().await;
    assert_eq!(outbox.migrate(&mut client).await.unwrap(), 3);
    assert_eq!(
        outbox.migrate(&mut client).await.unwrap(),
        0,
        "migrations apply once"
    );
    (schema, outbox, client)
}

/// A relay on `outbox` publishing through `bus` that polls only every 60 s, so that what it
/// finds sooner a NOTIFY or its look-again after a busy round found; idle and LISTENing when
/// this returns. Cancel the token and await the task to stop it.
async fn idle_relay(
    outbox: &PgOutbox,
    bus: &herald::Bus,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store, bus.publisher().clone(), config);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { relay.run(c).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    (cancel, task)
}

fn ev(agg: &str, n: u64) -> (Numbered, MessageOptions) {
    (
        Numbered { agg: agg.into(), n },
        MessageOptions::default().subject(agg),
    )
}

#[tokio::test]
async fn only_committed_stages_are_published() {
    let (schema, outbox, mut client) = setup("ob_commit").await;
    let tx = client.transaction().await.unwrap();
    let (e, o) = ev("a", 1);
    let kept = outbox.stage_with(&tx, &e, &o).await.unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let (e, o) = ev("a", 2);
    outbox.stage_with(&tx, &e, &o).await.unwrap();
    tx.rollback().await.unwrap();

    let status = outbox.status(&client).await.unwrap();
    assert_eq!(status.count(Status::Pending), 1);
    assert!(status.oldest_pending_age_secs.is_some());

    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
    let relay = Relay::new(store, bus.publisher().clone(), RelayConfig::default());
    let round = relay.run_once().await.unwrap();
    assert_eq!((round.claimed, round.published), (1, 1));
    eventually(Duration::from_secs(5), "delivery", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, kept, "the event id survives the outbox");
    assert_eq!(got[0].1.as_deref(), Some("a"));
    assert_eq!(got[0].2["n"], 1);

    let status = outbox.status(&client).await.unwrap();
    assert_eq!(status.count(Status::Sent), 1);
    assert_eq!(status.count(Status::Pending), 0);
    assert!(status.oldest_pending_age_secs.is_none());
    assert!(status.avg_processing_secs.contains_key(&Status::Sent));
    assert!(outbox.complete(&client, &kept).await.unwrap());
    assert!(
        !outbox.complete(&client, &kept).await.unwrap(),
        "completing twice is a no-op"
    );
    assert_eq!(
        outbox
            .status(&client)
            .await
            .unwrap()
            .count(Status::Completed),
        1
    );
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

#[tokio::test]
async fn two_relays_share_the_work_and_keep_order_per_aggregate() {
    let (schema, outbox, client) = setup("ob_order").await;
    // Many aggregates and small claims, so the two relays can work side by side (a relay never
    // takes an aggregate whose earlier rows the other one holds).
    let aggs: Vec<String> = (0..30).map(|i| format!("agg{i}")).collect();
    let aggs: Vec<&str> = aggs.iter().map(String::as_str).collect();
    let per = 20u64;
    // Interleaved, in small transactions, so aggregates mix within every claim.
    for chunk in 0..(per / 10) {
        let rows: Vec<_> = (0..10)
            .flat_map(|i| aggs.iter().map(move |a| (a, chunk * 10 + i)))
            .map(|(a, n)| {
                let (e, o) = ev(a, n);
                herald_outbox::StagedEvent::from_event(&e, "test-svc", &o).unwrap()
            })
            .collect();
        outbox.stage_rows(&client, &rows).await.unwrap();
    }
    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
        let config = RelayConfig {
            batch_size: 5,
            poll_interval: Duration::from_millis(50),
            ..RelayConfig::default()
        };
        let relay = Relay::new(store, bus.publisher().clone(), config);
        metrics.push(relay.metrics());
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move { relay.run(c).await }));
    }
    let total = per as usize * aggs.len();
    eventually(Duration::from_secs(20), "all deliveries", || {
        seen.lock().unwrap().len() >= total
    })
    .await;
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), total, "each event exactly once without faults");
    for a in &aggs {
        let ns: Vec<u64> = got
            .iter()
            .filter(|g| g.1.as_deref() == Some(*a))
            .map(|g| g.2["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ns,
            (0..per).collect::<Vec<_>>(),
            "aggregate {a} in staging order"
        );
    }
    let m: Vec<u64> = metrics
        .iter()
        .map(|m| m.published.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(m.iter().sum::<u64>(), total as u64);
    assert!(m.iter().all(|&n| n > 0), "both relays published: {m:?}");
    assert_eq!(
        outbox.status(&client).await.unwrap().count(Status::Sent),
        total as u64
    );
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_failed_row_is_retried_with_backoff_and_holds_back_its_aggregate() {
    let (schema, outbox, client) = setup("ob_fail").await;
    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    // x1 goes to a routing key nobody is bound to yet: unroutable, so it fails.
    let mut x1 = herald::Envelope::new(
        "orphan.event",
        1,
        "orphan.event",
        "test-svc",
        bytes::Bytes::from_static(b"{\"n\":1}"),
    );
    x1.subject = Some("x".into());
    outbox.stage_envelope(&client, &x1).await.unwrap();
    let (e, o) = ev("x", 2);
    let x2 = outbox.stage_with(&client, &e, &o).await.unwrap();
    let (e, o) = ev("y", 1);
    let y1 = outbox.stage_with(&client, &e, &o).await.unwrap();

    let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
    let config = RelayConfig {
        retry: RetryBackoff {
            base: Duration::from_millis(300),
            max: Duration::from_secs(2),
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), bus.publisher().clone(), config);
    let round = relay.run_once().await.unwrap();
    assert_eq!(
        (round.claimed, round.published, round.failed, round.released),
        (3, 1, 1, 1)
    );
    let status = store.status().await.unwrap();
    assert_eq!(
        (
            status.count(Status::Failed),
            status.count(Status::Pending),
            status.count(Status::Sent)
        ),
        (1, 1, 1)
    );
    assert_eq!(status.failures.len(), 1);
    assert_eq!(status.failures[0].event_id, x1.id);
    assert_eq!(status.failures[0].attempts, 1);
    assert!(
        status.failures[0].error.contains("orphan.event"),
        "{}",
        status.failures[0].error
    );

    // Not due yet, and x2 waits behind x1.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
    eventually(Duration::from_secs(5), "y1", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap()[0].0, y1);

    // Someone binds the key; after the backoff both x rows go, in order.
    let (bus2, seen2) = recording_bus(&format!("memory://{schema}"), "d", "orphan.#").await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let round = relay.run_once().await.unwrap();
    assert_eq!((round.claimed, round.published), (2, 2));
    eventually(Duration::from_secs(5), "x1 and x2", || {
        seen.lock().unwrap().len() == 2 && seen2.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap()[1].0, x2);
    let row = client
        .query_one(
            &format!(
                "SELECT status, attempts, last_error FROM {} WHERE event_id = $1",
                outbox.qualified()
            ),
            &[&x1.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sent");
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    bus.shutdown().await.unwrap();
    bus2.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

#[tokio::test]
async fn notify_wakes_an_idle_relay_before_its_poll() {
    let (schema, outbox, client) = setup("ob_notify").await;
    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    let (cancel, task) = idle_relay(&outbox, &bus).await;
    for n in 0..3 {
        let (e, o) = ev("n", n);
        outbox.stage_with(&client, &e, &o).await.unwrap();
        eventually(Duration::from_secs(5), "a NOTIFY-driven publish", || {
            seen.lock().unwrap().len() == n as usize + 1
        })
        .await;
    }
    // Without the hint, the relay only finds rows when it polls (here: not within 1.5 s).
    outbox.set_notify(&client, false).await.unwrap();
    // Let the last wake-up settle and the relay's short look-again after a busy round pass.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (e, o) = ev("n", 3);
    outbox.stage_with(&client, &e, &o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "no NOTIFY, no early wake-up");
    outbox.set_notify(&client, true).await.unwrap();
    let (e, o) = ev("n", 4);
    outbox.stage_with(&client, &e, &o).await.unwrap();
    eventually(Duration::from_secs(5), "both rows after a NOTIFY", || {
        seen.lock().unwrap().len() == 5
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

/// Only one staging transaction at a time sends a NOTIFY (so concurrent stagers can share WAL
/// flushes); those that send none are still published at once, not at the relay's next poll.
#[tokio::test]
async fn concurrent_stagers_are_published_without_waiting_for_the_poll() {
    let (schema, outbox, _client) = setup("ob_stagers").await;
    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    let (cancel, task) = idle_relay(&outbox, &bus).await;
    let writers = 8u64;
    let each = 25u64;
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let outbox = outbox.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = pg().await;
                for n in 0..each {
                    let tx = client.transaction().await.unwrap();
                    let (e, o) = ev(&format!("w{w}"), round * 1000 + n);
                    outbox.stage_with(&tx, &e, &o).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let want = ((round + 1) * writers * each) as usize;
        // Far sooner than the 60 s poll.
        eventually(
            Duration::from_secs(10),
            "every staged row published",
            || seen.lock().unwrap().len() >= want,
        )
        .await;
        // Idle past the relay's look-again window before the next burst.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let ids: std::collections::HashSet<String> =
        seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(ids.len(), (3 * writers * each) as usize, "distinct events");
    cancel.cancel();
    task.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

/// The race the relay's short look-again is for: a stager that sent no NOTIFY (another
/// transaction held the notifier's lock) commits just after the relay, woken by that other one,
/// found the table empty.
#[tokio::test]
async fn a_stager_committing_after_the_notifier_is_published_before_the_poll() {
    let (schema, outbox, _client) = setup("ob_late").await;
    let (bus, seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    let (cancel, task) = idle_relay(&outbox, &bus).await;
    let (mut first, mut second) = (pg().await, pg().await);
    let notifier = first.transaction().await.unwrap();
    let (e, o) = ev("late", 1);
    outbox.stage_with(&notifier, &e, &o).await.unwrap();
    let silent = second.transaction().await.unwrap();
    let (e, o) = ev("late", 2);
    outbox.stage_with(&silent, &e, &o).await.unwrap();
    notifier.commit().await.unwrap();
    eventually(Duration::from_secs(5), "the notifier's row", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    silent.commit().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the silent stager's row, long before the 60 s poll",
        || seen.lock().unwrap().len() == 2,
    )
    .await;
    cancel.cancel();
    task.await.unwrap();
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

#[tokio::test]
async fn retention_deletes_or_archives_published_rows() {
    let (schema, outbox, client) = setup("ob_keep").await;
    let (bus, _seen) = recording_bus(&format!("memory://{schema}"), "c", "test.#").await;
    for n in 0..4 {
        let (e, o) = ev("r", n);
        outbox.stage_with(&client, &e, &o).await.unwrap();
    }
    let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
    let relay = Relay::new(
        store.clone(),
        bus.publisher().clone(),
        RelayConfig::default(),
    );
    assert_eq!(relay.run_once().await.unwrap().published, 4);
    let (e, o) = ev("r", 9);
    outbox.stage_with(&client, &e, &o).await.unwrap(); // pending: never pruned
    assert_eq!(
        store
            .prune(Retention::Delete(Duration::from_secs(3600)))
            .await
            .unwrap(),
        0,
        "too young"
    );
    assert_eq!(store.prune(Retention::Keep).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        store
            .prune(Retention::Archive(Duration::from_millis(10)))
            .await
            .unwrap(),
        4
    );
    let archived: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {}_archive", outbox.qualified()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(archived, 4);
    // A row a consumer confirmed before the relay marked it sent (no `sent_at`) is finished
    // too, and is not published again.
    let (e, o) = ev("r", 10);
    let completed = outbox.stage_with(&client, &e, &o).await.unwrap();
    assert!(outbox.complete(&client, &completed).await.unwrap());
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        store
            .prune(Retention::Delete(Duration::from_millis(10)))
            .await
            .unwrap(),
        2
    );
    let status = store.status().await.unwrap();
    assert_eq!(status.counts.values().sum::<u64>(), 0);
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

/// One column (`indexname`, `indexdef`) of every index on the outbox table.
async fn indexes(client: &tokio_postgres::Client, outbox: &PgOutbox, column: &str) -> Vec<String> {
    let qualified = outbox.qualified();
    let (schema, table) = qualified.split_once('.').unwrap();
    client
        .query(
            &format!("SELECT {column} FROM pg_indexes WHERE schemaname = $1 AND tablename = $2"),
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A claim changes `status`, `attempts`, `claim_token` and times. When no index names one of
/// them (key or predicate), PostgreSQL updates the row in place (HOT) without touching the
/// indexes; the first schema named `status` in the retention index's predicate, and every claim
/// wrote four index entries.
#[tokio::test]
async fn no_index_names_a_column_a_claim_changes() {
    let (schema, outbox, client) = setup("ob_hot").await;
    let defs = indexes(&client, &outbox, "indexdef").await;
    assert!(defs.len() >= 4, "{defs:?}");
    for def in &defs {
        for column in [
            "status",
            "attempts",
            "claim_token",
            "available_at",
            "processing_started_at",
        ] {
            assert!(!def.contains(column), "{def} names {column}");
        }
    }
    drop_schema(&schema).await;
}

/// A table created before migration 0002 (its retention index named `status`) is upgraded in
/// place: the next `migrate` applies only 0002, which swaps the old index for the new one.
#[tokio::test]
async fn migration_0002_upgrades_a_table_from_0001() {
    let (schema, outbox, mut client) = setup("ob_upgrade").await;
    let t = outbox.qualified();
    let table = t.rsplit('.').next().unwrap().to_string();
    // Put the table back as 0001 left it.
    client
        .batch_execute(&format!(
            "DROP INDEX {schema}.{table}_finished;
             CREATE INDEX {table}_done ON {t} (sent_at) WHERE status IN ('sent', 'completed');
             DELETE FROM {schema}.herald_migrations WHERE name = '{table}:0002_outbox_hot_claims';"
        ))
        .await
        .unwrap();
    assert_eq!(outbox.migrate(&mut client).await.unwrap(), 1);
    let names = indexes(&client, &outbox, "indexname").await;
    assert!(names.contains(&format!("{table}_finished")), "{names:?}");
    assert!(!names.contains(&format!("{table}_done")), "{names:?}");
    drop_schema(&schema).await;
}
