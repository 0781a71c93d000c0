//! The transport conformance suite: one set of behaviours every transport must show.
//!
//! A transport's test file provides a [`Harness`] and expands [`conformance_tests!`](crate::conformance_tests):
//!
//! ```text
//! struct Mem;
//! #[async_trait::async_trait]
//! impl herald::conformance::Harness for Mem { /* ... */ }
//! herald::conformance_tests!(Mem);
//! ```
//!
//! Each case uses its own exchange and queue names, so cases can share one real broker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::envelope::{header, Envelope};
use crate::error::Error;
use crate::event::Event;
use crate::topology::{QueueSpec, Topology};
use crate::transport::{
    ConsumeOptions, Deliveries, Delivery, Failure, Outcome, PublishOptions, Transport,
};

/// How a test reaches a transport.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Open a handle on this harness's broker. Opening again simulates a restarted process: the
    /// new handle must see the same durable state.
    async fn open(&self) -> Arc<dyn Transport>;

    /// How long until a consumer that vanished without settling gets its messages redelivered
    /// (lease expiry, connection loss detection).
    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// Unique names for one test case.
pub struct Names {
    /// The exchange.
    pub exchange: String,
    prefix: String,
    id: String,
}

impl Names {
    /// Fresh names.
    pub fn new(case: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Names {
            exchange: format!("conf.{case}.{}", &id[..8]),
            prefix: format!("conf-{case}-{}", &id[..8]),
            id: id[..8].to_string(),
        }
    }

    /// A service name unique to this case: on a real broker queues are global, and a bus
    /// names its queues `<service>.<event>`.
    pub fn service(&self, name: &str) -> String {
        format!("{name}-{}", self.id)
    }
    /// A queue name in this case's namespace.
    pub fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

fn msg(key: &str, n: u32) -> Envelope {
    let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap_or_default();
    Envelope::new(key, 1, key, "conformance", Bytes::from(body))
}

fn n_of(e: &Envelope) -> u32 {
    serde_json::from_slice::<serde_json::Value>(&e.body)
        .ok()
        .and_then(|v| v["n"].as_u64())
        .unwrap_or(u64::MAX) as u32
}

async fn declare(t: &dyn Transport, names: &Names, queues: Vec<QueueSpec>) {
    let mut topo = Topology::new(&names.exchange);
    for q in queues {
        topo.add_queue(q);
    }
    t.apply_topology(&topo).await.expect("apply topology");
}

async fn recv(rx: &mut Deliveries, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

async fn publish(t: &dyn Transport, names: &Names, batch: &[Envelope]) {
    t.publish(&names.exchange, batch, PublishOptions::default())
        .await
        .expect("publish");
}

const WAIT: Duration = Duration::from_secs(10);

/// Topic routing: each queue gets what its bindings match; every matching queue gets a copy.
pub async fn routing_and_fanout(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("route");
    let a = QueueSpec::new(n.queue("a"), "order.created");
    let mut b = QueueSpec::new(n.queue("b"), "order.*");
    b.bindings.push("invoice.#".into());
    declare(&*t, &n, vec![a.clone(), b.clone()]).await;
    publish(
        &*t,
        &n,
        &[
            msg("order.created", 1),
            msg("order.cancelled", 2),
            msg("invoice.paid.late", 3),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let mut ra = t
        .consume(&a, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let mut rb = t
        .consume(&b, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut ra, WAIT).await.expect("a gets order.created");
    assert_eq!(n_of(&d.envelope), 1);
    d.ack().await.unwrap();
    let mut got_b = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut rb, WAIT).await.expect("b gets three");
        got_b.push(n_of(&d.envelope));
        d.ack().await.unwrap();
    }
    got_b.sort();
    assert_eq!(got_b, vec![1, 2, 3]);
    assert!(
        recv(&mut ra, Duration::from_millis(300)).await.is_none(),
        "a got an extra message"
    );
    cancel.cancel();
    t.close().await.unwrap();
}

/// A publish no queue would receive is an error, unless the caller opts in.
pub async fn unroutable_is_an_error(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("unroutable");
    declare(&*t, &n, vec![QueueSpec::new(n.queue("a"), "a.b")]).await;
    let err = t
        .publish(
            &n.exchange,
            &[msg("nobody.listens", 1)],
            PublishOptions::default(),
        )
        .await
        .expect_err("unroutable publish must fail");
    assert!(matches!(err, Error::Unroutable { .. }), "got {err}");
    t.publish(
        &n.exchange,
        &[msg("nobody.listens", 1)],
        PublishOptions {
            require_route: false,
        },
    )
    .await
    .expect("explicit opt-in publishes");
    t.close().await.unwrap();
}

/// The envelope arrives as published: id, attributes, headers, body.
pub async fn envelope_round_trip(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("wire");
    let q = QueueSpec::new(n.queue("a"), "wire.test");
    declare(&*t, &n, vec![q.clone()]).await;
    let mut e = msg("wire.test", 7);
    e.correlation_id = Some("corr-1".into());
    e.causation_id = Some("cause-1".into());
    e.subject = Some("order-42".into());
    e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    e.headers.insert("x-tenant".into(), "acme".into());
    publish(&*t, &n, std::slice::from_ref(&e)).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut rx, WAIT).await.expect("delivery");
    let got = &d.envelope;
    assert_eq!(got.id, e.id);
    assert_eq!(got.event_type, e.event_type);
    assert_eq!(got.source, e.source);
    assert_eq!(got.routing_key, e.routing_key);
    assert_eq!(got.correlation_id, e.correlation_id);
    assert_eq!(got.causation_id, e.causation_id);
    assert_eq!(got.subject, e.subject);
    assert_eq!(got.traceparent, e.traceparent);
    assert_eq!(got.time.timestamp_millis(), e.time.timestamp_millis());
    assert_eq!(
        got.headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(got.body, e.body);
    assert_eq!(got.attempt, 1);
    assert!(!d.redelivered);
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
}

/// Consumers on one queue share the work: every message goes to exactly one of them.
pub async fn competing_consumers(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("compete");
    let q = QueueSpec::new(n.queue("work"), "job.#");
    declare(&*t, &n, vec![q.clone()]).await;
    let total = 200u32;
    let batch: Vec<Envelope> = (0..total).map(|i| msg("job.run", i)).collect();
    publish(&*t, &n, &batch).await;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut rx = t
            .consume(&q, ConsumeOptions { prefetch: 4 }, cancel.clone())
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(d) = recv(&mut rx, Duration::from_secs(2)).await {
                seen.push(n_of(&d.envelope));
                tokio::time::sleep(Duration::from_millis(2)).await;
                d.ack().await.unwrap();
            }
            seen
        }));
    }
    let mut all = Vec::new();
    let mut per = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        per.push(seen.len());
        all.extend(seen);
    }
    cancel.cancel();
    let unique: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        total as usize,
        "each message exactly once (per consumer: {per:?})"
    );
    assert_eq!(unique.len(), total as usize);
    assert!(
        per.iter().all(|&c| c > 0),
        "both consumers got work: {per:?}"
    );
    t.close().await.unwrap();
}

