//! Projections keep their checkpoint in the read model's transaction: a failure mid-batch applies
//! nothing, a retry applies each event once; the runner follows live appends, reports lag and
//! health, rebuilds on request; a bus-fed projection applies each message id once.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use herald::health::HealthStatus;
use herald_es::postgres::{PgProjection, PgProjector};
use herald_es::projection::{ProjectionRunner, Projector};
use herald_es::sqlite::{SqliteProjection, SqliteProjector};
use herald_es::{BoxError, Checkpoint, EventStore, ExpectedVersion, RecordedEvent};
use tokio_util::sync::CancellationToken;

/// Sums `Noted.n` per stream and counts applications; fails once on `fail_on` (n value).
struct Totals {
    table: String,
    fail_on: Arc<AtomicU64>,
}

impl Totals {
    fn new(table: &str) -> Self {
        Totals {
            table: table.to_string(),
            fail_on: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
    fn should_fail(&self, e: &RecordedEvent) -> bool {
        let n = e.decode_as::<Noted>().ok().flatten().map(|x| x.n);
        n == Some(self.fail_on.load(Ordering::SeqCst))
            && self.fail_on.swap(u64::MAX, Ordering::SeqCst) != u64::MAX
    }
}

#[async_trait]
impl PgProjection for Totals {
    fn name(&self) -> &str {
        "totals"
    }
    async fn setup(&self, c: &tokio_postgres::Client) -> Result<(), BoxError> {
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id TEXT PRIMARY KEY, total BIGINT NOT NULL, applied BIGINT NOT NULL)",
            self.table
        ))
        .await?;
        Ok(())
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), BoxError> {
        let n = e.decode_as::<Noted>()?.map(|x| x.n).unwrap_or(0) as i64;
        tx.execute(
            &format!("INSERT INTO {} VALUES ($1, $2, 1) ON CONFLICT (stream_id) DO UPDATE SET total = {0}.total + $2, applied = {0}.applied + 1", self.table),
            &[&e.stream_id, &n],
        )
        .await?;
        if self.should_fail(e) {
            return Err("the read model's database refused a write".into());
        }
        Ok(())
    }
    async fn reset(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), BoxError> {
        tx.execute(&format!("DELETE FROM {}", self.table), &[])
            .await?;
        Ok(())
    }
}

impl SqliteProjection for Totals {
    fn name(&self) -> &str {
        "totals"
    }
    fn setup(&self, c: &rusqlite::Connection) -> Result<(), BoxError> {
        c.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL, applied INTEGER NOT NULL)",
            self.table
        ))?;
        Ok(())
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, e: &RecordedEvent) -> Result<(), BoxError> {
        let n = e.decode_as::<Noted>()?.map(|x| x.n).unwrap_or(0) as i64;
        tx.execute(
            &format!("INSERT INTO {} VALUES (?1, ?2, 1) ON CONFLICT (stream_id) DO UPDATE SET total = total + ?2, applied = applied + 1", self.table),
            rusqlite::params![e.stream_id, n],
        )?;
        if self.should_fail(e) {
            return Err("the read model's database refused a write".into());
        }
        Ok(())
    }
    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), BoxError> {
        tx.execute(&format!("DELETE FROM {}", self.table), [])?;
        Ok(())
    }
}

