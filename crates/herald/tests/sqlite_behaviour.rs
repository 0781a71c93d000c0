//! SQLite-specific behaviour beyond the conformance suite: lease renewal, queue stats,
//! auto-delete queues, all-or-nothing batches and opening through a URL.
use std::time::Duration;

use bytes::Bytes;
use herald::transport::sqlite::{SqliteOptions, SqliteTransport};
use herald::transport::{
    ConsumeOptions, DeadLetterAdmin, Outcome, PublishOptions, QueueStatistics,
};
use herald::{Envelope, Error, QueueSpec, Topology, Transport};
use tokio_util::sync::CancellationToken;

fn msg(key: &str, n: u32) -> Envelope {
    Envelope::new(key, 1, key, "test", Bytes::from(format!("{{\"n\":{n}}}")))
}

async fn open_with_lease(path: &std::path::Path, lease: Duration) -> SqliteTransport {
    let options = SqliteOptions {
        lease,
        ..SqliteOptions::default()
    };
    SqliteTransport::open_with(path, options)
        .await
        .expect("open")
}

async fn declare(t: &SqliteTransport, exchange: &str, queues: &[QueueSpec]) {
    let mut topo = Topology::new(exchange);
    for q in queues {
        topo.add_queue(q.clone());
    }
    t.apply_topology(&topo).await.expect("topology");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_keeps_its_messages_past_the_lease() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("h.db");
    let lease = Duration::from_millis(300);
    let a = open_with_lease(&path, lease).await;
    let b = open_with_lease(&path, lease).await;
    let q = QueueSpec::new("renew.q", "r.#");
    declare(&a, "ex", std::slice::from_ref(&q)).await;
    a.publish("ex", &[msg("r.x", 1)], PublishOptions::default())
        .await
        .expect("publish");
    let cancel = CancellationToken::new();
    let mut ra = a
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume a");
    let slow = tokio::time::timeout(Duration::from_secs(5), ra.recv())
        .await
        .expect("delivery")
        .expect("open");
    let mut rb = b
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume b");
    // A handler running four leases long: the message must not go to the other consumer.
    let stolen = tokio::time::timeout(lease * 4, rb.recv()).await;
    assert!(
        stolen.is_err(),
        "a message held by a live consumer was redelivered"
    );
    slow.ack().await.expect("ack");
    cancel.cancel();
    a.close().await.expect("close");
    b.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_fill_every_count() {
    let dir = tempfile::tempdir().expect("dir");
    let t = SqliteTransport::open(&dir.path().join("h.db"))
        .await
        .expect("open");
    let q = QueueSpec::new("stats.q", "s.#");
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    let batch: Vec<Envelope> = (0..5).map(|i| msg("s.x", i)).collect();
    t.publish("ex", &batch, PublishOptions::default())
        .await
        .expect("publish");
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 3 }, cancel.clone())
        .await
        .expect("consume");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("delivery")
                .expect("open"),
        );
    }
    // Stop claiming before settling frees prefetch.
    cancel.cancel();
    let d = held.pop().expect("one");
    let failure = herald::transport::Failure::now(&d.envelope, &q.name, "handler", "later");
    d.settle(Outcome::Retry {
        delay: Duration::from_secs(60),
        failure,
    })
    .await
    .expect("retry");
    let d = held.pop().expect("two");
    let failure = herald::transport::Failure::now(&d.envelope, &q.name, "decode", "bad");
    d.settle(Outcome::DeadLetter(failure))
        .await
        .expect("dead-letter");
    let stats = t.queue_stats().await.expect("stats");
    let s = stats.iter().find(|s| s.queue == q.name).expect("our queue");
    // 5 published: 1 held, 1 delayed, 1 dead, 2 ready (prefetch is full, so none more claimed).
    assert_eq!(s.in_flight, Some(1), "{s:?}");
    assert_eq!(s.delayed, Some(1), "{s:?}");
    assert_eq!(s.dead_letters, Some(1), "{s:?}");
    assert_eq!(s.ready, Some(2), "{s:?}");
    assert_eq!(s.consumers, Some(1), "{s:?}");
    held.pop().expect("three").ack().await.expect("ack");
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_when_its_consumer_stops() {
    let dir = tempfile::tempdir().expect("dir");
    let t = SqliteTransport::open(&dir.path().join("h.db"))
        .await
        .expect("open");
    let mut q = QueueSpec::new("tail.tmp", "t.#");
    q.auto_delete = true;
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    t.publish("ex", &[msg("t.x", 1)], PublishOptions::default())
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivery")
        .expect("open");
    d.ack().await.expect("ack");
    cancel.cancel();
    while rx.recv().await.is_some() {}
    drop(rx);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = t.queue_stats().await.expect("stats");
        if stats.iter().all(|s| s.queue != q.name) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auto-delete queue still there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its binding went with it.
    let err = t
        .publish("ex", &[msg("t.x", 2)], PublishOptions::default())
        .await
        .expect_err("no route left");
    assert!(matches!(err, Error::Unroutable { .. }), "got {err}");
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_store_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let t = SqliteTransport::open(&dir.path().join("h.db"))
        .await
        .expect("open");
    let mut q = QueueSpec::new("batch.q", "b.#");
    q.max_length = Some(3);
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    // One unroutable message sinks the whole batch.
    let err = t
        .publish(
            "ex",
            &[msg("b.x", 1), msg("nobody.home", 2)],
            PublishOptions::default(),
        )
        .await
        .expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "got {err}");
    // A batch that would overflow the queue is refused whole.
    let four: Vec<Envelope> = (0..4).map(|i| msg("b.x", i)).collect();
    let err = t
        .publish("ex", &four, PublishOptions::default())
        .await
        .expect_err("too many");
    assert!(matches!(err, Error::Rejected(_)), "got {err}");
    let stats = t.queue_stats().await.expect("stats");
    let s = stats.iter().find(|s| s.queue == q.name).expect("queue");
    assert_eq!(s.ready, Some(0), "nothing stored: {s:?}");
    t.publish("ex", &four[..3], PublishOptions::default())
        .await
        .expect("three fit");
    t.close().await.expect("close");
    assert!(matches!(
        t.publish("ex", &four[..1], PublishOptions::default()).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_opens_and_creates_parent_directories() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("nested").join("deeper").join("herald.db");
    let url = format!("sqlite://{}", path.display());
    let t = herald::transport::connect(&url, "svc")
        .await
        .expect("connect");
    assert_eq!(t.kind(), "sqlite");
    assert!(path.exists(), "the database file was created");
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_gives_messages_back_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    // A lease far longer than the test: only the drop can bring the messages back.
    let t = open_with_lease(&dir.path().join("h.db"), Duration::from_secs(300)).await;
    let q = QueueSpec::new("drop.q", "d.#");
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    let batch: Vec<Envelope> = (0..4).map(|i| msg("d.x", i)).collect();
    t.publish("ex", &batch, PublishOptions::default())
        .await
        .expect("publish");
    let keep_running = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 4 }, keep_running.clone())
        .await
        .expect("consume");
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivery")
        .expect("open");
    drop(first); // dropped unsettled
    drop(rx); // with three more buffered, and never cancelled
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    let mut got = std::collections::HashSet::new();
    while got.len() < 4 {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("messages come back without waiting for the lease")
            .expect("open");
        assert!(d.redelivered);
        got.insert(d.envelope.body.clone());
        d.ack().await.expect("ack");
    }
    cancel.cancel();
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_durability_opens_and_works() {
    use herald::transport::sqlite::Durability;
    let dir = tempfile::tempdir().expect("dir");
    let options = SqliteOptions {
        durability: Durability::PowerLoss,
        ..SqliteOptions::default()
    };
    let t = SqliteTransport::open_with(&dir.path().join("h.db"), options)
        .await
        .expect("open");
    let q = QueueSpec::new("full.q", "f.#");
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    t.publish("ex", &[msg("f.x", 1)], PublishOptions::default())
        .await
        .expect("publish");
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivery")
        .expect("open");
    d.ack().await.expect("ack");
    cancel.cancel();
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_goes_to_the_back() {
    let dir = tempfile::tempdir().expect("dir");
    let t = SqliteTransport::open(&dir.path().join("h.db"))
        .await
        .expect("open");
    let q = QueueSpec::new("order.q", "o.#");
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    let batch: Vec<Envelope> = (1..=3).map(|i| msg("o.x", i)).collect();
    t.publish("ex", &batch, PublishOptions::default())
        .await
        .expect("publish");
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions { prefetch: 1 }, cancel.clone())
        .await
        .expect("consume");
    let mut order = Vec::new();
    for i in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivery")
            .expect("open");
        order.push((
            String::from_utf8_lossy(&d.envelope.body).to_string(),
            d.envelope.attempt,
        ));
        if i == 0 {
            let failure = herald::transport::Failure::now(&d.envelope, &q.name, "handler", "again");
            d.settle(Outcome::Retry {
                delay: Duration::ZERO,
                failure,
            })
            .await
            .expect("retry");
        } else {
            d.ack().await.expect("ack");
        }
    }
    let bodies: Vec<(&str, u32)> = order.iter().map(|(b, a)| (b.as_str(), *a)).collect();
    assert_eq!(
        bodies,
        vec![
            ("{\"n\":1}", 1),
            ("{\"n\":2}", 1),
            ("{\"n\":3}", 1),
            ("{\"n\":1}", 2)
        ]
    );
    cancel.cancel();
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_ttl_dead_letters_as_expired() {
    let dir = tempfile::tempdir().expect("dir");
    let t = SqliteTransport::open(&dir.path().join("h.db"))
        .await
        .expect("open");
    let mut q = QueueSpec::new("ttl.q", "ttl.#");
    q.message_ttl = Some(Duration::from_millis(100));
    declare(&t, "ex", std::slice::from_ref(&q)).await;
    t.publish("ex", &[msg("ttl.x", 1)], PublishOptions::default())
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel = CancellationToken::new();
    let mut rx = t
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an expired message was delivered"
    );
    let dead = t.dead_letters(&q.name, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    let h = &dead[0].envelope.headers;
    assert_eq!(
        h.get(herald::envelope::header::ERROR_KIND)
            .map(String::as_str),
        Some("expired")
    );
    assert!(h.contains_key(herald::envelope::header::DEAD_LETTERED_AT));
    cancel.cancel();
    t.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_declared_later_by_another_connection_route_publishes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("h.db");
    let publisher = SqliteTransport::open(&path).await.expect("open publisher");
    let err = publisher
        .publish("ex", &[msg("late.x", 1)], PublishOptions::default())
        .await
        .expect_err("nothing bound yet");
    assert!(matches!(err, Error::Unroutable { .. }), "got {err}");
    // Another connection (as another process would) declares the queue afterwards.
    let consumer = SqliteTransport::open(&path).await.expect("open consumer");
    let q = QueueSpec::new("late.q", "late.#");
    declare(&consumer, "ex", std::slice::from_ref(&q)).await;
    publisher
        .publish("ex", &[msg("late.x", 2)], PublishOptions::default())
        .await
        .expect("the publisher sees the new binding");
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&q, ConsumeOptions::default(), cancel.clone())
        .await
        .expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivery")
        .expect("open");
    assert_eq!(&d.envelope.body[..], b"{\"n\":2}");
    d.ack().await.expect("ack");
    cancel.cancel();
    publisher.close().await.expect("close");
    consumer.close().await.expect("close");
}