/// One consumer with prefetch 1 sees a queue's messages in publish order.
pub async fn fifo_order_for_one_consumer(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("fifo");
    let q = QueueSpec::new(n.queue("a"), "seq.#");
    declare(&*t, &n, vec![q.clone()]).await;
    for chunk in (0..100u32).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<Envelope> = chunk.iter().map(|&i| msg("seq.x", i)).collect();
        publish(&*t, &n, &batch).await;
    }
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 1 }, cancel.clone())
        .await
        .unwrap();
    for expect in 0..100u32 {
        let d = recv(&mut rx, WAIT).await.expect("delivery");
        assert_eq!(n_of(&d.envelope), expect);
        d.ack().await.unwrap();
    }
    cancel.cancel();
    t.close().await.unwrap();
}

/// An acked message is gone: a restarted consumer does not see it again.
pub async fn ack_is_final(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("ack");
    let q = QueueSpec::new(n.queue("a"), "a.b");
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("a.b", 1)]).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    recv(&mut rx, WAIT)
        .await
        .expect("delivery")
        .ack()
        .await
        .unwrap();
    cancel.cancel();
    drop(rx);
    t.close().await.unwrap();
    let t = h.open().await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    assert!(
        recv(&mut rx, Duration::from_millis(500)).await.is_none(),
        "acked message came back"
    );
    cancel.cancel();
    t.close().await.unwrap();
}

