//! RabbitMQ-specific behaviour beyond the conformance suite: topology conflicts, request/reply
//! over direct reply-to, broker-sent consumer cancellation, health.
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::transport::{ConsumeOptions, DeadLetterAdmin, PublishOptions, QueueStatistics};
use herald::{Envelope, Error, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio_util::sync::CancellationToken;

mod common;

async fn open(service: &str) -> RabbitTransport {
    common::wait_for_broker(Duration::from_secs(60)).await;
    RabbitTransport::connect(RabbitConfig::new(vec![common::amqp_url()], service))
        .await
        .expect("connect")
}

fn names(case: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        format!("rt.{case}.{}", &id[..8]),
        format!("rt-{case}-{}", &id[..8]),
    )
}

fn event(key: &str, n: u32) -> Envelope {
    let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap();
    Envelope::new(key, 1, key, "rt", Bytes::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_queue_arguments_are_reported() {
    let t = open("rt-conflict").await;
    assert!(t.is_connected());
    let (exchange, prefix) = names("conflict");
    let mut q = QueueSpec::new(format!("{prefix}.a"), "a.#");
    q.max_length = Some(2);
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.expect("first declaration");
    t.apply_topology(&topo)
        .await
        .expect("declaring again is idempotent");
    let mut changed = q.clone();
    changed.max_length = Some(3);
    let mut topo2 = Topology::new(&exchange);
    topo2.add_queue(changed);
    let started = Instant::now();
    let err = t.apply_topology(&topo2).await.expect_err("conflict");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried forever"
    );
    match &err {
        Error::TopologyConflict { object, detail } => {
            assert_eq!(object, &q.name);
            assert!(
                detail.contains("x-max-length"),
                "names the argument: {detail}"
            );
        }
        other => panic!("expected TopologyConflict, got {other}"),
    }
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_over_direct_reply_to() {
    let server = open("rt-server").await;
    let client = open("rt-client").await;
    let (exchange, prefix) = names("rpc");
    let q = QueueSpec::new(format!("{prefix}.quote"), "quote.request");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    server.apply_topology(&topo).await.unwrap();
    let cancel = CancellationToken::new();
    let mut rx = server
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let responder = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let n: u64 = serde_json::from_slice::<serde_json::Value>(&d.envelope.body).unwrap()
                    ["n"]
                    .as_u64()
                    .unwrap();
                let body = serde_json::to_vec(&serde_json::json!({ "price": n * 10 })).unwrap();
                let reply =
                    Envelope::new("quote.reply", 1, "quote.reply", "server", Bytes::from(body));
                server.reply(&d.envelope, reply).await.unwrap();
                d.ack().await.unwrap();
            }
        })
    };
    for n in 1..=3u32 {
        let req = event("quote.request", n);
        let reply = client
            .request(&exchange, &req, Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!(reply.causation_id.as_deref(), Some(req.id.as_str()));
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["price"], u64::from(n) * 10);
    }
    // Nobody bound: unroutable. Bound but nobody answers: timeout.
    let err = client
        .request(&exchange, &event("nobody.here", 1), Duration::from_secs(2))
        .await
        .expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "got {err}");
    cancel.cancel();
    let _ = responder.await;
    let err = client
        .request(
            &exchange,
            &event("quote.request", 9),
            Duration::from_millis(300),
        )
        .await
        .expect_err("no responder");
    assert!(matches!(err, Error::Timeout(_)), "got {err}");
    client.close().await.unwrap();
    server.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_its_queue_being_deleted() {
    let t = open("rt-cancel").await;
    let (exchange, prefix) = names("cancel");
    let q = QueueSpec::new(format!("{prefix}.a"), "c.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.unwrap();
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    assert!(
        common::rabbitmqctl(&["delete_queue", &q.name]),
        "delete the queue under the consumer"
    );
    // The consumer re-declares its queue and resumes; publish until the route exists again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match t
            .publish(&exchange, &[event("c.x", 7)], PublishOptions::default())
            .await
        {
            Ok(()) => break,
            Err(Error::Unroutable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("publish after re-declare: {e}"),
        }
    }
    let d = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("delivery after the queue came back")
        .expect("stream still open");
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_with_delayed_retry_and_dead_letters() {
    use herald::transport::{Failure, Outcome};
    let t = open("rt-quorum").await;
    let (exchange, prefix) = names("quorum");
    let mut q = QueueSpec::new(format!("{prefix}.a"), "q.#");
    q.kind = herald::QueueKind::Quorum;
    q.retry_delays = vec![Duration::from_millis(300)];
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.expect("quorum topology");
    t.publish(&exchange, &[event("q.x", 1)], PublishOptions::default())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let failure = Failure::now(&d.envelope, &q.name, "handler", "boom");
    let started = Instant::now();
    d.settle(Outcome::Retry {
        delay: Duration::from_millis(300),
        failure,
    })
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(d.envelope.attempt, 2);
    assert_eq!(d.envelope.routing_key, "q.x");
    let failure = Failure::now(&d.envelope, &q.name, "handler", "still broken");
    d.settle(Outcome::DeadLetter(failure)).await.unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dead.is_empty() && Instant::now() < deadline {
        dead = t.dead_letters(&q.name, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error(), "still broken");
    assert_eq!(dead[0].envelope.routing_key, "q.x");
    let stats = t.queue_stats().await.unwrap();
    let s = stats
        .iter()
        .find(|s| s.queue == q.name)
        .expect("stats for the queue");
    assert_eq!(s.dead_letters, Some(1));
    cancel.cancel();
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_fails_fast() {
    let t = open("rt-missing").await;
    let (exchange, _) = names("missing");
    let started = Instant::now();
    let err = t
        .publish(&exchange, &[event("a.b", 1)], PublishOptions::default())
        .await
        .expect_err("no such exchange");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("404"), "got {err}");
    // The transport still works afterwards.
    let long = "x".repeat(300);
    let err = t
        .publish(&long, &[event("a.b", 1)], PublishOptions::default())
        .await
        .expect_err("too long");
    assert!(matches!(err, Error::Config(_)), "got {err}");
    assert!(t.is_connected());
    t.close().await.unwrap();
    assert!(matches!(
        t.publish(&exchange, &[event("a.b", 1)], PublishOptions::default())
            .await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_urls_are_tried_in_turn() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    // The first "node" refuses connections; the transport moves on to the next URL.
    let urls = vec![
        "amqp://guest:guest@127.0.0.1:1/%2f".to_string(),
        common::amqp_url(),
    ];
    let t = RabbitTransport::connect(RabbitConfig::new(urls, "rt-cluster"))
        .await
        .expect("connects through the second URL");
    assert!(t.is_connected());
    t.close().await.unwrap();
    assert!(!t.is_connected());
    // No URL answers: a clear error after the outage timeout, naming no password.
    let mut cfg = RabbitConfig::new(
        vec!["amqp://guest:s3cret@127.0.0.1:1/%2f".into()],
        "rt-down",
    );
    cfg.outage_timeout = Duration::from_millis(500);
    let err = match RabbitTransport::connect(cfg).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Unavailable { .. }), "got {err}");
    assert!(
        !err.to_string().contains("s3cret"),
        "password leaked: {err}"
    );
}

/// Publish calls take the pool's channels in turn (two by default). A call made after another
/// returned still lands after it, and one call's batch stays in order, even with other calls
/// publishing at the same time on the other channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_spread_over_the_channel_pool_keep_their_order() {
    let service = format!(
        "rt-order-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let t = open(&service).await;
    let pool = RabbitConfig::new(vec![common::amqp_url()], &service).publish_channels;
    let (exchange, prefix) = names("order");
    let q = QueueSpec::new(format!("{prefix}.a"), "o.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.unwrap();
    for n in 0..100 {
        t.publish(&exchange, &[event("o.seq", n)], PublishOptions::default())
            .await
            .unwrap();
    }
    let batch: Vec<Envelope> = (1000..1100).map(|n| event("o.batch", n)).collect();
    let singles = (2000..2100).map(|n| {
        let t = t.clone();
        let exchange = exchange.clone();
        async move {
            t.publish(
                &exchange,
                &[event("o.single", n)],
                PublishOptions::default(),
            )
            .await
        }
    });
    let (batched, singles) = tokio::join!(
        t.publish(&exchange, &batch, PublishOptions::default()),
        futures::future::join_all(singles)
    );
    batched.unwrap();
    singles.into_iter().for_each(|r| r.unwrap());
    assert_eq!(
        confirm_channels_of(&format!("{service} herald publisher")),
        pool,
        "the broker sees every channel of the pool in confirm mode"
    );

    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 50 }, cancel.clone())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 300 {
        let d = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("every message arrives")
            .expect("stream open");
        let v: serde_json::Value = serde_json::from_slice(&d.envelope.body).unwrap();
        seen.push(v["n"].as_u64().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(
        seen[..100],
        (0..100).collect::<Vec<u64>>()[..],
        "sequential calls in order"
    );
    let batch_order: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|n| (1000..1100).contains(n))
        .collect();
    assert_eq!(
        batch_order,
        (1000..1100).collect::<Vec<u64>>(),
        "a batch in order"
    );
    let mut rest: Vec<u64> = seen[100..].iter().copied().filter(|n| *n >= 2000).collect();
    rest.sort_unstable();
    assert_eq!(
        rest,
        (2000..2100).collect::<Vec<u64>>(),
        "every concurrent call arrived once"
    );
    cancel.cancel();
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

/// A consumer whose prefetch window is small gets its acks sent at once: the broker delivers
/// nothing more until they arrive, so holding them for the flush interval would hold up the
/// consumer too (with prefetch 1, one message per interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_do_not_wait_when_the_prefetch_window_is_half_used() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    let mut cfg = RabbitConfig::new(vec![common::amqp_url()], "rt-small-prefetch");
    cfg.ack_flush_interval = Duration::from_secs(30);
    let t = RabbitTransport::connect(cfg).await.expect("connect");
    let (exchange, prefix) = names("prefetch");
    let q = QueueSpec::new(format!("{prefix}.a"), "p.#");
    let mut topo = Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.unwrap();
    let batch: Vec<Envelope> = (0..20).map(|n| event("p.x", n)).collect();
    t.publish(&exchange, &batch, PublishOptions::default())
        .await
        .unwrap();
    for prefetch in [1, 4] {
        let cancel = CancellationToken::new();
        let mut rx = t
            .consume(&q, ConsumeOptions { prefetch }, cancel.clone())
            .await
            .unwrap();
        for _ in 0..10 {
            let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("prefetch {prefetch}: the next delivery came, so the acks went out")
                })
                .expect("stream open");
            d.ack().await.unwrap();
        }
        cancel.cancel();
    }
    t.close().await.unwrap();
    common::delete_queue_set(&exchange, &q).await;
}

/// How many channels in confirm mode the broker lists on the connection named `name`.
fn confirm_channels_of(name: &str) -> usize {
    let list = |args: &[&str]| {
        let out = std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let connections = list(&["list_connections", "pid", "client_properties", "-q"]);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pid = connections
        .lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{connections}"))
        .to_string();
    list(&["list_channels", "connection", "confirm", "-q"])
        .lines()
        .filter(|l| l.split('\t').collect::<Vec<_>>() == [pid.as_str(), "true"])
        .count()
}
