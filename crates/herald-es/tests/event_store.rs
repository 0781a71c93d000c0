//! The event store on PostgreSQL and SQLite: optimistic concurrency, the outbox in the same
//! transaction, stored metadata, and a global order readers never skip in.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald_es::{Checkpoint, Database, Error, EventStore, ExpectedVersion, Metadata};

async fn outbox_ids(db: &Database) -> Vec<String> {
    match db {
        Database::Postgres(s) => pg_client()
            .await
            .query(
                &format!(
                    "SELECT event_id FROM {} ORDER BY id",
                    s.outbox().qualified()
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Database::Sqlite(s) => {
            let c = rusqlite::Connection::open(s.path()).unwrap();
            let mut st = c
                .prepare("SELECT event_id FROM herald_outbox ORDER BY id")
                .unwrap();
            let ids = st
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<Vec<String>>>()
                .unwrap();
            ids
        }
    }
}

#[tokio::test]
async fn appends_check_the_expected_version_and_stage_every_event_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _guard) = both("es_append", &dir).await;
    for db in dbs {
        let store = db.events();
        let kind = db.kind();
        let first = store
            .append(
                "acct-1",
                ExpectedVersion::NoStream,
                vec![noted(1), noted(2)],
            )
            .await
            .unwrap();
        assert_eq!(first.version, 2, "{kind}");
        assert_eq!(first.positions.len(), 2, "{kind}");
        // A writer that loaded version 0 loses, and writes nothing: no event, no outbox row.
        let stale = store
            .append("acct-1", ExpectedVersion::NoStream, vec![noted(3)])
            .await;
        assert!(
            matches!(stale, Err(Error::Conflict { actual: 2, .. })),
            "{kind}: {stale:?}"
        );
        let stale = store
            .append("acct-1", ExpectedVersion::Exact(1), vec![noted(3)])
            .await;
        assert!(
            matches!(stale, Err(Error::Conflict { actual: 2, .. })),
            "{kind}"
        );
        let missing = store
            .append("acct-9", ExpectedVersion::Exact(4), vec![noted(3)])
            .await;
        assert!(
            matches!(missing, Err(Error::Conflict { actual: 0, .. })),
            "{kind}"
        );
        let next = store
            .append("acct-1", ExpectedVersion::Exact(2), vec![noted(3)])
            .await
            .unwrap();
        assert_eq!(next.version, 3, "{kind}");
        let any = store
            .append("acct-1", ExpectedVersion::Any, vec![noted(4)])
            .await
            .unwrap();
        assert_eq!(any.version, 4, "{kind}");

        let events = store.read_stream("acct-1", 0).await.unwrap();
        let ns: Vec<u64> = events
            .iter()
            .map(|e| e.decode_as::<Noted>().unwrap().unwrap().n)
            .collect();
        assert_eq!(ns, vec![1, 2, 3, 4], "{kind}");
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "{kind}"
        );
        assert_eq!(
            store.read_stream("acct-1", 2).await.unwrap().len(),
            2,
            "{kind}"
        );
        // Exactly the stored events are in the outbox, in order.
        let stored: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
        assert_eq!(outbox_ids(&db).await, stored, "{kind}");
        assert_eq!(store.stream_version("acct-1").await.unwrap(), 4, "{kind}");
        assert_eq!(store.stream_version("nope").await.unwrap(), 0, "{kind}");
    }
}

