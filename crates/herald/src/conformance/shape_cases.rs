//! Cases through the bus for the shapes a service's messaging takes beyond one queue per event:
//! typed request/reply, queues named by the user on several exchanges with several keys, a
//! linear retry schedule, order per key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use super::{bus, skip_unless, wait_until, Harness, Names, Ping, Pong};
use crate::error::Error;
use crate::middleware::RetryPolicy;
use crate::{
    ConsumerOptions, Context, HandlerError, MessageOptions, QueueOptions, RequestOptions,
    SubscribeOptions,
};

/// `Bus::request` gets the reply a handler sends with `Context::reply`, concurrent requests
/// each get their own, a responder's error fails the call, a request nobody receives is
/// unroutable, and one nobody answers times out.
pub async fn bus_request_reply(h: &dyn Harness) {
    let n = Names::new("bus-request");
    let responder = bus(h, &n, "doubler").await;
    responder
        .subscribe(|p: Ping, ctx: Context| async move {
            match p.n {
                0 => ctx.reply_error("zero cannot be doubled").await?,
                99 => {} // never answers
                n => ctx.reply(&Pong { n: n * 2 }).await?,
            }
            Ok::<(), HandlerError>(())
        })
        .unwrap();
    responder.start().await.unwrap();
    let requester = bus(h, &n, "asker").await;
    let pong: Pong = requester.request(&Ping { n: 21 }).await.unwrap();
    assert_eq!(pong, Pong { n: 42 });
    let calls = (1..=20).map(|i| {
        let r = requester.clone();
        async move { (i, r.request::<Ping, Pong>(&Ping { n: i }).await) }
    });
    for (i, reply) in futures::future::join_all(calls).await {
        assert_eq!(reply.unwrap(), Pong { n: i * 2 }, "request {i}");
    }
    let err = requester
        .request::<Ping, Pong>(&Ping { n: 0 })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RequestFailed(m) if m.contains("zero cannot be doubled")),
        "{err}"
    );
    let err = requester
        .request::<Pong, Pong>(&Pong { n: 1 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
    let started = Instant::now();
    let err = requester
        .request_with::<Ping, Pong>(
            &Ping { n: 99 },
            RequestOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

/// Queues the user names, bound with several keys, on two exchanges of one bus (reference
/// 001's `elasticsearch.sync`, `listing.status.changes` and `system.health`), with events
/// published to each exchange.
pub async fn bus_named_queues_on_two_exchanges(h: &dyn Harness) {
    let n = Names::new("bus-named");
    let b = bus(h, &n, "sync").await;
    let system = format!("{}.system", n.exchange);
    let seen: Arc<StdMutex<HashMap<&'static str, Vec<String>>>> = Arc::default();
    let record = |name: &'static str| {
        let seen = seen.clone();
        move |_: serde_json::Value, ctx: Context| {
            seen.lock()
                .unwrap()
                .entry(name)
                .or_default()
                .push(ctx.envelope().routing_key.clone());
            async {}
        }
    };
    let queue = |name: &str| QueueOptions::named(n.queue(name));
    b.subscribe_pattern(
        "sync",
        "listing.#",
        record("sync"),
        SubscribeOptions::new().queue(queue("search.sync")),
    )
    .unwrap();
    b.subscribe_pattern(
        "status",
        "listing.status.#",
        record("status"),
        SubscribeOptions::new().queue(
            queue("listing.status.changes")
                .bind("listing.status.#")
                .bind("listing.delete"),
        ),
    )
    .unwrap();
    b.subscribe_pattern(
        "health",
        "health.#",
        record("health"),
        SubscribeOptions::new().queue(queue("system.health").exchange(&system)),
    )
    .unwrap();
    b.start().await.unwrap();
    let publish = |key: &'static str, exchange: Option<&str>| {
        let b = b.clone();
        let exchange = exchange.map(str::to_string);
        async move {
            let e = crate::Envelope::new(key, 1, key, "admin", bytes::Bytes::from_static(b"{}"));
            let publisher = b.publisher();
            match exchange {
                Some(x) => publisher.publish_envelopes_to(&x, vec![e], false).await,
                None => publisher.publish_envelopes(vec![e], false).await,
            }
        }
    };
    publish("listing.insert", None).await.unwrap();
    publish("listing.status.active", None).await.unwrap();
    publish("listing.delete", None).await.unwrap();
    publish("health.search", Some(&system)).await.unwrap();
    let err = publish("health.search", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Unroutable { .. }),
        "not bound on the listings exchange: {err}"
    );
    let count = |name: &str| seen.lock().unwrap().get(name).map_or(0, Vec::len);
    wait_until("every queue got its messages", || {
        count("sync") == 3 && count("status") == 2 && count("health") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut status = seen.lock().unwrap()["status"].clone();
    status.sort();
    assert_eq!(status, vec!["listing.delete", "listing.status.active"]);
    assert_eq!((count("sync"), count("health")), (3, 1), "no extra copies");
    b.shutdown().await.unwrap();
}

/// A linear retry schedule: redeliveries after one step, then two, then the dead letters.
pub async fn bus_linear_retry_schedule(h: &dyn Harness) {
    let n = Names::new("bus-linear");
    let b = bus(h, &n, "svc").await;
    if !skip_unless(
        &**b.transport(),
        "bus_linear_retry_schedule",
        b.transport().capabilities().delayed_redelivery,
        "delayed_redelivery",
    ) {
        b.shutdown().await.unwrap();
        return;
    }
    let step = Duration::from_millis(300);
    let attempts: Arc<StdMutex<Vec<Instant>>> = Arc::default();
    let a = attempts.clone();
    b.subscribe_with(
        move |_: Ping| {
            a.lock().unwrap().push(Instant::now());
            async { Err::<(), _>(HandlerError::transient("still down")) }
        },
        SubscribeOptions::new().retry(RetryPolicy {
            immediate: 0,
            jitter: 0.0,
            ..RetryPolicy::linear(3, step)
        }),
    )
    .unwrap();
    b.start().await.unwrap();
    b.publish(&Ping { n: 1 }).await.unwrap();
    wait_until("dead-lettered after 3 attempts", || {
        b.metrics().dead_lettered == 1
    })
    .await;
    let at = attempts.lock().unwrap().clone();
    assert_eq!(at.len(), 3);
    let (first, second) = (at[1] - at[0], at[2] - at[1]);
    let slack = Duration::from_millis(20);
    assert!(first + slack >= step, "first gap {first:?} >= {step:?}");
    assert!(
        second + slack >= step * 2,
        "second gap {second:?} >= {:?}",
        step * 2
    );
    assert!(
        first < step * 2 + Duration::from_secs(2),
        "first gap {first:?}"
    );
    b.shutdown().await.unwrap();
}

/// Order per key with parallelism across keys: each subject's events in publish order while
/// other subjects' run at the same time.
pub async fn bus_order_per_key(h: &dyn Harness) {
    let n = Names::new("bus-order");
    let b = bus(h, &n, "svc").await;
    let seen: Arc<StdMutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (s, r, p) = (seen.clone(), running.clone(), peak.clone());
    b.subscribe_with(
        move |ping: Ping, ctx: Context| {
            let (s, r, p) = (s.clone(), r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Later events of a subject are quicker: without the order key they overtake.
                let pause = 20u64.saturating_sub(u64::from(ping.n % 4) * 6);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let subject = ctx.envelope().subject.clone().unwrap_or_default();
                s.lock()
                    .unwrap()
                    .entry(subject)
                    .or_default()
                    .push(ping.n % 4);
                r.fetch_sub(1, Ordering::SeqCst);
            }
        },
        SubscribeOptions::new().consumer(
            ConsumerOptions::new()
                .concurrency(6)
                .prefetch(32)
                .ordered_by_subject(),
        ),
    )
    .unwrap();
    b.start().await.unwrap();
    for step in 0..4u32 {
        for subject in 0..5u32 {
            b.publish_with(
                &Ping {
                    n: subject * 4 + step,
                },
                MessageOptions::default().subject(format!("s{subject}")),
            )
            .await
            .unwrap();
        }
    }
    wait_until("20 handled", || b.metrics().handled == 20).await;
    for (subject, steps) in seen.lock().unwrap().iter() {
        assert_eq!(steps, &vec![0, 1, 2, 3], "subject {subject} in order");
    }
    assert!(peak.load(Ordering::SeqCst) > 1, "subjects ran in parallel");
    b.shutdown().await.unwrap();
}
