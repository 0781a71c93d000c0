//! `cargo run -p herald-outbox --example listing-sync`: reference 001's listing sync on Herald.
//!
//! Environment: `DATABASE_URL` (default: the local PostgreSQL, database `test`),
//! `HERALD_BROKER` (default: an embedded `sqlite://` broker in a temporary directory).

mod app;

use std::time::Duration;

use herald::Bus;
use herald_outbox::RelayConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let conninfo = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into());
    let dir = std::env::temp_dir().join(format!("listing-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = std::env::var("HERALD_BROKER")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.join("broker.db").display()));
    let app = app::App::new(&conninfo, "listing_sync")?;
    app.setup().await?;

    let bus = Bus::builder()
        .service("listing-sync")
        .broker(&broker)
        .exchange("benalsam.listings")
        .build()
        .await?;
    app.subscribe(&bus).await?;
    bus.start().await?;
    let relay = app.relay(&bus, RelayConfig::default()).await?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let relay_task = tokio::spawn(async move { relay.run(c).await });

    let db = app::connect(&conninfo).await?;
    let bike = app
        .create(&db, "Red bicycle", "A fast road bike, barely used")
        .await?;
    let sofa = app
        .create(&db, "Leather sofa", "Three seats, brown")
        .await?;
    app.set_status(&db, bike, "active").await?;
    app.rename(&db, sofa, "Leather sofa and armchair").await?;
    app.set_status(&db, sofa, "sold").await?;
    app.delete(&db, sofa).await?;
    app.wait_in_sync(&db, Duration::from_secs(30)).await?;
    println!("search 'bike': {:?}", app.search(&db, "bike").await?);
    println!("{}", app.outbox.status(&db).await?);

    cancel.cancel();
    relay_task.await?;
    bus.shutdown().await?;
    Ok(())
}
