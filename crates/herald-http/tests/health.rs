//! The health router on real transports: ready while the bus runs, 503 once it stops, degraded
//! when the outbox lags.

use std::sync::Arc;
use std::time::Duration;

use herald::health::{Health, HealthReport, HealthStatus};
use herald::{Bus, Context, SubscribeOptions};
use herald_outbox::health::RelayHealth;
use herald_outbox::sqlite::SqliteOutbox;

async fn serve(health: Health) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, herald_http::health::router::<()>(health))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

async fn ready(base: &str) -> (u16, HealthReport) {
    let r = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

async fn bus_with_consumer(broker: &str, service: &str) -> Bus {
    let bus = Bus::builder()
        .service(service)
        .broker(broker)
        .build()
        .await
        .unwrap();
    bus.subscribe_pattern(
        "all",
        "health.#",
        |_: serde_json::Value, _: Context| async {},
        SubscribeOptions::new().temporary(),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus
}

fn component<'a>(r: &'a HealthReport, name: &str) -> &'a herald::health::ComponentHealth {
    r.components
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {r:?}"))
}

#[tokio::test]
async fn sqlite_bus_ready_then_down_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("sqlite://{}", dir.path().join("b.db").display());
    let bus = bus_with_consumer(&broker, "health-sqlite").await;
    let base = serve(Health::new().with(Arc::new(bus.clone()))).await;

    let live = reqwest::get(format!("{base}/health/live")).await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    assert_eq!(
        live.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status":"up"})
    );

    let (code, r) = ready(&base).await;
    assert_eq!(code, 200, "{r:?}");
    assert_eq!(r.status, HealthStatus::Up);
    assert_eq!(component(&r, "broker").detail, "sqlite connected");
    assert_eq!(component(&r, "consumers").detail, "1 of 1 running");

    bus.shutdown().await.unwrap();
    let (code, r) = ready(&base).await;
    assert_eq!(code, 503);
    assert_eq!(r.status, HealthStatus::Down);
    assert_eq!(component(&r, "broker").status, HealthStatus::Down);
    // Liveness does not depend on the components.
    let live = reqwest::get(format!("{base}/health/live")).await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
}

#[tokio::test]
async fn rabbitmq_bus_ready_then_down_when_closed() {
    let service = format!("health-rmq-{}", std::process::id());
    let bus = bus_with_consumer("amqp://guest:guest@127.0.0.1:5672/%2f", &service).await;
    let base = serve(Health::new().with(Arc::new(bus.clone()))).await;
    let (code, r) = ready(&base).await;
    assert_eq!(code, 200, "{r:?}");
    assert_eq!(component(&r, "broker").detail, "rabbitmq connected");
    bus.shutdown().await.unwrap();
    assert!(
        !bus.transport().is_connected(),
        "closed transport reports disconnected"
    );
    let (code, r) = ready(&base).await;
    assert_eq!(code, 503, "{r:?}");
    assert_eq!(component(&r, "broker").status, HealthStatus::Down);
}

#[tokio::test]
async fn lagging_outbox_makes_ready_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("app").unwrap();
    let db = stage_one(&path, &outbox);
    let relay = RelayHealth::sqlite(&path, outbox).threshold(Duration::from_millis(100));
    let bus = Bus::builder()
        .service("health-outbox")
        .broker("memory://health-outbox")
        .build()
        .await
        .unwrap();
    let base = serve(
        Health::new()
            .with(Arc::new(bus.clone()))
            .with(Arc::new(relay)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, r) = ready(&base).await;
    assert_eq!(code, 503, "{r:?}");
    assert_eq!(r.status, HealthStatus::Degraded);
    assert_eq!(component(&r, "outbox").status, HealthStatus::Degraded);
    assert_eq!(component(&r, "broker").status, HealthStatus::Up);
    drop(db);
    bus.shutdown().await.unwrap();
}

/// Create the outbox table in the application's database and stage one event.
fn stage_one(path: &std::path::Path, outbox: &SqliteOutbox) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    outbox.migrate(&db).unwrap();
    let envelope = herald::Envelope::new("health.staged", 1, "health.staged", "app", "{}".into());
    outbox.stage_envelope(&db, &envelope).unwrap();
    db
}
