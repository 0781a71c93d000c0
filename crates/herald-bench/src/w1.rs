//! Workload W1 through the Herald bus, on any transport.
//!
//! In one process with [`run_in_process`] (`memory://` and the network brokers), or split over
//! two processes for brokers several processes share (the embedded SQLite one): the CLI runs
//! [`subscribe_counter`] in a consumer process and [`publish_all`] in the publisher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Bus, Event, EventDescriptor, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::cpu::{process_cpu, BrokerClock};

/// The W1 event: about 200 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The event's number in the run, from 0: the consumer counts and times events by it.
    pub seq: u64,
    /// A UUIDv7, so each body differs as real events do.
    pub order_id: String,
    /// The customer, one of 997.
    pub customer_id: u64,
    /// The order's total, in cents.
    pub amount_cents: u64,
    /// The currency code (`EUR`).
    pub currency: String,
    /// How many items were ordered (1 to 7).
    pub items: u32,
    /// Where the order was placed (`web`).
    pub channel: String,
    /// Free text, padding the body to about 200 bytes.
    pub note: String,
}

impl Event for OrderPlaced {
    const NAME: &'static str = "bench.order.placed";
    const VERSION: u32 = 1;
    const ROUTING_KEY: &'static str = "bench.order.placed";
    fn descriptor() -> EventDescriptor {
        EventDescriptor {
            name: Self::NAME,
            version: 1,
            routing_key: Self::ROUTING_KEY,
            type_name: "OrderPlaced",
            publisher: Some("bench-publisher"),
            consumers: &["bench-consumer"],
            description: "W1 benchmark event",
        }
    }
}

impl OrderPlaced {
    /// The `seq`-th event.
    pub fn sample(seq: u64) -> Self {
        OrderPlaced {
            seq,
            order_id: uuid::Uuid::now_v7().to_string(),
            customer_id: 100_000 + seq % 997,
            amount_cents: 1999 + seq % 10_000,
            currency: "EUR".into(),
            items: (seq % 7) as u32 + 1,
            channel: "web".into(),
            note: "deliver to the side door, ring twice".into(),
        }
    }
}

/// How many publishes are in flight at once (each waits for durable acceptance).
pub const PUBLISH_WINDOW: usize = 256;

/// Figures of one W1 run.
#[derive(Debug, Clone, Copy)]
pub struct W1Figures {
    /// Events published and consumed.
    pub events: u64,
    /// Events per second from the first publish until the last was durably accepted.
    pub publish_eps: f64,
    /// Events per second from the first publish until the last was handled.
    pub end_to_end_eps: f64,
    /// This process's CPU (user + system) per event, in microseconds.
    pub cpu_us_per_event: f64,
    /// The local broker's CPU per event, in microseconds, when it runs on this host.
    pub broker_us_per_event: Option<f64>,
}

/// The consumer's subscription options: ack after decode, prefetch 200, a queue of this run's
/// own (queues outlive a run on a real broker).
fn consumer_options(exchange: &str, kind: herald::QueueKind) -> SubscribeOptions {
    SubscribeOptions::new()
        .prefetch(200)
        .concurrency(8)
        .queue(queue_name(exchange))
        .queue_kind(kind)
}

/// The W1 queue of the run on `exchange`.
pub fn queue_name(exchange: &str) -> String {
    format!("{exchange}.consumer")
}

/// Subscribe a counting consumer; returns the counter and a notifier fired at `events`.
pub fn subscribe_counter(
    bus: &Bus,
    events: u64,
    kind: herald::QueueKind,
) -> herald::Result<(Arc<AtomicU64>, Arc<Notify>)> {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    bus.subscribe_with(
        move |_e: OrderPlaced| {
            if c.fetch_add(1, Ordering::Relaxed) + 1 == events {
                d.notify_one();
            }
            std::future::ready(())
        },
        consumer_options(bus.publisher().exchange(), kind),
    )?;
    Ok((count, done))
}

/// A bus for one side of a benchmark run.
async fn bench_bus(broker: &str, exchange: &str, service: &str) -> herald::Result<Bus> {
    Bus::builder()
        .broker(broker)
        .exchange(exchange)
        .service(service)
        .build()
        .await
}