/// (total, applied) summed over the read model's rows.
async fn read_model(kind: &str, target: &str) -> (i64, i64) {
    if kind == "postgres" {
        let r = pg_client()
            .await
            .query_one(&format!("SELECT coalesce(sum(total), 0)::bigint, coalesce(sum(applied), 0)::bigint FROM {target}"), &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    } else {
        let c = rusqlite::Connection::open(target).unwrap();
        c.query_row(
            "SELECT coalesce(sum(total), 0), coalesce(sum(applied), 0) FROM totals",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }
}

struct Case {
    kind: &'static str,
    store: Arc<dyn EventStore>,
    projector: Arc<dyn Projector>,
    fail_on: Arc<AtomicU64>,
    target: String,
}

async fn cases(dir: &tempfile::TempDir) -> (Vec<Case>, PgSchema) {
    let (pg, guard) = pg_store("es_proj", herald_es::Upcasters::new()).await;
    let pg_totals = Totals::new(&format!("{}.totals", guard.0));
    let pg_fail = pg_totals.fail_on.clone();
    let sqlite = sqlite_store(dir, herald_es::Upcasters::new());
    let sq_totals = Totals::new("totals");
    let sq_fail = sq_totals.fail_on.clone();
    let target = format!("{}.totals", guard.0);
    (
        vec![
            Case {
                kind: "postgres",
                store: pg.clone(),
                projector: Arc::new(PgProjector::new(&pg, pg_totals)),
                fail_on: pg_fail,
                target,
            },
            Case {
                kind: "sqlite",
                store: sqlite.clone(),
                projector: Arc::new(SqliteProjector::new(&sqlite, sq_totals)),
                fail_on: sq_fail,
                target: sqlite.path().display().to_string(),
            },
        ],
        guard,
    )
}

async fn append_numbers(store: &Arc<dyn EventStore>, from: u64, to: u64) {
    for n in from..=to {
        store
            .append(
                &format!("s-{}", n % 3),
                ExpectedVersion::Any,
                vec![noted(n)],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_failure_mid_batch_applies_nothing_and_the_retry_applies_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cases, _g) = cases(&dir).await;
    for c in cases {
        append_numbers(&c.store, 1, 20).await;
        read_all_eventually(&*c.store, 20).await;
        let runner = ProjectionRunner::new(c.store.clone(), c.projector.clone()).batch_size(8);
        // Event n=11 is in the second batch (9..=16): that batch fails after writing part of it.
        c.fail_on.store(11, Ordering::SeqCst);
        let failed = runner.catch_up().await;
        assert!(failed.is_err(), "{}", c.kind);
        let at = c.projector.position().await.unwrap().checkpoint;
        assert_eq!(
            at.position, 8,
            "{}: the checkpoint moved with the first batch only",
            c.kind
        );
        assert_eq!(
            read_model(c.kind, &c.target).await,
            ((1..=8).sum::<i64>(), 8),
            "{}",
            c.kind
        );
        // The retry applies the rest, each once.
        assert_eq!(runner.catch_up().await.unwrap(), 12, "{}", c.kind);
        assert_eq!(
            read_model(c.kind, &c.target).await,
            ((1..=20).sum::<i64>(), 20),
            "{}",
            c.kind
        );
        assert_eq!(runner.catch_up().await.unwrap(), 0);
        // A stale apply (a second runner that read the same batch) applies nothing.
        let stale = c.store.read_all(Checkpoint::START, 5).await.unwrap();
        let moved = c.projector.apply(Checkpoint::START, &stale).await.unwrap();
        assert_eq!(moved.position, 20, "{}", c.kind);
        assert_eq!(read_model(c.kind, &c.target).await.1, 20, "{}", c.kind);
    }
}

#[tokio::test]
async fn the_runner_follows_live_appends_reports_lag_and_rebuilds_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cases, _g) = cases(&dir).await;
    for c in cases {
        append_numbers(&c.store, 1, 10).await;
        let runner = Arc::new(
            ProjectionRunner::new(c.store.clone(), c.projector.clone())
                .poll_interval(Duration::from_millis(20)),
        );
        let health = runner.health(Duration::from_secs(30));
        assert_eq!(
            health.evaluate().status,
            HealthStatus::Down,
            "not running yet"
        );
        let cancel = CancellationToken::new();
        let task = {
            let (runner, cancel) = (runner.clone(), cancel.clone());
            tokio::spawn(async move { runner.run(cancel).await })
        };
        let status = runner.status();
        let wait = |want: u64| {
            let status = status.clone();
            async move {
                for _ in 0..500 {
                    if status.view().checkpoint.position >= want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("the projection did not reach {want}: {:?}", status.view());
            }
        };
        wait(10).await;
        append_numbers(&c.store, 11, 30).await;
        wait(30).await;
        assert_eq!(
            read_model(c.kind, &c.target).await,
            ((1..=30).sum::<i64>(), 30),
            "{}",
            c.kind
        );
        assert_eq!(
            health.evaluate().status,
            HealthStatus::Up,
            "{:?}",
            health.evaluate()
        );
        // The lag is sampled (at most every second) and is zero once caught up.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(status.view().lag_events, 0, "{}", c.kind);
        let listed = c.store.projections().await.unwrap();
        assert_eq!(listed[0].name, "totals");
        assert_eq!(listed[0].checkpoint.position, 30);
        assert_eq!(listed[0].backlog.events, 0);
        // A rebuild request (what `herald projections rebuild totals` does) resets the read
        // model and replays every event once.
        c.store.request_rebuild("totals").await.unwrap();
        assert!(c.store.request_rebuild("nope").await.is_err());
        for _ in 0..500 {
            if status.view().rebuilds == 1 && status.view().checkpoint.position == 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status.view().rebuilds, 1, "{}", c.kind);
        assert_eq!(
            read_model(c.kind, &c.target).await,
            ((1..=30).sum::<i64>(), 30),
            "{}",
            c.kind
        );
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(health.evaluate().status, HealthStatus::Down);
    }
}

#[tokio::test]
async fn a_bus_fed_projection_applies_each_message_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cases, _g) = cases(&dir).await;
    for c in cases {
        c.projector.prepare().await.unwrap();
        let e = {
            let mut e = noted(5);
            e.subject = Some("bus-1".into());
            RecordedEvent::from_bus(e)
        };
        assert!(c.projector.apply_message(&e).await.unwrap(), "{}", c.kind);
        assert!(
            !c.projector.apply_message(&e).await.unwrap(),
            "{}: a redelivery",
            c.kind
        );
        assert_eq!(read_model(c.kind, &c.target).await, (5, 1), "{}", c.kind);
    }
    // Through a real bus: the message is delivered twice (published twice), applied once.
    let dir2 = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir2, herald_es::Upcasters::new());
    let projector: Arc<dyn Projector> =
        Arc::new(SqliteProjector::new(&store, Totals::new("totals")));
    projector.prepare().await.unwrap();
    let bus = herald::Bus::builder()
        .service("reader")
        .broker(format!("sqlite://{}", dir2.path().join("bus.db").display()))
        .build()
        .await
        .unwrap();
    herald_es::projection::subscribe_bus(
        &bus,
        projector.clone(),
        herald_es::Upcasters::new(),
        "test.#",
        herald::SubscribeOptions::new(),
    )
    .unwrap();
    bus.start().await.unwrap();
    let mut e = noted(9);
    e.subject = Some("bus-2".into());
    bus.publisher()
        .publish_envelopes(vec![e.clone()], false)
        .await
        .unwrap();
    bus.publisher()
        .publish_envelopes(vec![e], false)
        .await
        .unwrap();
    let path = store.path().display().to_string();
    for _ in 0..200 {
        if read_model("sqlite", &path).await.0 >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_model("sqlite", &path).await, (9, 1));
    bus.shutdown().await.unwrap();
}