/// Published messages survive the publisher's handle closing and a new handle opening.
pub async fn durable_across_reopen(h: &dyn Harness) {
    let n = Names::new("durable");
    let q = QueueSpec::new(n.queue("a"), "d.#");
    {
        let t = h.open().await;
        declare(&*t, &n, vec![q.clone()]).await;
        let batch: Vec<Envelope> = (0..20).map(|i| msg("d.x", i)).collect();
        publish(&*t, &n, &batch).await;
        t.close().await.unwrap();
    }
    let t = h.open().await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 20 {
        let d = recv(&mut rx, WAIT).await.expect("all 20 survive");
        got.insert(n_of(&d.envelope));
        d.ack().await.unwrap();
    }
    cancel.cancel();
    t.close().await.unwrap();
}

/// A consumer that goes away without settling (crash, dropped channel) gets its messages
/// redelivered to the next consumer, marked redelivered.
pub async fn unsettled_messages_come_back(h: &dyn Harness) {
    let n = Names::new("crash");
    let q = QueueSpec::new(n.queue("a"), "c.#");
    let t = h.open().await;
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("c.x", 1), msg("c.x", 2)]).await;
    {
        // A "process" that takes both and dies: its handle is dropped without closing.
        let crashing = h.open().await;
        let cancel = CancellationToken::new();
        let mut rx = crashing
            .consume(&q, ConsumeOptions::default(), cancel.clone())
            .await
            .unwrap();
        let a = recv(&mut rx, WAIT).await.expect("first");
        let b = recv(&mut rx, WAIT).await.expect("second");
        std::mem::forget(a);
        std::mem::forget(b);
        cancel.cancel();
        drop(rx);
        drop(crashing);
    }
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let deadline = h.redelivery_after() + WAIT;
    let mut got = HashSet::new();
    while got.len() < 2 {
        let d = recv(&mut rx, deadline)
            .await
            .expect("unsettled messages are redelivered");
        got.insert(n_of(&d.envelope));
        d.ack().await.unwrap();
    }
    cancel.cancel();
    t.close().await.unwrap();
}

/// Retry redelivers after the delay, with the attempt counted and the failure recorded.
pub async fn delayed_retry(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("retry");
    let mut q = QueueSpec::new(n.queue("a"), "r.#");
    q.retry_delays = vec![Duration::from_millis(300), Duration::from_secs(1)];
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("r.x", 1)]).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut rx, WAIT).await.expect("first delivery");
    assert_eq!(d.envelope.attempt, 1);
    let failure = Failure::now(&d.envelope, &q.name, "handler", "boom");
    let started = Instant::now();
    d.settle(Outcome::Retry {
        delay: Duration::from_millis(300),
        failure,
    })
    .await
    .unwrap();
    let d = recv(&mut rx, WAIT).await.expect("redelivery");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "redelivered too early: {waited:?}"
    );
    assert_eq!(d.envelope.attempt, 2);
    assert_eq!(n_of(&d.envelope), 1);
    assert_eq!(d.envelope.last_error(), Some("boom"));
    assert_eq!(
        d.envelope
            .headers
            .get(header::ORIGINAL_QUEUE)
            .map(String::as_str),
        Some(q.name.as_str())
    );
    assert!(d.envelope.headers.contains_key(header::FIRST_FAILURE));
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
}

