//! Trace continuity through the outbox: an event staged while a handler runs carries that
//! handling's trace context, the relay publishes it unchanged, and its consumer continues the
//! trace of the event that started the flow. SQLite end to end; PostgreSQL staging.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::trace::{self, TraceContext};
use herald::{Bus, Context, Envelope, HandlerError};
use herald_outbox::postgres::PgOutbox;
use herald_outbox::sqlite::{SqliteOutbox, SqliteStore};
use herald_outbox::{Relay, RelayConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "trace.order.placed")]
struct OrderPlaced {
    id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "trace.order.shipped")]
struct OrderShipped {
    id: u32,
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn trace_of(e: &Envelope) -> TraceContext {
    TraceContext::parse(e.traceparent.as_deref().expect("a traceparent")).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_events_continue_the_trace_that_staged_them() {
    let dir = tempfile::tempdir().unwrap();
    let app_db = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("shipping").unwrap();
    outbox
        .migrate(&rusqlite::Connection::open(&app_db).unwrap())
        .unwrap();
    let bus = Bus::builder()
        .service("shipping")
        .broker(format!("memory://outbox-trace-{}", uuid::Uuid::new_v4()))
        .build()
        .await
        .unwrap();

    // What each handler saw: the envelope, and the trace context it ran under.
    type Seen = Arc<Mutex<HashMap<&'static str, (Envelope, Option<TraceContext>)>>>;
    let seen: Seen = Arc::default();

    // Handling an order stages the shipment in the application's transaction.
    let (s, ob, db_path) = (seen.clone(), outbox.clone(), app_db.clone());
    bus.subscribe(move |o: OrderPlaced, ctx: Context| {
        let (s, ob, db_path) = (s.clone(), ob.clone(), db_path.clone());
        async move {
            let mut db = rusqlite::Connection::open(&db_path).map_err(HandlerError::transient)?;
            let tx = db.transaction().map_err(HandlerError::transient)?;
            ob.stage(&tx, &OrderShipped { id: o.id })
                .map_err(HandlerError::transient)?;
            tx.commit().map_err(HandlerError::transient)?;
            s.lock()
                .unwrap()
                .insert("placed", (ctx.envelope().clone(), ctx.trace_context()));
            Ok::<(), HandlerError>(())
        }
    })
    .unwrap();
    let s = seen.clone();
    bus.subscribe(move |_: OrderShipped, ctx: Context| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .insert("shipped", (ctx.envelope().clone(), ctx.trace_context()));
        }
    })
    .unwrap();
    bus.start().await.unwrap();

    let store = Arc::new(SqliteStore::open(&app_db, outbox.clone()).unwrap());
    let config = RelayConfig {
        poll_interval: Duration::from_millis(10),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store, bus.publisher().clone(), config);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let relay_task = tokio::spawn(async move { relay.run(c).await });

    bus.publish(&OrderPlaced { id: 7 }).await.unwrap();
    wait_until("the relayed shipment handled", || {
        seen.lock().unwrap().contains_key("shipped")
    })
    .await;
    let got = seen.lock().unwrap().clone();
    let (placed, placed_handling) = &got["placed"];
    let (shipped, shipped_handling) = &got["shipped"];
    let staging = placed_handling.expect("handlers run under a trace context");

    let origin = trace_of(placed);
    let relayed = trace_of(shipped);
    assert_eq!(
        relayed.trace_id, origin.trace_id,
        "the relayed event stays in the trace"
    );
    assert_eq!(
        relayed, staging,
        "the stored traceparent is the staging handler's span, published unchanged"
    );
    let consumer = shipped_handling.expect("handlers run under a trace context");
    assert_eq!(consumer.trace_id, origin.trace_id);
    assert_ne!(consumer.span_id, staging.span_id);

    // Staging outside any handling: the scope in force, or a new trace.
    let explicit = TraceContext::new_root();
    let db = rusqlite::Connection::open(&app_db).unwrap();
    let id = trace::sync_scope(explicit, || outbox.stage(&db, &OrderShipped { id: 8 })).unwrap();
    let fresh = outbox.stage(&db, &OrderShipped { id: 9 }).unwrap();
    let stored = |id: &str| -> TraceContext {
        let headers: String = db
            .query_row(
                "SELECT headers FROM herald_outbox WHERE event_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        let map: HashMap<String, String> = serde_json::from_str(&headers).unwrap();
        TraceContext::parse(&map["cloudEvents_traceparent"]).unwrap()
    };
    assert_eq!(stored(&id), explicit);
    assert_ne!(stored(&fresh).trace_id, explicit.trace_id);
    assert_ne!(stored(&fresh).trace_id, origin.trace_id);

    cancel.cancel();
    relay_task.await.unwrap();
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn pg_staging_stores_the_trace_in_force() {
    let schema = common::unique("ob_trace");
    let outbox = PgOutbox::new("shipping").unwrap().schema(&schema).unwrap();
    let mut client = common::pg().await;
    outbox.migrate(&mut client).await.unwrap();
    let ctx = TraceContext::new_root();
    let id = trace::scope(ctx, outbox.stage(&client, &OrderShipped { id: 1 }))
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT headers FROM {}.{} WHERE event_id = $1",
                outbox.schema_name(),
                outbox.table_name()
            ),
            &[&id],
        )
        .await
        .unwrap();
    let headers: serde_json::Value = row.get(0);
    assert_eq!(
        headers["cloudEvents_traceparent"].as_str(),
        Some(ctx.to_traceparent().as_str())
    );
    common::drop_schema(&schema).await;
}
