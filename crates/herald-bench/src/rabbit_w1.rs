//! W1 through Herald's RabbitMQ transport, and the latency run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::channel::{ExchangeDeleteArguments, QueueDeleteArguments};
use amqprs::connection::Connection;
use bytes::Bytes;
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueKind, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio_util::sync::CancellationToken;

use crate::raw_amqprs::BenchResult;
use crate::{percentile, run_name, w1_body, LatencyFigures, Meter, W1Figures};

/// Publisher tasks sharing the confirm window (each publishes batches of [`BATCH`]).
const PUBLISHERS: u64 = 8;
const BATCH: u64 = 64;

async fn setup(
    prefix: &str,
    kind: QueueKind,
) -> BenchResult<(RabbitTransport, RabbitTransport, String, QueueSpec)> {
    let name = run_name(prefix);
    let exchange = format!("{name}.x");
    let mut queue = QueueSpec::new(name, "w1.#");
    queue.kind = kind;
    queue.retry_delays = vec![Duration::from_secs(1)];
    let mut cfg = RabbitConfig::new(vec![crate::amqp_url()], "bench");
    cfg.confirm_window = 256;
    if let Some(n) = std::env::var("HERALD_BENCH_CHANNELS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.publish_channels = n;
    }
    let publisher = RabbitTransport::connect(cfg.clone())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = RabbitTransport::connect(cfg)
        .await
        .map_err(|e| e.to_string())?;
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    publisher
        .apply_topology(&topo)
        .await
        .map_err(|e| e.to_string())?;
    Ok((publisher, consumer, exchange, queue))
}

/// Delete what a benchmark run declared on the broker: the queue, its dead-letter and retry
/// queues, and the exchanges. Best effort: a failure leaves an empty queue behind.
pub async fn cleanup(exchange: &str, queue: &QueueSpec) {
    let Ok(args) = crate::amqp_args("bench cleanup") else {
        return;
    };
    let Ok(conn) = Connection::open(&args).await else {
        return;
    };
    if let Ok(ch) = conn.open_channel(None).await {
        let retry_queues = queue.retry_delays.iter().map(|d| queue.retry_queue(*d));
        let names = [
            queue.name.clone(),
            queue.dead_letter_queue(),
            queue.retry_queue(Duration::from_secs(1)),
        ];
        for q in names.into_iter().chain(retry_queues) {
            let _ = ch.queue_delete(QueueDeleteArguments::new(&q)).await;
        }
        for x in [exchange.to_string(), format!("{exchange}.dlx")] {
            let _ = ch.exchange_delete(ExchangeDeleteArguments::new(&x)).await;
        }
        let _ = ch.close().await;
    }
    let _ = conn.close().await;
}

/// Run W1 through Herald: `events` events, classic or quorum queue.
pub async fn run(events: u64, kind: QueueKind) -> BenchResult<W1Figures> {
    let (publisher, consumer, exchange, queue) = setup("bench-herald", kind).await?;
    let publisher = Arc::new(publisher);
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .map_err(|e| e.to_string())?;
    let meter = Meter::start();
    let consuming = tokio::spawn(async move {
        let mut got = 0u64;
        while got < events {
            let Some(d) = rx.recv().await else { break };
            let _event: Option<crate::w1::OrderPlaced> =
                serde_json::from_slice(&d.envelope.body).ok();
            if d.ack().await.is_ok() {
                got += 1;
            }
        }
        got
    });
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = p * BATCH;
            while n < events {
                let end = (n + BATCH).min(events);
                let batch: Vec<Envelope> = (n..end)
                    .map(|i| {
                        Envelope::new("w1.event", 1, "w1.event", "bench", Bytes::from(w1_body(i)))
                    })
                    .collect();
                publisher
                    .publish(&exchange, &batch, PublishOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                n += PUBLISHERS * BATCH;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let publish_elapsed = meter.elapsed();
    let got = consuming.await.map_err(|e| e.to_string())?;
    let mut figures = meter.finish(got);
    figures.publish_elapsed = publish_elapsed;
    cancel.cancel();
    let _ = consumer.close().await;
    let _ = publisher.close().await;
    cleanup(&exchange, &queue).await;
    if got < events {
        return Err(format!("herald run consumed {got} of {events}"));
    }
    Ok(figures)
}

/// Publish `events` events at `rate` per second (one publish call each) and measure the time
/// from the publish call to the handler receiving it.
pub async fn latency(events: u64, rate: u64) -> BenchResult<LatencyFigures> {
    let (publisher, consumer, exchange, queue) = setup("bench-latency", QueueKind::Classic).await?;
    let publisher = Arc::new(publisher);
    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .map_err(|e| e.to_string())?;
    let origin = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(events as usize);
        while (lat.len() as u64) < events {
            let Some(d) = rx.recv().await else { break };
            let now = origin.elapsed().as_nanos() as u64;
            let sent: u64 = serde_json::from_slice::<serde_json::Value>(&d.envelope.body)
                .ok()
                .and_then(|v| v["sent_ns"].as_u64())
                .unwrap_or(now);
            lat.push(now.saturating_sub(sent) as f64 / 1e6);
            let _ = d.ack().await;
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = Vec::with_capacity(events as usize);
    for i in 0..events {
        tick.tick().await;
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        // publish() waits for the broker's confirm, so each call runs in its own task; the clock
        // starts when the call is made.
        publishes.push(tokio::spawn(async move {
            let sent_ns = origin.elapsed().as_nanos() as u64;
            let body = serde_json::to_vec(&serde_json::json!({ "n": i, "sent_ns": sent_ns }))
                .unwrap_or_default();
            let e = Envelope::new("w1.event", 1, "w1.event", "bench", Bytes::from(body));
            publisher
                .publish(&exchange, &[e], PublishOptions::default())
                .await
        }));
    }
    for p in publishes {
        p.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let mut lat = tokio::time::timeout(Duration::from_secs(60), consuming)
        .await
        .map_err(|_| "latency run timed out".to_string())?
        .map_err(|e| e.to_string())?;
    cancel.cancel();
    let _ = consumer.close().await;
    let _ = publisher.close().await;
    cleanup(&exchange, &queue).await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(LatencyFigures {
        events: lat.len() as u64,
        rate,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
    })
}