/// Release gives a message back without counting an attempt.
pub async fn release_does_not_count(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("release");
    let q = QueueSpec::new(n.queue("a"), "rel.#");
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("rel.x", 1)]).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut rx, WAIT).await.expect("delivery");
    d.settle(Outcome::Release {
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let d = recv(&mut rx, WAIT)
        .await
        .expect("released message comes back");
    assert_eq!(d.envelope.attempt, 1);
    d.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
}

/// Dead letters keep the failure metadata and can be listed, replayed and purged.
pub async fn dead_letters_list_replay_purge(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("dlq");
    let q = QueueSpec::new(n.queue("a"), "dl.#");
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("dl.x", 1), msg("dl.x", 2), msg("dl.x", 3)]).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut rx, WAIT).await.expect("delivery");
        ids.push((n_of(&d.envelope), d.envelope.id.clone()));
        let failure = Failure::now(
            &d.envelope,
            &q.name,
            "decode",
            format!("bad body {}", n_of(&d.envelope)),
        );
        d.settle(Outcome::DeadLetter(failure)).await.unwrap();
    }
    ids.sort();
    let mut listed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while listed.len() < 3 && Instant::now() < deadline {
        listed = t.dead_letters(&q.name, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 3, "three dead letters");
    for dl in &listed {
        assert_eq!(dl.queue, q.name);
        assert!(
            dl.error().starts_with("bad body"),
            "error kept: {:?}",
            dl.envelope.headers
        );
        assert_eq!(
            dl.envelope
                .headers
                .get(header::ERROR_KIND)
                .map(String::as_str),
            Some("decode")
        );
        assert_eq!(
            dl.envelope
                .headers
                .get(header::ORIGINAL_ROUTING_KEY)
                .map(String::as_str),
            Some("dl.x")
        );
        assert!(dl.envelope.headers.contains_key(header::DEAD_LETTERED_AT));
    }
    // Nothing is redelivered while dead.
    assert!(recv(&mut rx, Duration::from_millis(300)).await.is_none());
    // Replay one by id: it comes back fresh.
    let one = vec![ids[0].1.clone()];
    assert_eq!(t.replay_dead_letters(&q.name, Some(&one)).await.unwrap(), 1);
    let d = recv(&mut rx, WAIT).await.expect("replayed message");
    assert_eq!(d.envelope.id, ids[0].1);
    assert_eq!(d.envelope.attempt, 1);
    assert!(d.envelope.last_error().is_none());
    d.ack().await.unwrap();
    // Purge one by id, then the rest.
    let two = vec![ids[1].1.clone()];
    assert_eq!(t.purge_dead_letters(&q.name, Some(&two)).await.unwrap(), 1);
    let left = t.dead_letters(&q.name, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope.id, ids[2].1);
    assert_eq!(t.purge_dead_letters(&q.name, None).await.unwrap(), 1);
    assert!(t.dead_letters(&q.name, 10).await.unwrap().is_empty());
    cancel.cancel();
    t.close().await.unwrap();
}

/// Higher priority first, on a queue declared with a max priority.
pub async fn priority_order(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("prio");
    let mut q = QueueSpec::new(n.queue("a"), "p.#");
    q.max_priority = Some(9);
    declare(&*t, &n, vec![q.clone()]).await;
    let mut low = msg("p.x", 1);
    low.priority = 1;
    let mut high = msg("p.x", 2);
    high.priority = 8;
    publish(&*t, &n, &[low]).await;
    publish(&*t, &n, &[high]).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 1 }, cancel.clone())
        .await
        .unwrap();
    let first = recv(&mut rx, WAIT).await.expect("first");
    assert_eq!(
        n_of(&first.envelope),
        2,
        "the high-priority message comes first"
    );
    first.ack().await.unwrap();
    let second = recv(&mut rx, WAIT).await.expect("second");
    assert_eq!(n_of(&second.envelope), 1);
    second.ack().await.unwrap();
    cancel.cancel();
    t.close().await.unwrap();
}

/// A message whose TTL passes before delivery is dead-lettered as expired, never delivered.
pub async fn expired_messages_are_dead_lettered(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("ttl");
    let q = QueueSpec::new(n.queue("a"), "t.#");
    declare(&*t, &n, vec![q.clone()]).await;
    let mut short = msg("t.x", 1);
    short.ttl = Some(Duration::from_millis(100));
    publish(&*t, &n, &[short, msg("t.x", 2)]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut rx, WAIT).await.expect("the live message");
    assert_eq!(
        n_of(&d.envelope),
        2,
        "the expired message must not be delivered"
    );
    d.ack().await.unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + WAIT;
    while dead.is_empty() && Instant::now() < deadline {
        dead = t.dead_letters(&q.name, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "the expired message is in the dead letters");
    assert_eq!(n_of(&dead[0].envelope), 1);
    assert_eq!(
        dead[0]
            .envelope
            .headers
            .get(header::ERROR_KIND)
            .map(String::as_str),
        Some("expired")
    );
    cancel.cancel();
    t.close().await.unwrap();
}

/// A full queue refuses a publish instead of dropping something silently.
pub async fn full_queue_rejects_publish(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("full");
    let mut q = QueueSpec::new(n.queue("a"), "f.#");
    q.max_length = Some(2);
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("f.x", 1)]).await;
    publish(&*t, &n, &[msg("f.x", 2)]).await;
    let err = t
        .publish(&n.exchange, &[msg("f.x", 3)], PublishOptions::default())
        .await
        .expect_err("third publish must be refused");
    assert!(matches!(err, Error::Rejected(_)), "got {err}");
    t.close().await.unwrap();
}

