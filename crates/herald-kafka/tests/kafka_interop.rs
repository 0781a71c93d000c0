//! Interop with a plain Kafka client in another language (Python confluent-kafka), both
//! directions: it reads Herald's events as JSON values with `ce_*` headers (the compact form),
//! and Herald consumes
//! records it produced with nothing but a routing-key header.
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_kafka::KafkaTransport;
use tokio_util::sync::CancellationToken;

mod common;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/kafka_peer.py");

fn python(args: &[&str]) -> Vec<String> {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("python3 runs (scripts/services.sh installs confluent-kafka)");
    assert!(
        out.status.success(),
        "the Python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_kafka_client_reads_and_writes_herald_events() {
    let broker = common::broker_on(9111);
    common::wait_for_broker(&broker, Duration::from_secs(30)).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("interop.{}", &id[..8]);
    let queue = QueueSpec::new(format!("interop-{}.orders", &id[..8]), "order.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    let t = KafkaTransport::connect(common::config(&broker, "interop"))
        .await
        .expect("connect");
    t.apply_topology(&topo).await.expect("topology");

    // Herald -> Python.
    let mut sent = Vec::new();
    for i in 0..3u32 {
        let body = serde_json::to_vec(&serde_json::json!({ "order": i })).unwrap();
        let mut e = Envelope::new("order.placed", 1, "order.placed", "shop", Bytes::from(body));
        e.subject = Some(format!("order-{i}"));
        e.correlation_id = Some("flow-1".into());
        sent.push(e);
    }
    t.publish(&exchange, &sent, PublishOptions::default())
        .await
        .expect("publish");
    let lines = tokio::task::spawn_blocking({
        let (broker, exchange) = (broker.clone(), exchange.clone());
        move || python(&["read", &broker, &exchange, "3"])
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 3, "Python read three records: {lines:?}");
    for line in lines {
        let got: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
        let h = &got["headers"];
        let e = sent
            .iter()
            .find(|e| h["ce_id"] == e.id.as_str())
            .expect("a published id");
        assert_eq!(
            got["key"],
            e.subject.clone().unwrap().as_str(),
            "keyed by subject"
        );
        assert_eq!(
            got["value"],
            serde_json::from_slice::<serde_json::Value>(&e.body).unwrap()
        );
        assert_eq!(h["ce_type"], "order.placed");
        assert_eq!(h["ce_source"], "shop");
        assert_eq!(h["ce_correlationid"], "flow-1");
        // The compact form: defaults (spec version, JSON, version and attempt 1), the time
        // the UUIDv7 id carries and a routing key equal to the type are left out.
        for absent in [
            "ce_specversion",
            "content-type",
            "ce_time",
            "herald_routing_key",
        ] {
            assert!(h.get(absent).is_none(), "{absent} in {h}");
        }
    }

    // Python -> Herald: records with only a routing-key header are consumed.
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    // Take Herald's own three first.
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("in time")
            .expect("delivery");
        d.ack().await.unwrap();
    }
    let done = tokio::task::spawn_blocking({
        let (broker, exchange) = (broker.clone(), exchange.clone());
        move || python(&["write", &broker, &exchange, "order.legacy", "2"])
    })
    .await
    .unwrap();
    assert_eq!(done, vec!["DONE"]);
    let mut legacy = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("in time")
            .expect("delivery");
        assert_eq!(d.envelope.routing_key, "order.legacy");
        assert_eq!(d.envelope.source, "unknown", "no ce_source: the default");
        legacy.push(
            serde_json::from_slice::<serde_json::Value>(&d.envelope.body).unwrap()["legacy"]
                .clone(),
        );
        d.ack().await.unwrap();
    }
    legacy.sort_by_key(|v| v.as_u64());
    assert_eq!(legacy, vec![serde_json::json!(0), serde_json::json!(1)]);
    cancel.cancel();
    drop(rx);
    t.close().await.unwrap();
    common::forget_topology(&broker, &topo).await;
}
