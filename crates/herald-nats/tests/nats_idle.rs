//! A consumer outlives its pull requests: when a request expires on an idle queue the consumer
//! asks again, and an event published after a quiet spell longer than several requests' lives
//! still arrives. (A request ended by a leader change takes the same path; the NATS cluster
//! case of `herald-cli/tests/chaos.rs` covers that one.)
use std::time::Duration;

use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use herald_nats::{NatsConfig, NatsTransport};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_idle_past_its_pull_requests_still_receives() {
    // Requests that expire after a second: the quiet spell below outlives several of them.
    let url = "nats://127.0.0.1:4222?pull_expires=1s";
    let t = NatsTransport::connect(NatsConfig::from_url(url, "idle").unwrap())
        .await
        .expect("connect to NATS on 127.0.0.1:4222");
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("idle{id}");
    let queue = QueueSpec::new(format!("idle-{id}.events"), "tick.*");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    t.apply_topology(&topo).await.unwrap();
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&queue, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();

    for round in 0..2u32 {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let e = Envelope::new("tick.done", 1, "tick.done", "idle", Bytes::from("{}"));
        t.publish(
            &exchange,
            std::slice::from_ref(&e),
            PublishOptions::default(),
        )
        .await
        .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: nothing arrived after a quiet spell"))
            .expect("the consumer ended");
        assert_eq!(d.envelope.id, e.id);
        d.ack().await.unwrap();
    }
    cancel.cancel();
    let js = async_nats::jetstream::new(t.client().clone());
    let stream = herald_nats::stream_name(&exchange);
    let _ = js.delete_stream(format!("{stream}_dlq")).await;
    let _ = js.delete_stream(stream).await;
}
