//! The inbox against real Redis and PostgreSQL: store behaviour, expiry, the layer on a bus, and
//! exactly-once effects through the handler's own transaction.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald::{Bus, Context, Envelope, HandlerError, SubscribeOptions};
use herald_outbox::inbox::postgres::{PgInbox, PgInboxStore, Recorded};
use herald_outbox::inbox::redis::RedisInbox;
use herald_outbox::inbox::{check_store, InboxLayer, InboxStore};

const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn redis_store_claims_records_and_expires() {
    let store = RedisInbox::connect(REDIS, &unique("herald_test_inbox"))
        .await
        .unwrap();
    check_store(&store, "c").await;
}

#[tokio::test]
async fn postgres_store_claims_records_and_expires() {
    let schema = unique("ib_store");
    let store = PgInboxStore::connect(PG, PgInbox::new(&schema).unwrap())
        .await
        .unwrap();
    check_store(&store, "c").await;
    store
        .begin("c", "short-lived", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store.purge_expired().await.unwrap() >= 1,
        "expired rows are purged"
    );
    drop_schema(&schema).await;
}

#[tokio::test]
async fn the_layer_skips_redeliveries_across_restarts() {
    let store: Arc<dyn InboxStore> = Arc::new(
        RedisInbox::connect(REDIS, &unique("herald_test_layer"))
            .await
            .unwrap(),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let broker = format!("memory://{}", unique("ib_layer"));
    let envelope = Envelope::new(
        "test.numbered",
        1,
        "test.numbered",
        "p",
        bytes::Bytes::from_static(b"{\"agg\":\"a\",\"n\":1}"),
    );
    for round in 0..2 {
        let bus = Bus::builder()
            .service("svc")
            .broker(&broker)
            .build()
            .await
            .unwrap();
        let c = calls.clone();
        bus.subscribe_with(
            move |_e: Numbered, _ctx: Context| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), HandlerError>(())
                }
            },
            SubscribeOptions::new()
                .layer(InboxLayer::new(store.clone()).keep_for(Duration::from_secs(60)))
                .concurrency(1),
        )
        .unwrap();
        bus.start().await.unwrap();
        // The same event id three times: a redelivering broker, a relay that published twice.
        for _ in 0..3 {
            bus.publisher()
                .publish_envelopes(vec![envelope.clone()], false)
                .await
                .unwrap();
        }
        eventually(Duration::from_secs(5), "three deliveries", || {
            bus.metrics().handled >= 3
        })
        .await;
        bus.shutdown().await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: one handler call in all"
        );
    }
}

#[tokio::test]
async fn same_transaction_inbox_gives_exactly_once_effects() {
    let schema = unique("ib_tx");
    let inbox = PgInbox::new(&schema).unwrap();
    let mut c = pg().await;
    inbox.migrate(&mut c).await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.counter (n int not null); INSERT INTO {schema}.counter VALUES (0)"
    ))
    .await
    .unwrap();

    // Two workers handle the same event at once; the second blocks on the first's row, then
    // sees a duplicate.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (inbox, schema) = (inbox.clone(), schema.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = pg().await;
            let tx = c.transaction().await.unwrap();
            let r = inbox.record(&tx, "search-sync", "event-1").await.unwrap();
            if r == Recorded::New {
                tx.execute(&format!("UPDATE {schema}.counter SET n = n + 1"), &[])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx.commit().await.unwrap();
            r
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results.sort_by_key(|r| *r == Recorded::Duplicate);
    assert_eq!(results, vec![Recorded::New, Recorded::Duplicate]);
    let n: i32 = c
        .query_one(&format!("SELECT n FROM {schema}.counter"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the effect applied once");

    // A rolled-back handler recorded nothing: the redelivery applies.
    let tx = c.transaction().await.unwrap();
    assert_eq!(
        inbox.record(&tx, "search-sync", "event-2").await.unwrap(),
        Recorded::New
    );
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(
        inbox.record(&tx, "search-sync", "event-2").await.unwrap(),
        Recorded::New
    );
    tx.commit().await.unwrap();
    assert_eq!(
        inbox.record(&c, "search-sync", "event-2").await.unwrap(),
        Recorded::Duplicate
    );
    assert_eq!(
        inbox.record(&c, "other-consumer", "event-2").await.unwrap(),
        Recorded::New
    );

    // Expired records count as new.
    let short = inbox.clone().keep_for(Duration::from_millis(50));
    assert_eq!(
        short.record(&c, "x", "event-3").await.unwrap(),
        Recorded::New
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        short.record(&c, "x", "event-3").await.unwrap(),
        Recorded::New
    );
    drop_schema(&schema).await;
}
