//! The relay process of `tests/pg_kill.rs` (not a test itself): relays the PostgreSQL outbox in
//! schema `OB_SCHEMA` into the broker `OB_BROKER`, in batches of `OB_BATCH`. With `OB_HANG_AT=N`
//! it stops after publishing its N-th batch, before marking it sent, writes the file `OB_MARKER`
//! and waits there to be killed. Gives up after a minute if nobody kills it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::Bus;
use herald_outbox::postgres::{PgOutbox, PgStore};
use herald_outbox::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

#[tokio::main]
async fn main() {
    let schema = var("OB_SCHEMA");
    let batch_size: usize = var("OB_BATCH").parse().expect("OB_BATCH is a number");
    let hang_at: usize = var("OB_HANG_AT").parse().expect("OB_HANG_AT is a number");
    let marker = var("OB_MARKER");
    let outbox = PgOutbox::new("relay-svc")
        .expect("service name")
        .schema(&schema)
        .expect("schema name");
    let bus = Bus::builder()
        .service("relay-svc")
        .broker(var("OB_BROKER"))
        .build()
        .await
        .expect("connect to the broker");
    let store = Arc::new(
        PgStore::connect(PG, outbox)
            .await
            .expect("connect to PostgreSQL"),
    );
    let batches = Arc::new(AtomicUsize::new(0));
    let config = RelayConfig {
        batch_size,
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
        after_publish: Some(Arc::new(move |_| {
            let n = batches.fetch_add(1, Ordering::SeqCst) + 1;
            if n == hang_at {
                // Published and confirmed, not yet marked sent: wait here to be killed.
                std::fs::write(&marker, b"published").expect("write the marker");
                std::thread::sleep(Duration::from_secs(60));
            }
        })),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store, bus.publisher().clone(), config);
    let cancel = CancellationToken::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), relay.run(cancel)).await;
}
