//! The trigger helper: a table's inserts, updates, deletes and status changes become outbox rows
//! (reference 001's trigger), which a relay publishes with `listing.*` routing keys.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald::{Bus, Context, HandlerError, SubscribeOptions};
use herald_outbox::postgres::{PgOutbox, PgStore, TriggerEvents, TriggerSpec};
use herald_outbox::{Relay, RelayConfig};

type Keys = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

fn record(bus: &Bus, suffix: &str, pattern: &str) -> Keys {
    let keys: Keys = Arc::default();
    let k = keys.clone();
    bus.subscribe_pattern(
        suffix,
        pattern,
        move |v: serde_json::Value, ctx: Context| {
            let k = k.clone();
            async move {
                k.lock()
                    .unwrap()
                    .push((ctx.envelope().routing_key.clone(), v));
                Ok::<(), HandlerError>(())
            }
        },
        SubscribeOptions::new().concurrency(1),
    )
    .unwrap();
    keys
}

#[tokio::test]
async fn trigger_stages_insert_update_delete_and_status_changes() {
    let schema = unique("tr");
    let outbox = PgOutbox::new("listings-db")
        .unwrap()
        .schema(&schema)
        .unwrap();
    let mut c = pg().await;
    outbox.migrate(&mut c).await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.listings (id bigserial primary key, title text not null, status text not null default 'draft')"
    ))
    .await
    .unwrap();
    let spec = TriggerSpec::new("listings")
        .unwrap()
        .schema(&schema)
        .unwrap()
        .prefix("listing")
        .unwrap()
        .status_column("status")
        .unwrap();
    spec.install(&c, &outbox).await.unwrap();
    // What `herald outbox trigger` calls; replacing an installed trigger is fine.
    herald_outbox::postgres::install_trigger(PG, &outbox, &spec)
        .await
        .unwrap();

    c.batch_execute(&format!(
        "INSERT INTO {schema}.listings (title) VALUES ('bike');
         UPDATE {schema}.listings SET title = 'red bike';
         UPDATE {schema}.listings SET status = 'Active Now';
         DELETE FROM {schema}.listings;"
    ))
    .await
    .unwrap();
    // A rolled-back change stages nothing.
    let tx = c.transaction().await.unwrap();
    tx.execute(
        &format!("INSERT INTO {schema}.listings (title) VALUES ('ghost')"),
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let bus = Bus::builder()
        .service("sync")
        .broker(format!("memory://{schema}"))
        .build()
        .await
        .unwrap();
    let all = record(&bus, "search", "listing.#");
    let status = record(&bus, "status", "listing.status.#");
    bus.start().await.unwrap();
    let store = Arc::new(PgStore::connect(PG, outbox.clone()).await.unwrap());
    let relay = Relay::new(store, bus.publisher().clone(), RelayConfig::default());
    // What `herald outbox status` calls.
    let before = herald_outbox::postgres::status(PG, &outbox).await.unwrap();
    assert_eq!(before.count(herald_outbox::Status::Pending), 5);
    assert!(before.to_string().contains("pending"));
    assert_eq!(relay.run_once().await.unwrap().published, 5);
    eventually(Duration::from_secs(5), "deliveries", || {
        all.lock().unwrap().len() == 5 && status.lock().unwrap().len() == 1
    })
    .await;

    let keys: Vec<String> = all.lock().unwrap().iter().map(|k| k.0.clone()).collect();
    assert_eq!(
        keys,
        [
            "listing.insert",
            "listing.update",
            "listing.update",
            "listing.status.active_now",
            "listing.delete"
        ]
    );
    let all = all.lock().unwrap().clone();
    assert_eq!(all[0].1["operation"], "insert");
    assert_eq!(all[0].1["new"]["title"], "bike");
    assert_eq!(all[1].1["old"]["title"], "bike");
    assert_eq!(all[1].1["new"]["title"], "red bike");
    assert_eq!(all[3].1["status"], "Active Now");
    assert_eq!(all[3].1["old_status"], "draft");
    assert_eq!(all[4].1["operation"], "delete");
    let s = status.lock().unwrap().clone();
    assert_eq!(s[0].0, "listing.status.active_now");

    // Only some operations; and uninstall.
    let only_inserts = spec.clone().events(TriggerEvents {
        insert: true,
        update: false,
        delete: false,
    });
    only_inserts.install(&c, &outbox).await.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO {schema}.listings (title) VALUES ('x'); UPDATE {schema}.listings SET title = 'y'; DELETE FROM {schema}.listings;"
    ))
    .await
    .unwrap();
    assert_eq!(outbox.status(&c).await.unwrap().backlog(), 1);
    spec.uninstall(&c).await.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO {schema}.listings (title) VALUES ('z')"
    ))
    .await
    .unwrap();
    assert_eq!(
        outbox.status(&c).await.unwrap().backlog(),
        1,
        "no trigger, no rows"
    );
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}
