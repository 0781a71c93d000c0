//! Saga timeouts survive the saga process: the process that started a booking is killed (`kill
//! -9`) while its deadline is pending; the next one is killed while firing it; the one after fires
//! it, exactly once; a fourth finds nothing left to fire.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herald_es::saga::{InstanceQuery, SagaStatus};
use herald_es::Database;

struct SagaProcess(Child);

impl SagaProcess {
    fn start(
        db_url: &str,
        envs: &[(&str, &str)],
    ) -> (
        SagaProcess,
        std::io::Lines<BufReader<std::process::ChildStdout>>,
    ) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-es-saga-child"))
            .env("HERALD_ES_TEST_DB", db_url)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the saga process");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (SagaProcess(child), lines)
    }

    fn kill9(&mut self) {
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for SagaProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_for(lines: &mut std::io::Lines<BufReader<std::process::ChildStdout>>, want: &str) {
    for line in lines.by_ref() {
        if line.expect("read the saga process's output").trim() == want {
            return;
        }
    }
    panic!("the saga process ended before printing {want}");
}

async fn timed_out_commands(db: &Database) -> i64 {
    match db {
        Database::Postgres(s) => pg_client()
            .await
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE routing_key = 'booking.timed_out'",
                    s.outbox().qualified()
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0),
        Database::Sqlite(s) => rusqlite::Connection::open(s.path())
            .unwrap()
            .query_row(
                "SELECT count(*) FROM herald_outbox WHERE routing_key = 'booking.timed_out'",
                [],
                |r| r.get(0),
            )
            .unwrap(),
    }
}

async fn killed_saga_process_fires_its_pending_timeout_once_after_restart(db: Database, url: &str) {
    let sagas = db.sagas();
    // 1. The process starts a booking (deadline in 1.5 s) and is killed while it is pending.
    let (mut first, mut out) = SagaProcess::start(
        url,
        &[("BOOKING_START", "k1"), ("BOOKING_DEADLINE_MS", "1500")],
    );
    wait_for(&mut out, "STARTED");
    let listed = sagas.instances(&InstanceQuery::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].next_timeout_at.is_some(),
        "the deadline is pending"
    );
    first.kill9();
    // 2. Past the deadline, nobody runs: it has not fired (and is not lost).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(timed_out_commands(&db).await, 0);
    let i = sagas.load_instance("booking", "k1").await.unwrap().unwrap();
    assert_eq!(i.status, SagaStatus::Active);
    // 3. A new process starts firing it and is killed mid-transition.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("firing");
    let marker_s = marker.display().to_string();
    let (mut second, mut out) =
        SagaProcess::start(url, &[("BOOKING_HANG_MARKER", marker_s.as_str())]);
    wait_for(&mut out, "READY");
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the timeout was not picked up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    second.kill9();
    assert_eq!(
        timed_out_commands(&db).await,
        0,
        "a killed firing left nothing"
    );
    // 4. The next process fires it, once.
    let (third, mut out) = SagaProcess::start(url, &[("BOOKING_HANG_MARKER", marker_s.as_str())]);
    wait_for(&mut out, "READY");
    let started = Instant::now();
    loop {
        let i = sagas.load_instance("booking", "k1").await.unwrap().unwrap();
        if i.status != SagaStatus::Active {
            assert_eq!(i.state_name, "timed_out");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the timeout never fired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(third);
    // 5. Another process finds nothing to fire: still exactly one timed-out command.
    let (fourth, mut out) = SagaProcess::start(url, &[]);
    wait_for(&mut out, "READY");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(fourth);
    assert_eq!(timed_out_commands(&db).await, 1);
    let i = sagas.load_instance("booking", "k1").await.unwrap().unwrap();
    let state: serde_json::Value = serde_json::from_str(&i.state).unwrap();
    assert_eq!(state["timeouts"], 1);
}

#[tokio::test]
async fn sqlite_killed_saga_process_fires_its_pending_timeout_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir, herald_es::Upcasters::new());
    let url = format!("sqlite://{}", store.path().display());
    killed_saga_process_fires_its_pending_timeout_once_after_restart(Database::Sqlite(store), &url)
        .await;
}

#[tokio::test]
async fn postgres_killed_saga_process_fires_its_pending_timeout_once_after_restart() {
    let (store, guard) = pg_store("es_saga_kill", herald_es::Upcasters::new()).await;
    let url = format!("{PG}#{}", guard.0);
    killed_saga_process_fires_its_pending_timeout_once_after_restart(
        Database::Postgres(store),
        &url,
    )
    .await;
}