#[tokio::test]
async fn the_envelope_metadata_is_stored_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, _guard) = both("es_meta", &dir).await;
    for db in dbs {
        let store = db.events();
        let cause = noted(0);
        let meta = Metadata::caused_by_envelope(&cause);
        let mut e = noted(7);
        e.correlation_id = meta.correlation_id.clone();
        e.causation_id = meta.causation_id.clone();
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let id = e.id.clone();
        store
            .append("doc-1", ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
        let read = store.read_stream("doc-1", 0).await.unwrap();
        let env = &read[0].envelope;
        assert_eq!(env.id, id);
        assert_eq!(env.correlation_id.as_deref(), Some(cause.id.as_str()));
        assert_eq!(env.causation_id.as_deref(), Some(cause.id.as_str()));
        assert_eq!(
            env.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(env.subject.as_deref(), Some("doc-1"));
        assert_eq!(env.source, "test-service");
        assert_eq!(
            env.headers.get("herald_stream_version").map(String::as_str),
            Some("1")
        );
        // Read from the global order, the same.
        let all = read_all_eventually(&*store, 1).await;
        assert_eq!(all[0].envelope, *env, "{}", db.kind());
    }
}

/// A slow transaction takes a position, a fast one commits a later position first: a reader must
/// not read past the slow one's event before it commits (that event would be skipped forever).
#[tokio::test]
async fn a_reader_never_skips_an_event_committed_late_by_a_slower_transaction() {
    let (store, _guard) = pg_store("es_gap", herald_es::Upcasters::new()).await;
    let mut slow_client = pg_client().await;
    let slow = slow_client.transaction().await.unwrap();
    let slow_append = store
        .append_in(&slow, "slow-1", ExpectedVersion::NoStream, vec![noted(1)])
        .await
        .unwrap();
    let fast = store
        .append("fast-1", ExpectedVersion::NoStream, vec![noted(2)])
        .await
        .unwrap();
    assert!(
        slow_append.positions[0] < fast.positions[0],
        "the slow transaction took the lower position"
    );
    // While the slow transaction is open, the fast event is committed but must not be read.
    let read = store.read_all(Checkpoint::START, 10).await.unwrap();
    assert!(read.is_empty(), "read past an open transaction: {read:?}");
    // A naive reader (position > last) would have read it and moved past position 1:
    let naive = pg_client()
        .await
        .query(
            &format!(
                "SELECT position FROM {}.es_events ORDER BY position",
                store.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(naive.len(), 1, "the fast event is visible to plain queries");
    slow.commit().await.unwrap();
    let read = read_all_eventually(&*store, 2).await;
    let streams: Vec<&str> = read.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, vec!["slow-1", "fast-1"]);
    // append_in refuses a transaction that wrote before: its place in the order is taken.
    let mut c = pg_client().await;
    let tx = c.transaction().await.unwrap();
    tx.execute(
        &format!("INSERT INTO {}.es_snapshots (stream_id, version, schema_version, state) VALUES ('x', 1, 1, '{{}}')", store.schema()),
        &[],
    )
    .await
    .unwrap();
    let refused = store
        .append_in(&tx, "late-1", ExpectedVersion::NoStream, vec![noted(3)])
        .await;
    assert!(matches!(refused, Err(Error::Data(_))), "{refused:?}");
    tx.rollback().await.unwrap();
}

/// Many concurrent writers (some holding their transaction open for a while) and a reader
/// following the global order: the reader sees every event exactly once, each stream in version
/// order.
#[tokio::test]
async fn concurrent_writers_and_a_following_reader_see_every_event_once_in_stream_order() {
    let (store, _guard) = pg_store("es_conc", herald_es::Upcasters::new()).await;
    let writers = 8;
    let per_writer = 60;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut at = Checkpoint::START;
            loop {
                let batch = store.read_all(at, 37).await.unwrap();
                if batch.is_empty() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let rest = store.read_all(at, 10_000).await.unwrap();
                        if rest.is_empty() {
                            return seen;
                        }
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                for e in batch {
                    assert!(e.checkpoint > at, "the order went backwards");
                    at = e.checkpoint;
                    seen.push((e.stream_id.clone(), e.version, e.id().to_string()));
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pg_client().await;
            let mut ids = Vec::new();
            for i in 0..per_writer {
                // Every writer touches shared streams too, so appends conflict and retry.
                let stream = if i % 3 == 0 {
                    format!("shared-{}", i % 4)
                } else {
                    format!("w{w}-{}", i % 5)
                };
                loop {
                    let v = store.stream_version(&stream).await.unwrap();
                    let e = noted(i);
                    let id = e.id.clone();
                    let result = if i % 7 == 0 {
                        // A slow transaction: takes its position, then waits before commit.
                        let tx = client.transaction().await.unwrap();
                        let r = store
                            .append_in(&tx, &stream, ExpectedVersion::Exact(v), vec![e])
                            .await;
                        tokio::time::sleep(Duration::from_millis(15)).await;
                        if r.is_ok() {
                            tx.commit().await.unwrap();
                        }
                        r
                    } else {
                        store
                            .append(&stream, ExpectedVersion::Exact(v), vec![e])
                            .await
                    };
                    match result {
                        Ok(_) => {
                            ids.push(id);
                            break;
                        }
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&String> = seen.iter().map(|(_, _, id)| id).collect();
    let distinct: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an event was read twice");
    assert_eq!(distinct.len(), written.len(), "the reader missed events");
    assert!(written.iter().all(|id| distinct.contains(id)));
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (stream, version, _) in &seen {
        let prev = last.insert(stream, *version).unwrap_or(0);
        assert_eq!(*version, prev + 1, "stream {stream} read out of order");
    }
}
