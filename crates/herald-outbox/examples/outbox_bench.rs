//! Outbox benchmark: `cargo run --release -p herald-outbox --example outbox_bench`.
//!
//! Three phases against the local PostgreSQL and a broker (`HERALD_BROKER`, default an embedded
//! `sqlite://` file; `amqp://...` once the RabbitMQ transport is in):
//!
//! 1. **raw**: W writers each loop "insert a row, commit, publish the event" (no outbox);
//! 2. **outbox under load**: W writers each loop "insert a row and stage the event, commit" while
//!    relays publish; commit → publish latency (p50/p99) comes from the rows' timestamps;
//! 3. **drain**: a backlog of N staged events, relays started, time until all are sent:
//!    relayed events/s.
//!
//! Ends with `RESULT workload=outbox transport=... events=N herald_eps=<drain/s> raw_eps=<raw/s>
//! ratio=... cpu_us_per_event=- load_eps=... p50_ms=... p99_ms=...`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, MessageOptions, QueueSpec, SubscribeOptions, Topology};
use herald_outbox::postgres::{PgOutbox, PgStore};
use herald_outbox::{Relay, RelayConfig, Retention, StagedEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "bench.order_placed")]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    amount_cents: i64,
    note: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect() -> Result<tokio_postgres::Client, BoxError> {
    let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

fn event(i: i64) -> (OrderPlaced, MessageOptions) {
    (
        OrderPlaced {
            order_id: i,
            customer: format!("customer-{}", i % 977),
            amount_cents: 1999 + i % 100,
            note: "benchmark order with a body of about two hundred bytes of JSON in total".into(),
        },
        MessageOptions::default().subject(format!("order-{}", i % 1000)),
    )
}

async fn run_relays(
    n: usize,
    outbox: &PgOutbox,
    bus: &Bus,
    cancel: &CancellationToken,
) -> Result<
    (
        Vec<tokio::task::JoinHandle<()>>,
        Vec<Arc<herald_outbox::RelayMetrics>>,
    ),
    BoxError,
> {
    let mut tasks = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..n {
        let store = Arc::new(PgStore::connect(PG, outbox.clone()).await?);
        let config = RelayConfig {
            batch_size: env_usize("OUTBOX_BENCH_BATCH", 500),
            poll_interval: Duration::from_millis(200),
            retention: Retention::Keep,
            ..RelayConfig::default()
        };
        let relay = Relay::new(store, bus.publisher().clone(), config);
        metrics.push(relay.metrics());
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move { relay.run(c).await }));
    }
    Ok((tasks, metrics))
}

fn breakdown(metrics: &[Arc<herald_outbox::RelayMetrics>]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let sum = |f: fn(&herald_outbox::RelayMetrics) -> u64| {
        metrics.iter().map(|m| f(m)).sum::<u64>() as f64 / 1e3
    };
    format!(
        "claim {:.0} ms, publish {:.0} ms, record {:.0} ms, rounds {}",
        sum(|m| m.claim_micros.load(Relaxed)),
        sum(|m| m.publish_micros.load(Relaxed)),
        sum(|m| m.record_micros.load(Relaxed)),
        sum(|m| m.rounds.load(Relaxed)) * 1e3
    )
}

