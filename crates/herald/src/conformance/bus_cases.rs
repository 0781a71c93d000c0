//! Cases through the bus: the whole pipeline (decode, retry, dead letters, panics, timeouts,
//! shutdown) over the transport.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;

use super::{
    bus, dead_letters_of, fast_retry, skip_unless, wait_until, Harness, Names, Ping, Pong,
};
use crate::envelope::{header, Envelope};
use crate::error::Error;
use crate::event::Event;
use crate::middleware::{HandlerError, RetryPolicy};
use crate::{Context, SubscribeOptions};

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

/// A subscription asking for what the transport lacks (priority, a length limit) fails at
/// start with [`Error::Unsupported`], instead of running without it.
pub async fn bus_refuses_what_the_transport_lacks(h: &dyn Harness) {
    let n = Names::new("bus-lacks");
    let b = bus(h, &n, "svc").await;
    let caps = b.transport().capabilities();
    if caps.priority && caps.max_length {
        let _ = skip_unless(
            &**b.transport(),
            "bus_refuses_what_the_transport_lacks",
            false,
            "a transport lacking priority or max_length",
        );
        b.shutdown().await.unwrap();
        return;
    }
    let options = if !caps.priority {
        SubscribeOptions::new().max_priority(5)
    } else {
        SubscribeOptions::new().max_length(10)
    };
    b.subscribe_with(|_: Ping| async {}, options).unwrap();
    let err = b.start().await.expect_err("start must refuse");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    b.shutdown().await.unwrap();
}
