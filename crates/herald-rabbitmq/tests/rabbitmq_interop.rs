//! Interop with a plain AMQP client in another language (Python pika), both directions:
//! pika reads Herald's events as plain JSON with standard properties, and Herald consumes
//! events pika published without any CloudEvents headers.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio_util::sync::CancellationToken;

mod common;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pika_peer.py");

fn ensure_pika() {
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", "import pika"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has("python3") {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "pika"])
            .status();
    }
    assert!(
        has("python3"),
        "python3 with pika is needed: python3 -m pip install pika"
    );
}

/// Publish three `order.placed` events with `t` to `exchange` and return them with what pika's
/// consumer printed for each (one JSON object per message).
async fn pika_receives(t: &RabbitTransport, exchange: &str) -> Vec<(Envelope, serde_json::Value)> {
    let mut child = Command::new("python3")
        .args([SCRIPT, "consume", exchange, "order.#", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("python consumer ready");
    assert_eq!(ready, "READY");
    let mut sent = Vec::new();
    for i in 0..3u32 {
        let body = serde_json::to_vec(&serde_json::json!({ "order": i, "total": 9.5 })).unwrap();
        let mut e = Envelope::new("order.placed", 2, "order.placed", "shop", Bytes::from(body));
        e.correlation_id = Some(format!("corr-{i}"));
        sent.push(e);
    }
    // Nothing Herald-side is bound to order.*, only pika's queue: mandatory still succeeds.
    t.publish(exchange, &sent, PublishOptions::default())
        .await
        .expect("publish");
    let mut received = Vec::new();
    for e in sent {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("pika got a message");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        received.push((e, v));
    }
    assert!(child.wait().expect("python exit").success());
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_reads_herald_and_herald_reads_pika() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    ensure_pika();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("interop.{}", &id[..8]);
    let queue = QueueSpec::new(format!("interop-{}.from-python", &id[..8]), "user.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    let t = RabbitTransport::connect(RabbitConfig::new(vec![common::amqp_url()], "interop"))
        .await
        .expect("connect");
    t.apply_topology(&topo).await.expect("topology");

    // Herald -> pika.
    for (e, v) in pika_receives(&t, &exchange).await {
        assert_eq!(v["content_type"], "application/json");
        assert_eq!(v["delivery_mode"], 2);
        assert_eq!(v["message_id"], e.id.as_str());
        assert_eq!(v["type"], "order.placed");
        assert_eq!(v["app_id"], "shop");
        assert_eq!(
            v["correlation_id"],
            e.correlation_id.clone().unwrap().as_str()
        );
        assert_eq!(v["routing_key"], "order.placed");
        // CloudEvents attributes without a standard property travel as headers; those with
        // one (id, type, source, content type, correlation id) only in the property.
        // The time is the UUIDv7 id's millisecond, and the `timestamp` property its second; the
        // spec version is the one a reader assumes. Only the contract version (2, not the
        // default 1) is a header here.
        assert_eq!(v["id_time_ms"], e.time.timestamp_millis(), "{v}");
        assert_eq!(v["timestamp"], e.time.timestamp(), "{v}");
        let headers: Vec<&String> = v["headers"].as_object().expect("headers").keys().collect();
        assert_eq!(headers, ["cloudEvents_eventversion"], "{v}");
        assert_eq!(v["headers"]["cloudEvents_eventversion"], "2");
        assert_eq!(
            v["body"],
            serde_json::from_slice::<serde_json::Value>(&e.body).unwrap()
        );
    }

    // pika -> Herald.
    let out = Command::new("python3")
        .args([SCRIPT, "publish", &exchange, "user.registered", "3"])
        .output()
        .expect("run python publisher");
    assert!(
        out.status.success(),
        "pika publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancel = CancellationToken::new();
    let mut deliveries = t
        .consume(&queue, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    for i in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
            .await
            .expect("delivery in time")
            .expect("delivery");
        let e = &d.envelope;
        assert_eq!(e.id, format!("py-{i}"));
        assert_eq!(e.event_type, "user.registered");
        assert_eq!(e.source, "python-service");
        assert_eq!(e.routing_key, "user.registered");
        assert_eq!(
            e.correlation_id.as_deref(),
            Some(format!("flow-{i}").as_str())
        );
        assert_eq!(e.attempt, 1);
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(body["n"], i);
        d.ack().await.unwrap();
    }
    cancel.cancel();
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &queue).await;
}

/// `cloudevents=full` on the URL: every attribute also travels as a `cloudEvents_*` header, for
/// consumers that read only those (a CloudEvents SDK); the properties stay as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cloudevents_headers_on_request() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    ensure_pika();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("interop.{}", &id[..8]);
    let topo = Topology::new(&exchange);
    let url = format!("{}?cloudevents=full", common::amqp_url());
    let t = RabbitTransport::connect(RabbitConfig::new(vec![url], "interop"))
        .await
        .expect("connect");
    t.apply_topology(&topo).await.expect("topology");
    for (e, v) in pika_receives(&t, &exchange).await {
        let h = &v["headers"];
        assert_eq!(h["cloudEvents_id"], e.id.as_str(), "{v}");
        assert_eq!(h["cloudEvents_type"], "order.placed");
        assert_eq!(h["cloudEvents_source"], "shop");
        assert_eq!(h["cloudEvents_datacontenttype"], "application/json");
        assert_eq!(
            h["cloudEvents_correlationid"],
            e.correlation_id.clone().unwrap().as_str()
        );
        assert_eq!(h["cloudEvents_eventversion"], "2");
        assert_eq!(h["herald_attempt"], "1");
        assert_eq!(v["message_id"], e.id.as_str());
    }
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &QueueSpec::new("unused", "")).await;
}
