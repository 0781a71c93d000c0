//! Shared test helpers: a PostgreSQL schema per test, SQLite files in temp dirs, a few events.
#![allow(dead_code)]

use std::sync::Arc;

use herald::Event;
use herald_es::{Database, Upcasters};
use serde::{Deserialize, Serialize};

pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A fresh schema name, unique across parallel tests and processes.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub async fn pg_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

/// A store in a fresh schema; the schema is dropped when the guard goes.
pub struct PgSchema(pub String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = pg_client().await;
                // Bounded: a transaction a failed test left open must not hang the test's exit.
                let _ = c
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await;
            });
        })
        .join();
    }
}

pub async fn pg_store(
    prefix: &str,
    upcasters: Upcasters,
) -> (Arc<herald_es::postgres::PgEventStore>, PgSchema) {
    let schema = unique(prefix);
    let store = herald_es::postgres::PgEventStore::builder(PG)
        .schema(&schema)
        .service("test-service")
        .pool_size(16)
        .upcasters(upcasters)
        .connect()
        .await
        .expect("PostgreSQL store");
    (Arc::new(store), PgSchema(schema))
}

pub fn sqlite_store(
    dir: &tempfile::TempDir,
    upcasters: Upcasters,
) -> Arc<herald_es::sqlite::SqliteEventStore> {
    Arc::new(
        herald_es::sqlite::SqliteEventStore::open(dir.path().join("es.db"), "test-service")
            .expect("SQLite store")
            .with_upcasters(upcasters),
    )
}

/// Both stores, for tests that run the same case on each.
pub async fn both(prefix: &str, dir: &tempfile::TempDir) -> (Vec<Database>, PgSchema) {
    let (pg, guard) = pg_store(prefix, Upcasters::new()).await;
    (
        vec![
            Database::Postgres(pg),
            Database::Sqlite(sqlite_store(dir, Upcasters::new())),
        ],
        guard,
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "test.noted")]
pub struct Noted {
    pub n: u64,
}

pub fn noted(n: u64) -> herald::Envelope {
    herald::Envelope::for_event(&Noted { n }, "test-service").unwrap()
}

/// Read the global order from the start until `n` events are readable. On PostgreSQL a reader
/// waits for every older transaction still in flight, on any database of the server (other
/// tests' too), so what was just committed may take a moment to become readable.
pub async fn read_all_eventually(
    store: &dyn herald_es::EventStore,
    n: usize,
) -> Vec<herald_es::RecordedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let read = store
            .read_all(herald_es::Checkpoint::START, 10_000)
            .await
            .unwrap();
        if read.len() >= n || std::time::Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
