//! Workload W1 on the SQLite transport: one publisher process, one consumer process, one file.
//!
//! `cargo run --release --example sqlite_w1 -- 100000` publishes that many ~200-byte JSON events
//! (many concurrent `publish` calls, as a busy service makes) while a consumer in a separate
//! process (this binary re-executed with `--consumer`) acks them. Throughput is measured end to
//! end, from the first publish to the commit of the last ack, and CPU time is summed over both
//! processes. `HERALD_W1_PREFETCH` sets the consumer's prefetch (default 512) and
//! `HERALD_W1_DURABILITY=power-loss` switches to `synchronous = FULL`.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use herald::transport::sqlite::{Durability, SqliteOptions, SqliteTransport};
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, QueueSpec, Topology, Transport};
use tokio_util::sync::CancellationToken;

const EXCHANGE: &str = "w1";
const CONCURRENCY: usize = 256;

fn queue() -> QueueSpec {
    QueueSpec::new("w1.consumer.order-placed", "order.#")
}

/// Default options; `HERALD_W1_DURABILITY=power-loss` measures `synchronous = FULL`.
fn options() -> SqliteOptions {
    let durability = match std::env::var("HERALD_W1_DURABILITY").as_deref() {
        Ok("power-loss") => Durability::PowerLoss,
        _ => Durability::ProcessCrash,
    };
    SqliteOptions {
        durability,
        ..SqliteOptions::default()
    }
}

fn micros_since_epoch() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// User + system CPU of this process in microseconds, from /proc (0 where unavailable).
fn cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the full line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) * 10_000 // USER_HZ is 100 on Linux
}

fn body(i: usize) -> Bytes {
    let json = format!(
        "{{\"order_id\":\"ord-{i:010}\",\"customer_id\":\"cus-{:08}\",\"total_cents\":{},\"currency\":\"EUR\",\"lines\":[{{\"sku\":\"SKU-{:06}\",\"qty\":{}}}],\"placed_at\":\"2026-01-01T00:00:00.000000Z\",\"note\":\"w1\"}}",
        i % 100_000,
        1000 + i % 9000,
        i % 1000,
        1 + i % 5
    );
    Bytes::from(json)
}

async fn consumer(path: &Path, events: usize) -> herald::Result<()> {
    let t = SqliteTransport::open_with(path, options()).await?;
    let cancel = CancellationToken::new();
    // Prefetch 512 by default; HERALD_W1_PREFETCH overrides it (the bus default is 64).
    let prefetch = std::env::var("HERALD_W1_PREFETCH")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(512);
    let mut rx = t
        .consume(&queue(), ConsumeOptions { prefetch }, cancel.clone())
        .await?;
    println!("READY");
    let _ = std::io::stdout().flush();
    let mut got = 0usize;
    while got < events {
        let Some(d) = rx.recv().await else { break };
        d.ack().await?;
        got += 1;
    }
    cancel.cancel();
    t.close().await?; // flushes the last acks
    println!(
        "DONE got={got} last_ack_us={} cpu_us={}",
        micros_since_epoch(),
        cpu_us()
    );
    Ok(())
}

async fn publisher(events: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path: PathBuf = dir.path().join("herald.db");
    let t = SqliteTransport::open_with(&path, options()).await?;
    let mut topology = Topology::new(EXCHANGE);
    topology.add_queue(queue());
    t.apply_topology(&topology).await?;

    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--consumer")
        .arg(&path)
        .arg(events.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(l)) if l == "READY" => {}
        other => return Err(format!("consumer did not start: {other:?}").into()),
    }

    let envelopes: Vec<Envelope> = (0..events)
        .map(|i| Envelope::new("order.placed", 1, "order.placed", "w1-publisher", body(i)))
        .collect();
    let cpu_before = cpu_us();
    let start_us = micros_since_epoch();
    let started = Instant::now();
    let t2 = t.clone();
    let mut results = futures::stream::iter(envelopes.iter().map(|e| {
        let t = t2.clone();
        async move {
            t.publish(EXCHANGE, std::slice::from_ref(e), PublishOptions::default())
                .await
        }
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let publisher_cpu = cpu_us().saturating_sub(cpu_before);

    let done = tokio::task::spawn_blocking(move || lines.next()).await?;
    let status = child.wait()?;
    let line = match done {
        Some(Ok(l)) if l.starts_with("DONE") => l,
        other => return Err(format!("consumer failed ({status}): {other:?}").into()),
    };
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (got, last_ack_us, consumer_cpu) = (field("got="), field("last_ack_us="), field("cpu_us="));
    if got as usize != events {
        return Err(format!("consumer got {got} of {events}").into());
    }
    let elapsed = Duration::from_micros((last_ack_us as i64 - start_us).max(1) as u64);
    let eps = events as f64 / elapsed.as_secs_f64();
    // The consumer's CPU includes its start-up and idle polling before the first event.
    let cpu_per_event = (publisher_cpu + consumer_cpu) as f64 / events as f64;
    eprintln!(
        "published {events} in {publish_secs:.3}s ({:.0}/s); end to end {:.3}s; cpu publisher {}ms consumer {}ms",
        events as f64 / publish_secs,
        elapsed.as_secs_f64(),
        publisher_cpu / 1000,
        consumer_cpu / 1000
    );
    println!(
        "RESULT workload=w1 transport=sqlite events={events} herald_eps={eps:.0} raw_eps=- ratio=- cpu_us_per_event={cpu_per_event:.1}"
    );
    t.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--consumer") {
        let path = PathBuf::from(args.get(2).ok_or("--consumer PATH EVENTS")?);
        let events: usize = args.get(3).ok_or("--consumer PATH EVENTS")?.parse()?;
        consumer(&path, events).await?;
        return Ok(());
    }
    let events: usize = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    publisher(events).await
}
