//! The pipeline as its users compose it, through a real bus (memory transport): the order
//! layers run in, bus-wide layers, the bus's default pipeline and configured retry policy, and
//! readiness (an open circuit breaker pausing consumption).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::middleware::{
    from_fn, CircuitBreakerConfig, CircuitBreakerLayer, Disposition, Message, Next, Pipeline,
    RetryPolicy,
};
use herald::transport::{dead_letter_admin, queue_statistics};
use herald::{Bus, Config, Event, HandlerError, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "job.started")]
struct JobStarted {
    n: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "job.failed")]
struct JobFailed {
    n: u32,
}

fn broker() -> String {
    format!("memory://pipeline-{}", uuid::Uuid::new_v4().simple())
}

async fn bus(broker: &str, service: &str) -> Bus {
    Bus::builder()
        .broker(broker)
        .service(service)
        .build()
        .await
        .unwrap()
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Trace = Arc<Mutex<Vec<String>>>;
/// (queue, the decision made inside the bus-wide layer).
type Decisions = Arc<Mutex<Vec<(String, Option<Disposition>)>>>;

/// A layer that writes `name` into the trace on the way in.
fn mark(name: &'static str, trace: Trace) -> impl herald::middleware::Layer {
    from_fn(move |msg: Message, next: Next| {
        trace.lock().unwrap().push(name.to_string());
        next.run(msg)
    })
}

#[tokio::test]
async fn layers_run_in_the_order_the_subscription_composed_them_inside_the_bus_layers() {
    let b = broker();
    let trace: Trace = Arc::default();
    let decisions: Decisions = Arc::default();
    let d = decisions.clone();
    let bus = Bus::builder()
        .broker(&b)
        .service("svc")
        .layer(mark("bus-outer", trace.clone()))
        .layer(from_fn(move |msg: Message, next: Next| {
            let d = d.clone();
            async move {
                let result = next.run(msg.clone()).await;
                // Outside the subscription's pipeline: the decision is already made.
                let disposition = result.as_ref().err().and_then(|e| e.disposition);
                d.lock().unwrap().push((msg.queue.to_string(), disposition));
                result
            }
        }))
        .build()
        .await
        .unwrap();
    let t = trace.clone();
    bus.subscribe_with(
        move |_: JobStarted| {
            t.lock().unwrap().push("handler".into());
            async { Ok::<(), HandlerError>(()) }
        },
        SubscribeOptions::new().pipeline(
            Pipeline::new()
                .layer(mark("first", trace.clone()))
                .layer(mark("second", trace.clone())),
        ),
    )
    .unwrap();
    bus.subscribe_with(
        |_: JobFailed| async { Err::<(), _>(HandlerError::permanent("cannot")) },
        SubscribeOptions::new(),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus.publish(&JobStarted { n: 1 }).await.unwrap();
    wait_until("the handler ran", || trace.lock().unwrap().len() == 4).await;
    assert_eq!(
        *trace.lock().unwrap(),
        vec!["bus-outer", "first", "second", "handler"]
    );
    bus.publish(&JobFailed { n: 1 }).await.unwrap();
    wait_until("both decisions seen", || {
        decisions.lock().unwrap().len() == 2
    })
    .await;
    let seen = decisions.lock().unwrap().clone();
    assert_eq!(seen[0], ("svc.job.started".to_string(), None));
    assert_eq!(
        seen[1],
        ("svc.job.failed".to_string(), Some(Disposition::DeadLetter)),
        "a bus-wide layer sees the standard stack's decision"
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_configured_retry_policy_is_the_standard_pipelines_default() {
    let mut config = Config {
        broker: broker(),
        service: "svc".into(),
        ..Config::default()
    };
    config.retry.max_attempts = 2;
    config.retry.immediate = 0;
    config.retry.backoff = "fixed".into();
    config.retry.initial_ms = 20;
    config.retry.jitter = 0.0;
    let bus = Bus::builder().config(config).build().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    bus.subscribe(move |_: JobStarted| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::transient("down")) }
    })
    .unwrap();
    bus.start().await.unwrap();
    // The retry queue levels come from the configured policy too.
    assert_eq!(
        bus.topology().queues[0].retry_delays,
        vec![Duration::from_millis(20)]
    );
    bus.publish(&JobStarted { n: 1 }).await.unwrap();
    let admin = dead_letter_admin(&**bus.transport()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = admin.dead_letters("svc.job.started", 10).await.unwrap();
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error().contains("gave up after 2 attempts"),
        "{}",
        dead[0].error()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no immediate re-calls");
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_circuit_breaker_stops_consumption_until_its_probe_succeeds() {
    let b = broker();
    let bus = bus(&b, "svc").await;
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig {
        failure_threshold: 2,
        open_for: Duration::from_millis(400),
    });
    let (h, c) = (healthy.clone(), calls.clone());
    bus.subscribe_with(
        move |_: JobStarted| {
            c.fetch_add(1, Ordering::SeqCst);
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::transient("dependency down"))
                }
            }
        },
        SubscribeOptions::new()
            .pipeline(
                Pipeline::standard()
                    .retry(RetryPolicy {
                        immediate: 0,
                        jitter: 0.0,
                        ..RetryPolicy::fixed(10, Duration::from_millis(10))
                    })
                    .wrap(breaker.clone()),
            )
            .concurrency(1)
            .prefetch(1),
    )
    .unwrap();
    bus.start().await.unwrap();
    for n in 0..5 {
        bus.publish(&JobStarted { n }).await.unwrap();
    }
    wait_until("the breaker opened", || {
        breaker.state() == herald::middleware::CircuitState::Open
    })
    .await;
    let at_open = calls.load(Ordering::SeqCst);
    assert_eq!(at_open, 2, "two failures open it");
    // While open, nothing is taken: the handler is not called and messages wait on the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), at_open);
    let stats = queue_statistics(&**bus.transport())
        .unwrap()
        .queue_stats()
        .await
        .unwrap();
    let q = stats.iter().find(|s| s.queue == "svc.job.started").unwrap();
    assert!(
        q.ready.unwrap_or(0) + q.delayed.unwrap_or(0) + q.in_flight.unwrap_or(0) == 5,
        "{q:?}"
    );
    healthy.store(true, Ordering::SeqCst);
    let handled = || bus.metrics().handled;
    wait_until("every job handled once the probe succeeded", || {
        handled() == 5
    })
    .await;
    assert_eq!(breaker.state(), herald::middleware::CircuitState::Closed);
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shorthand_edits_the_standard_stack_and_a_from_fn_layer_sits_inside_retry() {
    let b = broker();
    let bus = bus(&b, "svc").await;
    let attempts_seen = Arc::new(AtomicU32::new(0));
    let a = attempts_seen.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    bus.subscribe_with(
        move |_: JobStarted| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(HandlerError::transient("blip"))
                } else {
                    Ok(())
                }
            }
        },
        SubscribeOptions::new()
            .retry(RetryPolicy {
                immediate: 5,
                ..RetryPolicy::default()
            })
            .layer(from_fn(move |msg: Message, next: Next| {
                a.fetch_add(1, Ordering::SeqCst);
                next.run(msg)
            })),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus.publish(&JobStarted { n: 1 }).await.unwrap();
    wait_until("handled", || bus.metrics().handled == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        attempts_seen.load(Ordering::SeqCst),
        3,
        "inside retry: every immediate attempt passes the layer"
    );
    bus.shutdown().await.unwrap();
}
