//! Shared test helpers: a PostgreSQL schema per test, a memory bus that records what it receives.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::{Bus, Context, HandlerError, SubscribeOptions};
use serde::{Deserialize, Serialize};

pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "test.numbered")]
pub struct Numbered {
    pub agg: String,
    pub n: u64,
}

/// A fresh schema name, unique across parallel tests and processes.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    )
}

pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

pub async fn drop_schema(schema: &str) {
    let c = pg().await;
    let _ = c
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
}

/// What a recording subscriber saw: (event id, subject, body).
pub type Seen = Arc<Mutex<Vec<(String, Option<String>, serde_json::Value)>>>;

/// A bus on `broker` with one subscription on `pattern` that records every delivery in order.
pub async fn recording_bus(broker: &str, service: &str, pattern: &str) -> (Bus, Seen) {
    let bus = Bus::builder()
        .service(service)
        .broker(broker)
        .build()
        .await
        .expect("bus");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    bus.subscribe_pattern(
        "all",
        pattern,
        move |v: serde_json::Value, ctx: Context| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push((ctx.id().to_string(), ctx.envelope().subject.clone(), v));
                Ok::<(), HandlerError>(())
            }
        },
        SubscribeOptions::new().concurrency(1).prefetch(256),
    )
    .expect("subscribe");
    bus.start().await.expect("start");
    (bus, seen)
}

/// Wait until `f` holds, or panic after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
