//! `RelayHealth` on real outbox tables (SQLite file, PostgreSQL): up when nothing lags,
//! degraded past the threshold, down far past it or when the table cannot be read.

mod common;

use std::time::Duration;

use common::*;
use herald::health::{HealthCheck, HealthStatus};
use herald_outbox::health::RelayHealth;
use herald_outbox::postgres::PgOutbox;
use herald_outbox::sqlite::SqliteOutbox;

async fn status_of(health: &RelayHealth) -> (HealthStatus, String) {
    let c = health.check().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].name, "outbox");
    (c[0].status, c[0].detail.clone())
}

#[tokio::test]
async fn sqlite_outbox_lag_goes_up_degraded_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("app").unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    outbox.migrate(&db).unwrap();
    let health = RelayHealth::sqlite(&path, outbox.clone()).threshold(Duration::from_millis(300));

    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Up, "{detail}");
    assert!(detail.starts_with("0 pending"), "{detail}");

    outbox
        .stage(
            &db,
            &Numbered {
                agg: "a".into(),
                n: 1,
            },
        )
        .unwrap();
    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Up, "{detail}");
    assert!(detail.starts_with("1 pending, oldest"), "{detail}");

    tokio::time::sleep(Duration::from_millis(450)).await;
    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Degraded, "{detail}");

    tokio::time::sleep(Duration::from_millis(900)).await;
    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Down, "{detail}");
    assert_eq!(health.status().await.unwrap().backlog(), 1);
}

#[tokio::test]
async fn unreadable_outbox_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let health = RelayHealth::sqlite(
        dir.path().join("missing.db"),
        SqliteOutbox::new("app").unwrap(),
    );
    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Down);
    assert!(detail.contains("cannot read the outbox table"), "{detail}");
}

#[tokio::test]
async fn postgres_outbox_lag_is_degraded() {
    let schema = unique("relay_health");
    let outbox = PgOutbox::new("test-svc").unwrap().schema(&schema).unwrap();
    let mut client = pg().await;
    outbox.migrate(&mut client).await.unwrap();
    let health = RelayHealth::postgres(PG, outbox.clone()).threshold(Duration::from_millis(200));
    assert_eq!(status_of(&health).await.0, HealthStatus::Up);
    outbox
        .stage(
            &client,
            &Numbered {
                agg: "a".into(),
                n: 1,
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, detail) = status_of(&health).await;
    assert_eq!(s, HealthStatus::Degraded, "{detail}");
    assert!(detail.starts_with("1 pending"), "{detail}");
    drop_schema(&schema).await;
}
