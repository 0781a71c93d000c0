//! `cargo run -p herald-outbox --example listing-sync`: reference 001's listing sync on Herald,
//! on reference 001's exchanges and queues.
//!
//! Environment: `DATABASE_URL` (default: the local PostgreSQL, database `test`),
//! `HERALD_BROKER` (default: the embedded `sqlite://` broker in a temporary directory; with
//! `amqp://...` the same topology is declared on RabbitMQ and the RabbitMQ transport is used).

mod app;

use std::sync::Arc;
use std::time::Duration;

use herald::health::Health;
use herald_outbox::health::RelayHealth;
use herald_outbox::RelayConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    #[cfg(feature = "rabbitmq")]
    herald_rabbitmq::register();
    let conninfo = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into());
    let dir = std::env::temp_dir().join(format!("listing-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = std::env::var("HERALD_BROKER")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.join("broker.db").display()));
    let app = app::App::new(&conninfo, "listing_sync", app::Names::reference())?;
    app.setup().await?;

    let bus = app.bus("listing-sync", &broker).await?;
    app.subscribe(&bus).await?;
    bus.start().await?;
    for t in bus.topologies() {
        print!("{t}");
    }
    // Reference 001's health checks, one per component (herald-http serves each at
    // /health/<name>: mount it under /api/v1 for the reference's URLs).
    let health = Health::new()
        .with(Arc::new(bus.clone()))
        .with(Arc::new(RelayHealth::postgres(
            &conninfo,
            app.outbox.clone(),
        )))
        .alias("rabbitmq", "broker")
        .alias("database-trigger-bridge", "outbox")
        .alias("elasticsearch-service", "consumers");
    let relay = app.relay(&bus, RelayConfig::default()).await?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let relay_task = tokio::spawn(async move { relay.run(c).await });
    app.report_health(&bus, &health).await?;

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
    app.report_health(&bus, &health).await?;
    // Reference 001's job monitoring: counts and average processing times by status.
    println!("{}", app.outbox.status(&db).await?);

    cancel.cancel();
    relay_task.await?;
    bus.shutdown().await?;
    Ok(())
}
