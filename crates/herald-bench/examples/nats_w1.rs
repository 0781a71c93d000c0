//! Run W1 on NATS JetStream through Herald's bus and raw async-nats, to tell apart where the
//! time goes.
//!
//! `cargo run --release -p herald-bench --example nats_w1 -- [events] [runs] [herald|raw|raw-wire] [url]`
//! (defaults: 50000 events, 3 runs, `raw`, nats://127.0.0.1:4222). `raw-wire` is raw async-nats
//! sending every header Herald's full form writes; `raw-id` only `Nats-Msg-Id`.

use herald_bench::{raw_nats, w1};

/// jemalloc, as in the `herald` binary: bus and raw baseline alike run on it.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    herald_nats::register();
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let mode = args.get(3).map(String::as_str).unwrap_or("raw");
    let url = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    for _ in 0..runs {
        let (eps, cpu, broker) = match mode {
            "herald" => {
                let exchange = format!("bench.w1.{:08x}", rand_u32());
                let f = w1::run_in_process(&url, &exchange, events, herald::QueueKind::Classic)
                    .await
                    .map_err(|e| e.to_string())?;
                raw_nats::delete_exchange(&url, &exchange).await;
                (f.end_to_end_eps, f.cpu_us_per_event, f.broker_us_per_event)
            }
            "transport" => {
                let f = transport_only(&url, events).await?;
                (f.0, f.1, f.2)
            }
            "raw-wire" | "raw-id" => {
                let wire = if mode == "raw-id" {
                    raw_nats::RawWire::MsgId
                } else {
                    raw_nats::RawWire::HeraldFull
                };
                let f = raw_nats::run_with(&url, events, wire).await?;
                (f.eps, f.cpu_us_per_event, f.broker_us_per_event)
            }
            _ => {
                let f = raw_nats::run(&url, events).await?;
                (f.eps, f.cpu_us_per_event, f.broker_us_per_event)
            }
        };
        println!(
            "{mode}: eps={eps:.0} cpu_us_per_event={cpu:.1} broker_us_per_event={:.1}",
            broker.unwrap_or(0.0)
        );
    }
    Ok(())
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// W1 on herald-nats's transport alone (no bus): publish envelopes with a window of 256,
/// consume with prefetch 200, decode and ack each.
async fn transport_only(url: &str, events: u64) -> Result<(f64, f64, Option<f64>), String> {
    use futures::StreamExt;
    use herald::transport::{ConsumeOptions, PublishOptions};
    use herald::Transport;
    let e = |x: herald::Error| x.to_string();
    let exchange = format!("bench.t.{:08x}", rand_u32());
    let t = std::sync::Arc::new(
        herald_nats::NatsTransport::connect(
            herald_nats::NatsConfig::from_url(url, "bench").map_err(e)?,
        )
        .await
        .map_err(e)?,
    );
    let c = herald_nats::NatsTransport::connect(
        herald_nats::NatsConfig::from_url(url, "bench").map_err(e)?,
    )
    .await
    .map_err(e)?;
    let q = herald::QueueSpec::new(format!("{exchange}.consumer"), "w1.event");
    let mut topo = herald::Topology::new(&exchange);
    topo.add_queue(q.clone());
    t.apply_topology(&topo).await.map_err(e)?;
    c.apply_topology(&topo).await.map_err(e)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut rx = c
        .consume(&q, ConsumeOptions { prefetch: 200 }, cancel.clone())
        .await
        .map_err(e)?;
    let clock = herald_bench::cpu::BrokerClock::start_for("nats-server");
    let cpu0 = herald_bench::cpu::process_cpu();
    let started = std::time::Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        while got < events {
            let Some(d) = rx.recv().await else { break };
            let _: Option<herald_bench::w1::OrderPlaced> =
                serde_json::from_slice(&d.envelope.body).ok();
            let _ = d.ack().await;
            got += 1;
        }
        got
    });
    let mut results = futures::stream::iter(0..events)
        .map(|n| {
            let t = t.clone();
            let exchange = exchange.clone();
            async move {
                let env = herald::Envelope::new(
                    "w1.event",
                    1,
                    "w1.event",
                    "bench",
                    herald_bench::w1_body(n).into(),
                );
                t.publish(&exchange, &[env], PublishOptions::default())
                    .await
            }
        })
        .buffer_unordered(256);
    while let Some(r) = results.next().await {
        r.map_err(e)?;
    }
    let got = consumer.await.map_err(|x| x.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = herald_bench::cpu::process_cpu() - cpu0;
    cancel.cancel();
    raw_nats::delete_exchange(url, &exchange).await;
    Ok((
        got as f64 / secs,
        cpu.as_secs_f64() * 1e6 / events as f64,
        clock.and_then(|b| b.us_per_event(events)),
    ))
}
