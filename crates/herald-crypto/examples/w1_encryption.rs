//! The cost of payload encryption on workload W1 (200-byte JSON events, 256 publishes in
//! flight, prefetch 200, ack after decoding), through the bus, with and without
//! `EncryptingTransport`, in alternating rounds of one run, on any broker:
//!
//! ```sh
//! cargo run --release -p herald-crypto --example w1_encryption -- memory:// 100000 7
//! cargo run --release -p herald-crypto --example w1_encryption -- amqp://guest:guest@127.0.0.1:5672/%2f 20000 5
//! ```
//!
//! Arguments: broker URL, events per round, rounds (each round runs both, the order
//! alternating). Prints each round and a `RESULT` line with the medians and the median of the
//! rounds' ratios (encrypted / plain).

use std::sync::Arc;
use std::time::Instant;

use herald::{Bus, QueueKind, Transport};
use herald_bench::cpu::process_cpu;
use herald_bench::w1::{publish_all, subscribe_counter};
use herald_crypto::{EncryptingTransport, Key, Keyring};

struct Round {
    eps: f64,
    cpu_us_per_event: f64,
}

async fn transport(broker: &str, service: &str, keys: Option<&Keyring>) -> Arc<dyn Transport> {
    let inner = herald::transport::connect(broker, service)
        .await
        .expect("connect");
    match keys {
        Some(k) => Arc::new(EncryptingTransport::new(inner, k.clone())),
        None => inner,
    }
}

async fn bus(broker: &str, exchange: &str, service: &str, keys: Option<&Keyring>) -> Bus {
    Bus::builder()
        .service(service)
        .exchange(exchange)
        .transport(transport(broker, service, keys).await)
        .build()
        .await
        .expect("bus")
}

async fn round(broker: &str, events: u64, keys: Option<&Keyring>) -> Round {
    let exchange = format!(
        "bench-crypto.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let consumer = bus(broker, &exchange, "bench-consumer", keys).await;
    let (_count, done) =
        subscribe_counter(&consumer, events, QueueKind::Classic).expect("subscribe");
    consumer.start().await.expect("start");
    let publisher = bus(broker, &exchange, "bench-publisher", keys).await;
    let cpu_before = process_cpu();
    let started = Instant::now();
    let notified = done.notified();
    publish_all(&publisher, events).await.expect("publish");
    notified.await;
    let elapsed = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    publisher.shutdown().await.expect("shutdown");
    consumer.shutdown().await.expect("shutdown");
    if broker.starts_with("amqp") {
        for queue in consumer.topology().queues {
            herald_bench::rabbit_w1::cleanup(&exchange, &queue).await;
        }
    }
    Round {
        eps: events as f64 / elapsed.as_secs_f64(),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    herald_rabbitmq::register();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let broker = args.first().cloned().unwrap_or_else(|| "memory://".into());
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let keys = Keyring::new("bench", Key::generate()).expect("keyring");
    let (mut plain, mut sealed, mut ratios, mut cpu_plain, mut cpu_sealed) =
        (vec![], vec![], vec![], vec![], vec![]);
    // Warm-up: the first run of a process pays for allocator growth and connections.
    round(&broker, events / 10 + 1, None).await;
    for r in 0..rounds {
        let (p, s) = if r % 2 == 0 {
            let p = round(&broker, events, None).await;
            (p, round(&broker, events, Some(&keys)).await)
        } else {
            let s = round(&broker, events, Some(&keys)).await;
            (round(&broker, events, None).await, s)
        };
        println!(
            "round {r}: plain {:.0}/s {:.2} µs/event, encrypted {:.0}/s {:.2} µs/event, ratio {:.3}",
            p.eps,
            p.cpu_us_per_event,
            s.eps,
            s.cpu_us_per_event,
            s.eps / p.eps
        );
        ratios.push(s.eps / p.eps);
        plain.push(p.eps);
        sealed.push(s.eps);
        cpu_plain.push(p.cpu_us_per_event);
        cpu_sealed.push(s.cpu_us_per_event);
    }
    let scheme = herald::transport::scheme_of(&broker).unwrap_or("?");
    println!(
        "RESULT workload=w1 transport={scheme} events={events} rounds={rounds} plain_eps={:.0} encrypted_eps={:.0} ratio={:.3} plain_cpu_us_per_event={:.2} encrypted_cpu_us_per_event={:.2}",
        median(plain),
        median(sealed),
        median(ratios),
        median(cpu_plain),
        median(cpu_sealed)
    );
}