/// Cancelling a consumer ends its stream promptly; what it had not settled is not lost.
pub async fn cancel_stops_and_keeps_messages(h: &dyn Harness) {
    let t = h.open().await;
    let n = Names::new("cancel");
    let q = QueueSpec::new(n.queue("a"), "k.#");
    declare(&*t, &n, vec![q.clone()]).await;
    let batch: Vec<Envelope> = (0..10).map(|i| msg("k.x", i)).collect();
    publish(&*t, &n, &batch).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 3 }, cancel.clone())
        .await
        .unwrap();
    let first = recv(&mut rx, WAIT).await.expect("delivery");
    let first_n = n_of(&first.envelope);
    first.ack().await.unwrap();
    cancel.cancel();
    // Drain what was buffered; release it as the bus does on shutdown.
    let stop = Instant::now();
    while let Some(d) = recv(&mut rx, WAIT).await {
        d.settle(Outcome::Release {
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    }
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "cancel ends the stream"
    );
    drop(rx);
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 9 {
        let d = recv(&mut rx, h.redelivery_after() + WAIT)
            .await
            .expect("the other nine remain");
        got.insert(n_of(&d.envelope));
        d.ack().await.unwrap();
    }
    assert!(!got.contains(&first_n));
    cancel.cancel();
    t.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bus-level cases: the whole pipeline (decode, retry, dead letters, panics, timeouts, shutdown)
// over the transport.

mod bus_support {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Ping {
        pub n: u32,
    }

    impl crate::Event for Ping {
        const NAME: &'static str = "conformance.ping";
        const VERSION: u32 = 1;
        const ROUTING_KEY: &'static str = "conformance.ping";
        fn descriptor() -> crate::EventDescriptor {
            crate::EventDescriptor {
                name: Self::NAME,
                version: 1,
                routing_key: Self::ROUTING_KEY,
                type_name: "Ping",
                publisher: None,
                consumers: &[],
                description: "",
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Pong {
        pub n: u32,
    }

    impl crate::Event for Pong {
        const NAME: &'static str = "conformance.pong";
        const VERSION: u32 = 1;
        const ROUTING_KEY: &'static str = "conformance.pong";
        fn descriptor() -> crate::EventDescriptor {
            crate::EventDescriptor {
                name: Self::NAME,
                version: 1,
                routing_key: Self::ROUTING_KEY,
                type_name: "Pong",
                publisher: None,
                consumers: &[],
                description: "",
            }
        }
    }
}

use self::bus_support::{Ping, Pong};
use crate::middleware::{HandlerError, RetryPolicy};
use crate::{Bus, Context, SubscribeOptions};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex as StdMutex;

async fn bus(h: &dyn Harness, n: &Names, service: &str) -> Bus {
    Bus::builder()
        .transport(h.open().await)
        .exchange(&n.exchange)
        .service(n.service(service))
        .build()
        .await
        .expect("build bus")
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dead_letters_of(
    t: &dyn Transport,
    queue: &str,
    want: usize,
) -> Vec<crate::transport::DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dl = t.dead_letters(queue, 100).await.expect("read dead letters");
        if dl.len() >= want || Instant::now() > deadline {
            return dl;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        immediate: 1,
        jitter: 0.0,
        ..RetryPolicy::exponential(max_attempts, Duration::from_millis(50))
    }
}

/// Different services each get every event; instances of one service compete.
pub async fn bus_fan_out_and_compete(h: &dyn Harness) {
    let n = Names::new("bus-fanout");
    let seen_a = Arc::new(StdMutex::new(Vec::new()));
    let seen_b = Arc::new(StdMutex::new(Vec::new()));
    let mut buses = Vec::new();
    for (service, seen) in [("svc-a", &seen_a), ("svc-a", &seen_a), ("svc-b", &seen_b)] {
        let b = bus(h, &n, service).await;
        let seen = seen.clone();
        b.subscribe(move |p: Ping| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(p.n);
            }
        })
        .unwrap();
        b.start().await.unwrap();
        buses.push(b);
    }
    let publisher = bus(h, &n, "publisher").await;
    for i in 0..50 {
        publisher.publish(&Ping { n: i }).await.unwrap();
    }
    wait_until("both services got all 50", || {
        seen_a.lock().unwrap().len() >= 50 && seen_b.lock().unwrap().len() >= 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = seen_a.lock().unwrap().clone();
    a.sort();
    assert_eq!(
        a,
        (0..50).collect::<Vec<_>>(),
        "svc-a instances share the work, no duplicates"
    );
    assert_eq!(seen_b.lock().unwrap().len(), 50);
    for b in buses {
        b.shutdown().await.unwrap();
    }
    publisher.shutdown().await.unwrap();
}

/// A failing handler is retried (immediately, then with delay) and dead-lettered after
/// `max_attempts` deliveries with the failure metadata.
pub async fn bus_retries_then_dead_letters(h: &dyn Harness) {
    let n = Names::new("bus-retry");
    let b = bus(h, &n, "svc").await;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    b.subscribe_with(
        move |_: Ping, ctx: Context| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<(), _>(HandlerError::transient(format!(
                    "db down on attempt {}",
                    ctx.attempt()
                )))
            }
        },
        SubscribeOptions::new().retry(fast_retry(3)),
    )
    .unwrap();
    b.start().await.unwrap();
    b.publish(&Ping { n: 1 }).await.unwrap();
    let queue = format!("{}.{}", n.service("svc"), Ping::ROUTING_KEY);
    let dead = dead_letters_of(&**b.transport(), &queue, 1).await;
    assert_eq!(dead.len(), 1, "dead-lettered once");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "3 deliveries x (1 call + 1 immediate retry)"
    );
    let headers = &dead[0].envelope.headers;
    assert!(
        dead[0].error().contains("gave up after 3 attempts"),
        "{}",
        dead[0].error()
    );
    assert!(dead[0].error().contains("attempt 3"), "{}", dead[0].error());
    assert_eq!(
        headers.get(header::ERROR_KIND).map(String::as_str),
        Some("handler")
    );
    assert_eq!(headers.get(header::ORIGINAL_QUEUE), Some(&queue));
    assert!(
        headers.contains_key(header::FIRST_FAILURE) && headers.contains_key(header::LAST_FAILURE)
    );
    assert!(
        headers[header::FIRST_FAILURE] < headers[header::LAST_FAILURE],
        "first failure earlier than last"
    );
    let m = b.metrics();
    assert_eq!((m.retried, m.dead_lettered, m.handled), (2, 1, 0));
    b.shutdown().await.unwrap();
}

/// An undecodable body goes straight to the dead letters with the reason; the handler never
/// sees it and other messages flow on.
pub async fn bus_poison_message_is_dead_lettered_without_retries(h: &dyn Harness) {
    let n = Names::new("bus-poison");
    let b = bus(h, &n, "svc").await;
    let handled = Arc::new(AtomicU32::new(0));
    let c = handled.clone();
    b.subscribe(move |_: Ping| {
        c.fetch_add(1, Ordering::SeqCst);
        async {}
    })
    .unwrap();
    b.start().await.unwrap();
    let poison = Envelope::new(
        Ping::NAME,
        1,
        Ping::ROUTING_KEY,
        "evil",
        Bytes::from_static(b"{\"n\": \"not a number\"}"),
    );
    let garbage = Envelope::new(
        Ping::NAME,
        1,
        Ping::ROUTING_KEY,
        "evil",
        Bytes::from_static(b"\xff\xfe not json"),
    );
    b.publisher()
        .publish_envelopes(vec![poison, garbage], false)
        .await
        .unwrap();
    b.publish(&Ping { n: 2 }).await.unwrap();
    let queue = format!("{}.{}", n.service("svc"), Ping::ROUTING_KEY);
    let dead = dead_letters_of(&**b.transport(), &queue, 2).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(
            d.envelope
                .headers
                .get(header::ERROR_KIND)
                .map(String::as_str),
            Some("decode")
        );
        assert!(d.error().contains("could not decode"), "{}", d.error());
        assert_eq!(d.envelope.attempt, 1, "no retries for poison");
    }
    wait_until("the good message is handled", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    b.shutdown().await.unwrap();
}

/// A panicking handler fails its attempt; the consumer keeps going and the retry succeeds.
pub async fn bus_panic_is_a_failed_attempt(h: &dyn Harness) {
    let n = Names::new("bus-panic");
    let b = bus(h, &n, "svc").await;
    let done = Arc::new(StdMutex::new(Vec::new()));
    let d2 = done.clone();
    b.subscribe_with(
        move |p: Ping, ctx: Context| {
            let done = d2.clone();
            async move {
                if p.n == 0 && ctx.attempt() == 1 {
                    panic!("handler bug");
                }
                done.lock().unwrap().push((p.n, ctx.attempt()));
            }
        },
        SubscribeOptions::new()
            .retry(RetryPolicy {
                immediate: 0,
                ..fast_retry(3)
            })
            .concurrency(1),
    )
    .unwrap();
    b.start().await.unwrap();
    for i in 0..5 {
        b.publish(&Ping { n: i }).await.unwrap();
    }
    wait_until("all five handled", || done.lock().unwrap().len() == 5).await;
    let done = done.lock().unwrap().clone();
    assert!(
        done.contains(&(0, 2)),
        "the panicking message succeeded on attempt 2: {done:?}"
    );
    b.shutdown().await.unwrap();
}

/// A handler over its timeout fails the attempt and is retried.
pub async fn bus_timeout_is_a_failed_attempt(h: &dyn Harness) {
    let n = Names::new("bus-timeout");
    let b = bus(h, &n, "svc").await;
    let attempts = Arc::new(StdMutex::new(Vec::new()));
    let a2 = attempts.clone();
    b.subscribe_with(
        move |_: Ping, ctx: Context| {
            let attempts = a2.clone();
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                if ctx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        },
        SubscribeOptions::new()
            .timeout(Duration::from_millis(200))
            .retry(RetryPolicy {
                immediate: 0,
                ..fast_retry(3)
            }),
    )
    .unwrap();
    b.start().await.unwrap();
    b.publish(&Ping { n: 1 }).await.unwrap();
    wait_until("attempt 2 ran", || attempts.lock().unwrap().contains(&2)).await;
    wait_until("handled", || b.metrics().handled == 1).await;
    b.shutdown().await.unwrap();
}

/// Events published from a handler carry the flow: correlation id and causation id.
pub async fn bus_follow_ups_carry_correlation_and_causation(h: &dyn Harness) {
    let n = Names::new("bus-flow");
    let b = bus(h, &n, "svc").await;
    let seen = Arc::new(StdMutex::new(None));
    let s2 = seen.clone();
    b.subscribe(
        |p: Ping, ctx: Context| async move { ctx.publish(&Pong { n: p.n }).await.map(|_| ()) },
    )
    .unwrap();
    b.subscribe(move |_: Pong, ctx: Context| {
        let seen = s2.clone();
        async move {
            let e = ctx.envelope();
            *seen.lock().unwrap() = Some((
                e.correlation_id.clone(),
                e.causation_id.clone(),
                e.source.clone(),
            ));
        }
    })
    .unwrap();
    b.start().await.unwrap();
    let ping_id = b.publish(&Ping { n: 9 }).await.unwrap();
    wait_until("pong handled", || seen.lock().unwrap().is_some()).await;
    let (corr, cause, source) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        corr.as_deref(),
        Some(ping_id.as_str()),
        "the flow is correlated by the first event's id"
    );
    assert_eq!(
        cause.as_deref(),
        Some(ping_id.as_str()),
        "caused by the ping"
    );
    assert_eq!(source, n.service("svc"));
    b.shutdown().await.unwrap();
}

