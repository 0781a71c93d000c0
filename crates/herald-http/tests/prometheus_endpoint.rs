//! `GET /metrics` end to end: the Prometheus recorder installed globally, a bus on a SQLite
//! broker file, the router on a real socket, a plain HTTP/1.1 request.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald::middleware::RetryPolicy;
use herald::{Bus, Event, HandlerError, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "parcel.shipped")]
struct ParcelShipped {
    n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "parcel.lost")]
struct ParcelLost {
    n: u32,
}

async fn ship(_e: ParcelShipped) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

async fn lose(_e: ParcelLost) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("cannot handle lost parcels"))
}

/// One exposition sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_bus_counters() {
    let handle = herald_http::metrics::install_prometheus().unwrap();
    let again = herald_http::metrics::install_prometheus().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let broker = format!("sqlite://{}", dir.path().join("broker.db").display());
    let bus = Bus::builder()
        .service("depot")
        .broker(broker)
        .sample_queue_depth(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    bus.subscribe(ship).unwrap();
    bus.subscribe_with(lose, SubscribeOptions::new().retry(RetryPolicy::none()))
        .unwrap();
    bus.start().await.unwrap();
    for n in 0..3 {
        bus.publish(&ParcelShipped { n }).await.unwrap();
    }
    bus.publish(&ParcelLost { n: 9 }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(bus.metrics().handled == 3 && bus.metrics().dead_lettered == 1) {
        assert!(Instant::now() < deadline, "timed out: {:?}", bus.metrics());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the sampler see the dead letter and the settlements land.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(
            async move { axum::serve(listener, herald_http::metrics::router(handle)).await },
        );
    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        again.render().contains("herald_acked_total{"),
        "installing again returns the handle of the same recorder"
    );
    let samples = parse(&body);
    let shipped_pub = [("service", "depot"), ("event_type", "parcel.shipped")];
    assert_eq!(
        value(&samples, "herald_published_total", &shipped_pub),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        value(&samples, "herald_confirmed_total", &shipped_pub),
        Some(3.0)
    );

    let shipped = [
        ("queue", "depot.parcel.shipped"),
        ("event_type", "parcel.shipped"),
    ];
    assert_eq!(
        value(&samples, "herald_consumed_total", &shipped),
        Some(3.0)
    );
    assert_eq!(value(&samples, "herald_acked_total", &shipped), Some(3.0));
    assert_eq!(
        value(&samples, "herald_handler_duration_seconds_count", &shipped),
        Some(3.0)
    );
    let sum = value(&samples, "herald_handler_duration_seconds_sum", &shipped).unwrap();
    assert!(
        (0.006..5.0).contains(&sum),
        "three handlers of 2 ms or more: {sum}"
    );
    let mut le_inf = shipped.to_vec();
    le_inf.push(("le", "+Inf"));
    assert_eq!(
        value(&samples, "herald_handler_duration_seconds_bucket", &le_inf),
        Some(3.0)
    );
    let mut le_tiny = shipped.to_vec();
    le_tiny.push(("le", "0.0005"));
    assert_eq!(
        value(&samples, "herald_handler_duration_seconds_bucket", &le_tiny),
        Some(0.0),
        "custom buckets in place; no 2 ms handler under 0.5 ms"
    );

    let lost = [
        ("queue", "depot.parcel.lost"),
        ("event_type", "parcel.lost"),
    ];
    assert_eq!(
        value(&samples, "herald_dead_lettered_total", &lost),
        Some(1.0)
    );
    let mut lost_failed = lost.to_vec();
    lost_failed.push(("kind", "permanent"));
    assert_eq!(
        value(&samples, "herald_failed_total", &lost_failed),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "herald_in_flight",
            &[("queue", "depot.parcel.shipped")]
        ),
        Some(0.0)
    );
    let dead = [("queue", "depot.parcel.lost"), ("state", "dead_letters")];
    assert_eq!(value(&samples, "herald_queue_depth", &dead), Some(1.0));
    assert!(
        body.contains("# HELP herald_acked_total"),
        "descriptions registered"
    );

    let (head, _) = get(addr, "/nothing").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    bus.shutdown().await.unwrap();
    server.abort();
}
