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
    herald_rabbitmq::register();
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
        // No retry levels: fewer queues left behind on RabbitMQ.
        SubscribeOptions::new()
            .temporary()
            .retry(herald::middleware::RetryPolicy::none()),
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

#[tokio::test]
async fn every_component_at_its_own_url_as_well_as_the_combined_probe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox = SqliteOutbox::new("app").unwrap();
    let db = stage_one(&path, &outbox);
    let relay = RelayHealth::sqlite(&path, outbox).threshold(Duration::from_millis(100));
    let bus = bus_with_consumer("memory://health-components", "health-components").await;
    // Reference 001's names, mounted where it serves them.
    let health = Health::new()
        .with(Arc::new(bus.clone()))
        .with(Arc::new(relay))
        .alias("rabbitmq", "broker")
        .alias("database-trigger-bridge", "outbox")
        .alias("elasticsearch-service", "consumers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest("/api/v1", herald_http::health::router(health));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let get = |path: &str| {
        let url = format!("http://{addr}/api/v1/health/{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (path, name) in [
        ("broker", "broker"),
        ("rabbitmq", "broker"),
        ("elasticsearch-service", "consumers"),
    ] {
        let (code, body) = get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(
            (body["name"].as_str(), body["status"].as_str()),
            (Some(name), Some("up"))
        );
    }
    // The lagging relay is degraded at its own URL (503), and makes the combined probe 503.
    let (code, body) = get("database-trigger-bridge").await;
    assert_eq!(
        (code, body["name"].as_str()),
        (503, Some("outbox")),
        "{body}"
    );
    assert_eq!(body["status"], "degraded");
    assert_eq!(get("ready").await.0, 503);
    let (code, body) = get("search").await;
    assert_eq!(code, 404, "{body}");
    let known: Vec<&str> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        known,
        vec![
            "broker",
            "consumers",
            "outbox",
            "rabbitmq",
            "database-trigger-bridge",
            "elasticsearch-service"
        ]
    );
    drop(db);
    bus.shutdown().await.unwrap();
    assert_eq!(get("broker").await.0, 503, "down after shutdown");
}

/// Create the outbox table in the application's database and stage one event.
fn stage_one(path: &std::path::Path, outbox: &SqliteOutbox) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    outbox.migrate(&db).unwrap();
    let envelope = herald::Envelope::new("health.staged", 1, "health.staged", "app", "{}".into());
    outbox.stage_envelope(&db, &envelope).unwrap();
    db
}

/// Close this service's RabbitMQ connections from the broker side, and only those (other tests
/// share the broker): the transport names them `<service> herald <role>`.
fn close_connections_of(service: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    let needle = format!("{{\"connection_name\",\"{service} herald ");
    let mut closed = 0;
    for line in listing.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if properties.contains(&needle) {
            let ok = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "herald health test"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "rabbitmqctl close_connection {pid}");
            closed += 1;
        }
    }
    closed
}

#[tokio::test]
async fn rabbitmq_connection_closed_by_the_broker_is_down_until_reconnected() {
    let service = format!(
        "health-close-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let bus = bus_with_consumer("amqp://guest:guest@127.0.0.1:5672/%2f", &service).await;
    let base = serve(Health::new().with(Arc::new(bus.clone()))).await;
    assert_eq!(ready(&base).await.0, 200);

    // Watch readiness closely: the supervisor reconnects within a few hundred milliseconds.
    let watcher = tokio::spawn({
        let base = base.clone();
        async move {
            loop {
                let (code, r) = ready(&base).await;
                if code == 503 {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let closed = tokio::task::spawn_blocking({
        let service = service.clone();
        move || close_connections_of(&service)
    })
    .await
    .unwrap();
    assert!(closed >= 1, "found this service's connections");
    let down = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("ready went 503 after the broker closed the connection")
        .unwrap();
    let broker = component(&down, "broker");
    assert_eq!(broker.status, HealthStatus::Down, "{down:?}");
    assert!(broker.detail.contains("disconnected"), "{down:?}");

    // The supervisor reconnects and readiness comes back.
    let start = std::time::Instant::now();
    loop {
        let (code, r) = ready(&base).await;
        if code == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still not ready: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.shutdown().await.unwrap();
}
