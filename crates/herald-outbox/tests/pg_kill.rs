//! Kill the relay for real: a child process (`herald-outbox-relay-child`, built from
//! `tests/support/relay_child.rs`) relays a PostgreSQL outbox into a `sqlite://` broker and is
//! `kill -9`ed twice, once exactly between publishing a batch and marking it sent, once at a
//! random point. Restarted relays must publish every staged event at least once, in order per
//! aggregate; the duplicates are counted.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use herald::MessageOptions;
use herald_outbox::postgres::PgOutbox;
use herald_outbox::{StagedEvent, Status};

const BATCH: usize = 100;

struct Killable(Child);

impl Killable {
    fn kill9(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_relay(schema: &str, broker: &str, hang_at: usize, marker: &str) -> Killable {
    let child = Command::new(env!("CARGO_BIN_EXE_herald-outbox-relay-child"))
        .env("OB_SCHEMA", schema)
        .env("OB_BATCH", BATCH.to_string())
        .env("OB_BROKER", broker)
        .env("OB_HANG_AT", hang_at.to_string())
        .env("OB_MARKER", marker)
        .spawn()
        .unwrap();
    Killable(child)
}

async fn count(client: &tokio_postgres::Client, outbox: &PgOutbox, status: &str) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE status = $1",
                outbox.qualified()
            ),
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn relay_killed_at_any_point_loses_nothing() {
    let schema = unique("ob_kill");
    let outbox = PgOutbox::new("relay-svc").unwrap().schema(&schema).unwrap();
    let mut client = pg().await;
    outbox.migrate(&mut client).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("sqlite://{}", dir.path().join("broker.db").display());
    let marker = dir.path().join("marker").display().to_string();
    let (bus, seen) = recording_bus(&broker, "consumer", "test.#").await;

    let aggs = 8u64;
    let total = 3000u64;
    let rows: Vec<StagedEvent> = (0..total)
        .map(|i| {
            let agg = format!("agg{}", i % aggs);
            let e = Numbered {
                agg: agg.clone(),
                n: i / aggs,
            };
            StagedEvent::from_event(&e, "relay-svc", &MessageOptions::default().subject(agg))
                .unwrap()
        })
        .collect();
    for chunk in rows.chunks(500) {
        let tx = client.transaction().await.unwrap();
        outbox.stage_rows(&tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }

    // 1. Killed between publish and status update of its 3rd batch.
    let mut relay = spawn_relay(&schema, &broker, 3, &marker);
    let start = Instant::now();
    while !std::path::Path::new(&marker).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the child relay never reached its 3rd batch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.kill9();
    assert_eq!(
        count(&client, &outbox, "processing").await,
        BATCH as i64,
        "the published batch is still `processing`"
    );
    let sent_before = count(&client, &outbox, "sent").await;
    assert_eq!(sent_before, 2 * BATCH as i64);

    // 2. Restarted, then killed at whatever point it has reached.
    let mut relay = spawn_relay(&schema, &broker, 0, &marker);
    let start = Instant::now();
    while count(&client, &outbox, "sent").await < (total / 2) as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restarted relay made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.kill9();

    // 3. Restarted again, runs to the end.
    let _relay = spawn_relay(&schema, &broker, 0, &marker);
    let start = Instant::now();
    loop {
        let status = outbox.status(&client).await.unwrap();
        if status.count(Status::Sent) == total {
            assert_eq!(status.backlog(), 0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "relay did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: HashSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    eventually(Duration::from_secs(30), "every event delivered", || {
        let s = seen.lock().unwrap();
        s.iter().map(|g| &g.0).collect::<HashSet<_>>().len() == ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // late duplicates, if any
    let got = seen.lock().unwrap().clone();
    let distinct: HashSet<&String> = got.iter().map(|g| &g.0).collect();
    assert!(distinct.iter().all(|id| ids.contains(*id)));
    let duplicates = got.len() - distinct.len();
    println!(
        "outbox kill test: {total} staged, {} delivered, {} distinct, {duplicates} duplicates",
        got.len(),
        distinct.len()
    );
    assert!(
        duplicates >= BATCH,
        "the batch published before the kill is published again ({duplicates})"
    );

    // First deliveries keep staging order within each aggregate.
    let mut first: HashSet<&String> = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (id, subject, body) in &got {
        if !first.insert(id) {
            continue;
        }
        let agg = subject.clone().unwrap();
        let n = body["n"].as_i64().unwrap();
        let prev = last.insert(agg.clone(), n).unwrap_or(-1);
        assert_eq!(n, prev + 1, "aggregate {agg}: {n} after {prev}");
    }
    bus.shutdown().await.unwrap();
    drop_schema(&schema).await;
}