/// Publishing an event nobody subscribes to is an error the caller sees.
pub async fn bus_unroutable_publish_is_an_error(h: &dyn Harness) {
    let n = Names::new("bus-unroutable");
    let b = bus(h, &n, "svc").await;
    let err = b
        .publish(&Ping { n: 1 })
        .await
        .expect_err("no queue is bound");
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
    b.publish_with(
        &Ping { n: 1 },
        crate::MessageOptions::default().allow_unroutable(),
    )
    .await
    .expect("explicit opt-in");
    b.shutdown().await.unwrap();
}

/// Shutdown lets in-flight handlers finish and loses nothing: a new consumer gets the rest.
pub async fn bus_graceful_shutdown_loses_nothing(h: &dyn Harness) {
    let n = Names::new("bus-shutdown");
    let started = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(StdMutex::new(Vec::new()));
    let make = |started: Arc<AtomicU32>, finished: Arc<StdMutex<Vec<u32>>>, slow: bool| {
        move |p: Ping| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                finished.lock().unwrap().push(p.n);
            }
        }
    };
    let first = bus(h, &n, "svc").await;
    first
        .subscribe_with(
            make(started.clone(), finished.clone(), true),
            SubscribeOptions::new().concurrency(2).prefetch(4),
        )
        .unwrap();
    first.start().await.unwrap();
    for i in 0..10 {
        first.publish(&Ping { n: i }).await.unwrap();
    }
    wait_until("a handler started", || started.load(Ordering::SeqCst) >= 1).await;
    first.shutdown().await.unwrap();
    let after_first = finished.lock().unwrap().len();
    assert_eq!(
        after_first as u32,
        started.load(Ordering::SeqCst),
        "every handler that started also finished before shutdown returned"
    );
    assert!(after_first < 10, "shutdown stopped taking new messages");
    let second = bus(h, &n, "svc").await;
    second
        .subscribe(make(started.clone(), finished.clone(), false))
        .unwrap();
    second.start().await.unwrap();
    wait_until("all ten handled", || {
        let mut f = finished.lock().unwrap().clone();
        f.sort();
        f.dedup();
        f.len() == 10
    })
    .await;
    second.shutdown().await.unwrap();
}

