//! Interop with a plain NATS client in another language (Python nats-py), both directions:
//! nats-py reads Herald's events from the stream as plain JSON with the CloudEvents headers, and
//! Herald consumes messages nats-py published with no headers at all.
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_nats::{NatsConfig, NatsTransport};
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/nats_peer.py");
const URL: &str = "nats://127.0.0.1:4222";

fn ensure_nats_py() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import nats"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "nats-py"])
            .status();
    }
    assert!(
        has(),
        "python3 with nats-py is needed: python3 -m pip install nats-py"
    );
}

async fn transport() -> NatsTransport {
    NatsTransport::connect(NatsConfig::from_url(URL, "interop").unwrap())
        .await
        .expect("connect to NATS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_reads_herald_events_and_herald_reads_plain_messages() {
    ensure_nats_py();
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("interop{id}");
    let t = transport().await;
    let queue = QueueSpec::new(format!("interop-{id}.courses"), "course.*");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    t.apply_topology(&topo).await.unwrap();

    // Herald -> nats-py.
    let mut sent = Vec::new();
    for i in 0..3u32 {
        let body = serde_json::to_vec(&serde_json::json!({ "order": i })).unwrap();
        let mut e = Envelope::new(
            "course.created",
            2,
            "course.created",
            "shop",
            Bytes::from(body),
        );
        e.correlation_id = Some(format!("corr-{i}"));
        sent.push(e);
    }
    t.publish(&exchange, &sent, PublishOptions::default())
        .await
        .unwrap();
    let stream = herald_nats::stream_name(&exchange);
    let out = tokio::task::spawn_blocking({
        let (stream, subject) = (stream.clone(), format!("{exchange}.course.created"));
        move || {
            Command::new("python3")
                .args([SCRIPT, "read", URL, &stream, &subject, "3"])
                .output()
                .expect("run python")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (e, got) in sent.iter().zip(&lines) {
        assert_eq!(got["subject"], format!("{exchange}.course.created"));
        assert_eq!(
            got["body"]["order"],
            serde_json::from_slice::<serde_json::Value>(&e.body).unwrap()["order"]
        );
        // The compact form: the id is the message id, the type is the routing key (the
        // subject after the exchange), the time is in the UUIDv7 id; what a reader cannot work
        // out is a header.
        assert_eq!(got["headers"]["Nats-Msg-Id"], e.id.as_str());
        assert_eq!(got["headers"]["cloudEvents_source"], "shop");
        assert_eq!(got["headers"]["cloudEvents_eventversion"], "2");
        assert_eq!(
            got["headers"]["cloudEvents_correlationid"],
            e.correlation_id.clone().unwrap()
        );
        assert!(
            got["headers"].get("cloudEvents_type").is_none(),
            "{}",
            got["headers"]
        );
    }

    // nats-py -> Herald: plain JSON, no headers.
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    // Drain Herald's own three first.
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack().await.unwrap();
    }
    let subject = format!("{exchange}.course.enrolled");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([SCRIPT, "publish", URL, &subject, "2"])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("Herald gets the plain message")
            .unwrap();
        assert_eq!(d.envelope.routing_key, "course.enrolled");
        assert_eq!(
            d.envelope.event_type, "course.enrolled",
            "type from the subject"
        );
        assert_eq!(d.envelope.source, "unknown");
        let body: serde_json::Value = serde_json::from_slice(&d.envelope.body).unwrap();
        assert_eq!(body["event_type"], "course.enrolled");
        d.ack().await.unwrap();
    }
    cancel.cancel();
    t.close().await.unwrap();
    if let Ok(client) = async_nats::connect(URL).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(format!("{stream}_dlq")).await;
        let _ = js.delete_stream(stream).await;
    }
}