/// Wait until the relays have published `total` events and no row is left open (all marked
/// sent). Watches the relays' own counters first: polling a count over the table every few
/// milliseconds would make PostgreSQL scan it continuously, and the benchmark would measure its
/// own polling instead of the relay.
async fn wait_sent(
    c: &tokio_postgres::Client,
    outbox: &PgOutbox,
    metrics: &[Arc<herald_outbox::RelayMetrics>],
    total: u64,
) -> Result<(), BoxError> {
    let start = Instant::now();
    let timeout = Duration::from_secs(300);
    let published = || {
        metrics
            .iter()
            .map(|m| m.published.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    while published() < total {
        if start.elapsed() > timeout {
            return Err(format!("only {} of {total} published after 300 s", published()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let open = format!(
        "SELECT count(*) FROM {} WHERE sent_at IS NULL AND completed_at IS NULL",
        outbox.qualified()
    );
    loop {
        let n: i64 = c.query_one(&open, &[]).await?.get(0);
        if n == 0 {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("{n} events still not marked sent after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let events = env_usize("OUTBOX_BENCH_EVENTS", 50_000);
    let raw_events = env_usize("OUTBOX_BENCH_RAW_EVENTS", 10_000);
    let writers = env_usize("OUTBOX_BENCH_WRITERS", 8);
    let relays = env_usize("OUTBOX_BENCH_RELAYS", 2);
    let dir = tempfile::tempdir()?;
    #[cfg(feature = "rabbitmq")]
    herald_rabbitmq::register();
    let broker = std::env::var("HERALD_BROKER")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("broker.db").display()));
    let transport_name = broker
        .split("://")
        .next()
        .unwrap_or("?")
        .replace("amqp", "rabbitmq");
    let schema = format!("outbox_bench_{}", std::process::id());
    let outbox = PgOutbox::new("bench")?.schema(&schema)?;
    let mut admin = connect().await?;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    outbox.migrate(&mut admin).await?;
    if std::env::var("OUTBOX_BENCH_NO_NOTIFY").is_ok() {
        admin
            .batch_execute(&format!(
                "ALTER TABLE {} DISABLE TRIGGER herald_outbox_notify",
                outbox.qualified()
            ))
            .await?;
    }
    admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.orders (id bigserial PRIMARY KEY, customer text, amount bigint)"
        ))
        .await?;

    let bus = Bus::builder()
        .service("bench")
        .broker(&broker)
        .build()
        .await?;
    let mut topology = Topology::new(&bus.config().exchange);
    topology.add_queue(QueueSpec::new("bench.orders", "bench.#"));
    bus.transport().apply_topology(&topology).await?;
    // A consuming service drains the queue while the relays fill it, as in production (a queue
    // nobody reads grows into the broker's disk store, which measures the broker's paging, not
    // the relay). OUTBOX_BENCH_NO_CONSUMER=1 measures that case.
    let consumed = Arc::new(AtomicU64::new(0));
    let consumer = if std::env::var("OUTBOX_BENCH_NO_CONSUMER").is_ok() {
        None
    } else {
        let consumer = Bus::builder()
            .service("bench")
            .broker(&broker)
            .prefetch(500)
            .build()
            .await?;
        let seen = consumed.clone();
        consumer.subscribe_pattern(
            "orders",
            "bench.#",
            move |_: serde_json::Value| {
                seen.fetch_add(1, Ordering::Relaxed);
                std::future::ready(())
            },
            SubscribeOptions::new().concurrency(64),
        )?;
        consumer.start().await?;
        Some(consumer)
    };

    // 1. raw: insert, commit, publish.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (bus, schema) = (bus.clone(), schema.clone());
        let per = raw_events / writers;
        tasks.push(tokio::spawn(async move {
            let mut c = connect().await?;
            for i in 0..per {
                let id = (w * per + i) as i64;
                let (e, o) = event(id);
                let tx = c.transaction().await?;
                tx.execute(
                    &format!("INSERT INTO {schema}.orders (customer, amount) VALUES ($1, $2)"),
                    &[&e.customer, &e.amount_cents],
                )
                .await?;
                tx.commit().await?;
                bus.publish_with(&e, o).await?;
            }
            Ok::<_, BoxError>(per)
        }));
    }
    let mut raw_done = 0;
    for t in tasks {
        raw_done += t.await??;
    }
    let raw_eps = raw_done as f64 / start.elapsed().as_secs_f64();
    eprintln!("raw insert-then-publish: {raw_done} events, {raw_eps:.0}/s");

    // 2. outbox under load: writers stage, relays publish.
    let cancel = CancellationToken::new();
    let (relay_tasks, load_metrics) = run_relays(relays, &outbox, &bus, &cancel).await?;
    let since = chrono::Utc::now();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (outbox, schema) = (outbox.clone(), schema.clone());
        let per = raw_events / writers;
        tasks.push(tokio::spawn(async move {
            let mut c = connect().await?;
            for i in 0..per {
                let id = (1_000_000 + w * per + i) as i64;
                let (e, o) = event(id);
                let tx = c.transaction().await?;
                tx.execute(
                    &format!("INSERT INTO {schema}.orders (customer, amount) VALUES ($1, $2)"),
                    &[&e.customer, &e.amount_cents],
                )
                .await?;
                outbox.stage_with(&tx, &e, &o).await?;
                tx.commit().await?;
            }
            Ok::<_, BoxError>(per)
        }));
    }
    let mut load_done = 0u64;
    for t in tasks {
        load_done += t.await?? as u64;
    }
    let write_secs = start.elapsed().as_secs_f64();
    wait_sent(&admin, &outbox, &load_metrics, load_done).await?;
    let load_eps = load_done as f64 / start.elapsed().as_secs_f64();
    let (p50, p99) = outbox
        .send_latency(&admin, since)
        .await?
        .unwrap_or((f64::NAN, f64::NAN));
    eprintln!("outbox under load: writers {:.0}/s; {load_done} events, {load_eps:.0}/s, commit->publish p50 {:.1} ms p99 {:.1} ms", load_done as f64 / write_secs, p50 * 1e3, p99 * 1e3);
    cancel.cancel();
    for t in relay_tasks {
        t.await?;
    }

    // 3. drain a backlog.
    let tx = admin.transaction().await?;
    for chunk in (0..events as i64).collect::<Vec<_>>().chunks(5000) {
        let rows = chunk
            .iter()
            .map(|i| {
                let (e, o) = event(2_000_000 + i);
                StagedEvent::from_event(&e, "bench", &o)
            })
            .collect::<Result<Vec<_>, _>>()?;
        outbox.stage_rows(&tx, &rows).await?;
    }
    tx.commit().await?;
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let (relay_tasks, metrics) = run_relays(relays, &outbox, &bus, &cancel).await?;
    wait_sent(&admin, &outbox, &metrics, events as u64).await?;
    let drain_eps = events as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "drain: {events} events relayed, {drain_eps:.0}/s with {relays} relays ({})",
        breakdown(&metrics)
    );
    cancel.cancel();
    for t in relay_tasks {
        t.await?;
    }
    if let Some(consumer) = consumer {
        // Every relayed event reaches the consumer; nothing is left on the broker.
        let expected = (raw_done + load_done as usize + events) as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumed.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = consumed.load(Ordering::Relaxed);
        eprintln!("consumer: {got} of {expected} events received");
        consumer.shutdown().await?;
        if got < expected {
            return Err(format!("the consumer received {got} of {expected} events").into());
        }
    }
    bus.shutdown().await?;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    println!(
        "RESULT workload=outbox transport={transport_name} events={events} herald_eps={drain_eps:.0} raw_eps={raw_eps:.0} ratio={:.2} cpu_us_per_event=- load_eps={load_eps:.0} p50_ms={:.1} p99_ms={:.1}",
        drain_eps / raw_eps,
        p50 * 1e3,
        p99 * 1e3
    );
    Ok(())
}
