//! Run W1 on NATS JetStream through Herald's bus and raw async-nats, to tell apart where the
//! time goes.
//!
//! `cargo run --release -p herald-bench --example nats_w1 -- [events] [runs] [herald|raw|raw-wire] [url]`
//! (defaults: 50000 events, 3 runs, `raw`, nats://127.0.0.1:4222). `raw-wire` is raw async-nats
//! sending every header Herald's full form writes; `raw-id` only `Nats-Msg-Id`.

use herald_bench::{raw_nats, w1};

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