/// A message in someone else's JSON shape, with no Herald headers, reaches a handler registered
/// for a routing-key pattern with a payload type of the user's choosing.
pub async fn bus_consumes_foreign_json_by_pattern(h: &dyn Harness) {
    #[derive(serde::Deserialize)]
    struct Legacy {
        event_type: String,
        data: serde_json::Value,
    }
    let n = Names::new("bus-foreign");
    let b = bus(h, &n, "svc").await;
    let got = Arc::new(StdMutex::new(Vec::new()));
    let g = got.clone();
    b.subscribe_pattern(
        "legacy",
        "course.*",
        move |e: Legacy| {
            g.lock()
                .unwrap()
                .push((e.event_type, e.data["user_id"].as_u64()));
            async {}
        },
        SubscribeOptions::new(),
    )
    .unwrap();
    b.start().await.unwrap();
    let body = br#"{"event_type": "course.enrolled", "timestamp": "2024-01-15T10:35:00", "data": {"user_id": 123}}"#;
    let foreign = Envelope::from_headers(
        Default::default(),
        "course.enrolled",
        Bytes::from_static(body),
    );
    b.publisher()
        .publish_envelopes(vec![foreign], false)
        .await
        .unwrap();
    wait_until("the foreign event is handled", || {
        !got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        got.lock().unwrap()[0],
        ("course.enrolled".to_string(), Some(123))
    );
    b.shutdown().await.unwrap();
}

/// A raw subscription takes every body as it arrived, JSON or not, and dead-letters nothing:
/// what observers (`herald tail`, the live stream) need.
pub async fn bus_raw_subscription_takes_any_body(h: &dyn Harness) {
    let n = Names::new("bus-raw");
    let b = bus(h, &n, "svc").await;
    let got = Arc::new(StdMutex::new(Vec::new()));
    let g = got.clone();
    b.subscribe_raw(
        "raw",
        "raw.*",
        move |ctx: Context| {
            g.lock().unwrap().push(ctx.envelope().body.clone());
            async {}
        },
        SubscribeOptions::new(),
    )
    .unwrap();
    b.start().await.unwrap();
    let bodies: [&'static [u8]; 3] = [
        b"\xff\xfe not JSON, not UTF-8",
        b"plain text",
        br#"{"n": 1}"#,
    ];
    let envelopes = bodies
        .iter()
        .map(|body| Envelope::new("raw.any", 1, "raw.any", "svc", Bytes::from_static(body)))
        .collect();
    b.publisher()
        .publish_envelopes(envelopes, false)
        .await
        .unwrap();
    wait_until("all three taken", || got.lock().unwrap().len() == 3).await;
    let mut seen = got.lock().unwrap().clone();
    seen.sort();
    let mut sent: Vec<Bytes> = bodies.iter().map(|b| Bytes::from_static(b)).collect();
    sent.sort();
    assert_eq!(seen, sent);
    let m = b.metrics();
    assert_eq!((m.handled, m.dead_lettered), (3, 0), "{m:?}");
    b.shutdown().await.unwrap();
}

/// Expand one `#[tokio::test]` per conformance case for a harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            routing_and_fanout, unroutable_is_an_error, envelope_round_trip, competing_consumers,
            fifo_order_for_one_consumer, ack_is_final, durable_across_reopen,
            unsettled_messages_come_back, delayed_retry, release_does_not_count,
            dead_letters_list_replay_purge, priority_order, expired_messages_are_dead_lettered,
            full_queue_rejects_publish, cancel_stops_and_keeps_messages,
            bus_fan_out_and_compete, bus_retries_then_dead_letters,
            bus_poison_message_is_dead_lettered_without_retries, bus_panic_is_a_failed_attempt,
            bus_timeout_is_a_failed_attempt, bus_follow_ups_carry_correlation_and_causation,
            bus_unroutable_publish_is_an_error, bus_graceful_shutdown_loses_nothing,
            bus_consumes_foreign_json_by_pattern, bus_raw_subscription_takes_any_body);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}