/// Publish `events` W1 events with [`PUBLISH_WINDOW`] in flight; returns how long it took.
pub async fn publish_all(bus: &Bus, events: u64) -> herald::Result<Duration> {
    let started = Instant::now();
    let mut results = futures::stream::iter(0..events)
        .map(|i| {
            let bus = bus.clone();
            async move { bus.publish(&OrderPlaced::sample(i)).await }
        })
        .buffer_unordered(PUBLISH_WINDOW);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// Publisher and consumer in this process, each with its own bus.
pub async fn run_in_process(
    broker: &str,
    exchange: &str,
    events: u64,
    kind: herald::QueueKind,
) -> herald::Result<W1Figures> {
    let consumer = bench_bus(broker, exchange, "bench-consumer").await?;
    let (_count, done) = subscribe_counter(&consumer, events, kind)?;
    consumer.start().await?;
    let publisher = bench_bus(broker, exchange, "bench-publisher").await?;
    // The broker's clock first: finding its process reads /proc, which the client's figures
    // should not count.
    let broker_clock = BrokerClock::for_broker_url(broker);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let notified = done.notified();
    let publish_time = publish_all(&publisher, events).await?;
    notified.await;
    let e2e = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    let broker_us_per_event = broker_clock.and_then(|b| b.us_per_event(events));
    publisher.shutdown().await?;
    consumer.shutdown().await?;
    Ok(W1Figures {
        events,
        publish_eps: events as f64 / publish_time.as_secs_f64(),
        end_to_end_eps: events as f64 / e2e.as_secs_f64(),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events as f64,
        broker_us_per_event,
    })
}

/// The floor for `memory://`: the same events encoded to JSON, sent through a bounded tokio
/// channel to another task and decoded there, with no bus, envelope or acknowledgement.
pub async fn run_raw_in_process(events: u64) -> W1Figures {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PUBLISH_WINDOW);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(body) = rx.recv().await {
            if serde_json::from_slice::<OrderPlaced>(&body).is_ok() {
                n += 1;
            }
            if n == events {
                break;
            }
        }
        n
    });
    for i in 0..events {
        let body = serde_json::to_vec(&OrderPlaced::sample(i)).unwrap_or_default();
        if tx.send(body).await.is_err() {
            break;
        }
    }
    let publish_time = started.elapsed();
    let _ = consumer.await;
    let e2e = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    W1Figures {
        events,
        publish_eps: events as f64 / publish_time.as_secs_f64(),
        end_to_end_eps: events as f64 / e2e.as_secs_f64(),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events as f64,
        broker_us_per_event: None,
    }
}

/// Publish-to-handler latency through the bus at a fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct LatencyFigures {
    /// Events published and handled.
    pub events: u64,
    /// The fixed publishing rate, in events per second.
    pub rate: u64,
    /// Median publish-to-handler latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile publish-to-handler latency, in milliseconds.
    pub p99_ms: f64,
    /// The slowest event's latency, in milliseconds.
    pub max_ms: f64,
}

/// Publish `events` W1 events at `rate` per second and measure, in the handler, how long
/// after `publish` was called each one arrived. The clock is this process's monotonic one, read
/// when `publish` is called and looked up by the event's `seq` (the event's own time is whole
/// milliseconds, too coarse for this).
pub async fn latency(
    broker: &str,
    exchange: &str,
    events: u64,
    rate: u64,
) -> herald::Result<LatencyFigures> {
    let consumer = bench_bus(broker, exchange, "bench-latency").await?;
    let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(events as usize)));
    let done = Arc::new(Notify::new());
    let origin = Instant::now();
    // When `publish` was called for each seq, in nanoseconds since `origin`.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let (s, d, at) = (samples.clone(), done.clone(), sent.clone());
    consumer.subscribe_with(
        move |e: OrderPlaced| {
            let now = origin.elapsed().as_nanos() as u64;
            let sent = at
                .get(e.seq as usize)
                .map_or(now, |t| t.load(Ordering::Acquire));
            let mut v = s.lock().unwrap_or_else(|e| e.into_inner());
            v.push(now.saturating_sub(sent) as f64 / 1e6);
            if v.len() as u64 == events {
                d.notify_one();
            }
            std::future::ready(())
        },
        consumer_options(exchange, herald::QueueKind::Classic),
    )?;
    consumer.start().await?;
    let publisher = bench_bus(broker, exchange, "bench-publisher").await?;
    let notified = done.notified();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..events {
        ticker.tick().await;
        let bus = publisher.clone();
        let event = OrderPlaced::sample(i);
        if let Some(t) = sent.get(i as usize) {
            t.store(origin.elapsed().as_nanos() as u64, Ordering::Release);
        }
        pending.push(async move { bus.publish(&event).await });
        // Keep confirms flowing without waiting for each one.
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            r?;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), notified).await;
    publisher.shutdown().await?;
    consumer.shutdown().await?;
    let mut v = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(LatencyFigures {
        events: v.len() as u64,
        rate,
        p50_ms: crate::percentile(&v, 0.50),
        p99_ms: crate::percentile(&v, 0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
    })
}

/// The latency result line.
pub fn latency_line(transport: &str, l: &LatencyFigures) -> String {
    format!(
        "RESULT workload=latency transport={transport} events={} rate={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        l.events, l.rate, l.p50_ms, l.p99_ms, l.max_ms
    )
}
