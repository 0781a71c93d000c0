//! Cases on the transport alone: routing, acceptance, settlement, redelivery, dead letters.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{declare, msg, n_of, publish, recv, skip_unless, Harness, Names, WAIT};
use crate::envelope::{header, Envelope};
use crate::error::Error;
use crate::topology::QueueSpec;
use crate::transport::{
    dead_letter_admin, queue_statistics, ConsumeOptions, Failure, Ordering, Outcome, PublishOptions,
};

/// What the capabilities promise is there: the admin traits they name are reachable, and the
/// core contract's options are accepted.
pub async fn capabilities_are_honest(h: &dyn Harness) {
    let t = h.open().await;
    let caps = t.capabilities();
    assert_eq!(
        caps.dead_letters,
        t.dead_letter_admin().is_some(),
        "Capabilities::dead_letters must match dead_letter_admin()"
    );
    assert_eq!(
        caps.queue_stats,
        t.queue_statistics().is_some(),
        "Capabilities::queue_stats must match queue_statistics()"
    );
    assert!(
        !caps.lists_all_queues || caps.queue_stats,
        "lists_all_queues without queue_stats says nothing"
    );
    assert!(!t.kind().is_empty());
    assert!(t.is_connected(), "a handle just opened is connected");
    t.close().await.unwrap();
    let err = t
        .publish("conf.closed", &[msg("a.b", 1)], PublishOptions::default())
        .await
        .expect_err("publishing after close is an error");
    assert!(matches!(err, Error::Closed), "got {err}");
}

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
    if !skip_unless(
        &*t,
        "fifo_order_for_one_consumer",
        t.capabilities().ordering == Ordering::Queue,
        "ordering per queue (Capabilities::ordering = Queue)",
    ) {
        return;
    }
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
    if !skip_unless(
        &*t,
        "delayed_retry",
        t.capabilities().delayed_redelivery,
        "delayed redelivery (Capabilities::delayed_redelivery)",
    ) {
        return;
    }
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
    if !skip_unless(
        &*t,
        "dead_letters_list_replay_purge",
        t.capabilities().dead_letters,
        "dead-letter administration (Capabilities::dead_letters)",
    ) {
        return;
    }
    let admin = dead_letter_admin(&*t).expect("capabilities say dead letters");
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
        listed = admin.dead_letters(&q.name, 10).await.unwrap();
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
    assert_eq!(
        admin
            .replay_dead_letters(&q.name, Some(&one))
            .await
            .unwrap(),
        1
    );
    let d = recv(&mut rx, WAIT).await.expect("replayed message");
    assert_eq!(d.envelope.id, ids[0].1);
    assert_eq!(d.envelope.attempt, 1);
    assert!(d.envelope.last_error().is_none());
    d.ack().await.unwrap();
    // Purge one by id, then the rest.
    let two = vec![ids[1].1.clone()];
    assert_eq!(
        admin.purge_dead_letters(&q.name, Some(&two)).await.unwrap(),
        1
    );
    let left = admin.dead_letters(&q.name, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope.id, ids[2].1);
    assert_eq!(admin.purge_dead_letters(&q.name, None).await.unwrap(), 1);
    assert!(admin.dead_letters(&q.name, 10).await.unwrap().is_empty());
    cancel.cancel();
    t.close().await.unwrap();
}

/// A replayed dead letter goes back to the queue it failed on, and only there: another queue
/// bound to the same key does not get a second copy.
pub async fn replay_reaches_only_its_queue(h: &dyn Harness) {
    let t = h.open().await;
    if !skip_unless(
        &*t,
        "replay_reaches_only_its_queue",
        t.capabilities().dead_letters,
        "dead-letter administration (Capabilities::dead_letters)",
    ) {
        return;
    }
    let n = Names::new("replay-one");
    let a = QueueSpec::new(n.queue("a"), "r.#");
    let b = QueueSpec::new(n.queue("b"), "r.*");
    declare(&*t, &n, vec![a.clone(), b.clone()]).await;
    publish(&*t, &n, &[msg("r.x", 1)]).await;
    let cancel = CancellationToken::new();
    let mut ra = t
        .consume(&a, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let mut rb = t
        .consume(&b, ConsumeOptions::default(), cancel.clone())
        .await
        .unwrap();
    let d = recv(&mut rb, WAIT).await.expect("b gets its copy");
    d.ack().await.unwrap();
    let d = recv(&mut ra, WAIT).await.expect("a gets its copy");
    let failure = Failure::now(&d.envelope, &a.name, "handler", "boom");
    d.settle(Outcome::DeadLetter(failure)).await.unwrap();
    let admin = dead_letter_admin(&*t).expect("dead letters");
    let deadline = Instant::now() + WAIT;
    while admin.dead_letters(&a.name, 10).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the dead letter never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin.replay_dead_letters(&a.name, None).await.unwrap(), 1);
    let again = recv(&mut ra, WAIT).await.expect("a gets the replay");
    assert_eq!(n_of(&again.envelope), 1);
    assert_eq!(again.envelope.attempt, 1);
    again.ack().await.unwrap();
    assert!(
        recv(&mut rb, Duration::from_millis(500)).await.is_none(),
        "b must not get the replay"
    );
    cancel.cancel();
    t.close().await.unwrap();
}

/// Queue statistics see a declared queue, what waits in it and its dead letters.
pub async fn queue_stats_count_what_waits(h: &dyn Harness) {
    let t = h.open().await;
    if !skip_unless(
        &*t,
        "queue_stats_count_what_waits",
        t.capabilities().queue_stats,
        "queue statistics (Capabilities::queue_stats)",
    ) {
        return;
    }
    let n = Names::new("stats");
    let q = QueueSpec::new(n.queue("a"), "s.#");
    declare(&*t, &n, vec![q.clone()]).await;
    publish(&*t, &n, &[msg("s.x", 1), msg("s.x", 2), msg("s.x", 3)]).await;
    let stats = queue_statistics(&*t).expect("stats");
    let deadline = Instant::now() + WAIT;
    loop {
        let all = stats.queue_stats().await.unwrap();
        let mine = all.iter().find(|s| s.queue == q.name);
        let mine = mine.expect("the declared queue is listed");
        if mine.ready == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three ready messages, got {mine:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.close().await.unwrap();
}

/// Higher priority first, on a queue declared with a max priority.
pub async fn priority_order(h: &dyn Harness) {
    let t = h.open().await;
    if !skip_unless(
        &*t,
        "priority_order",
        t.capabilities().priority,
        "priority queues (Capabilities::priority)",
    ) {
        return;
    }
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
    if !skip_unless(
        &*t,
        "expired_messages_are_dead_lettered",
        t.capabilities().message_ttl && t.capabilities().dead_letters,
        "message TTL and dead-letter administration (Capabilities::message_ttl, dead_letters)",
    ) {
        return;
    }
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
        dead = dead_letter_admin(&*t)
            .expect("dead letters")
            .dead_letters(&q.name, 10)
            .await
            .unwrap();
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
    if !skip_unless(
        &*t,
        "full_queue_rejects_publish",
        t.capabilities().max_length,
        "queue length limits (Capabilities::max_length)",
    ) {
        return;
    }
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
