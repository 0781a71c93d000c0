//! Run W1 on RabbitMQ through Herald and raw amqprs, a quorum-queue run and the latency run.
//!
//! `cargo run --release -p herald-bench --example rabbit_w1 -- [events] [runs] [all|latency|herald|raw|raw2]`
//! (defaults: 50000 events, 3 runs; medians are printed last; `latency` runs only the latency
//! run, `events` at 1,000/s, `runs` times; `herald`, `raw` and `raw2` run only the transport,
//! raw amqprs, or raw amqprs publishing on two channels, `runs` times each).

use herald::QueueKind;
use herald_bench::{latency_line, rabbit_w1, raw_amqprs, result_line, W1Figures};

fn median(mut v: Vec<W1Figures>) -> W1Figures {
    v.sort_by(|a, b| {
        a.eps
            .partial_cmp(&b.eps)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mid = v[v.len() / 2];
    let mut cpu: Vec<f64> = v.iter().map(|f| f.cpu_us_per_event).collect();
    cpu.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    W1Figures {
        cpu_us_per_event: cpu[cpu.len() / 2],
        ..mid
    }
}

/// jemalloc, as in the `herald` binary: bus and raw baseline alike run on it.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let mode = args.get(3).map(String::as_str).unwrap_or("all");
    if mode == "herald" || mode == "raw" || mode == "raw2" {
        for _ in 0..runs {
            let f = match mode {
                "herald" => rabbit_w1::run(events, QueueKind::Classic).await?,
                "raw2" => raw_amqprs::run_on_channels(events, false, false, 2).await?,
                _ => raw_amqprs::run(events, false, false).await?,
            };
            println!(
                "{mode}: eps={:.0} cpu_us_per_event={:.1}",
                f.eps, f.cpu_us_per_event
            );
        }
        return Ok(());
    }
    if mode == "latency" {
        for _ in 0..runs {
            let raw = raw_amqprs::latency(events, 1_000).await?;
            let lat = rabbit_w1::latency(events, 1_000).await?;
            println!("{}", latency_line(&lat, Some(&raw)));
        }
        return Ok(());
    }
    let (mut h, mut r, mut rw, mut hq, mut rq) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let raw = raw_amqprs::run(events, false, false).await?;
        let herald = rabbit_w1::run(events, QueueKind::Classic).await?;
        let raw_wire = raw_amqprs::run(events, false, true).await?;
        println!(
            "run {i}: {}",
            result_line("classic", &herald, &raw, Some(&raw_wire))
        );
        r.push(raw);
        h.push(herald);
        rw.push(raw_wire);
        let rawq = raw_amqprs::run(events, true, false).await?;
        let heraldq = rabbit_w1::run(events, QueueKind::Quorum).await?;
        println!("run {i}: {}", result_line("quorum", &heraldq, &rawq, None));
        rq.push(rawq);
        hq.push(heraldq);
    }
    // The machine is shared: the ratio of each run (Herald and raw side by side, same load) is
    // steadier than the ratio of medians taken from different runs.
    let ratios = |a: &[W1Figures], b: &[W1Figures]| {
        let mut v: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| x.eps / y.eps.max(1e-9))
            .collect();
        v.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    println!(
        "RESULT median_run_ratio classic={:.2} classic_same_wire={:.2} quorum={:.2}",
        ratios(&h, &r),
        ratios(&h, &rw),
        ratios(&hq, &rq)
    );
    let (h, r, rw) = (median(h), median(r), median(rw));
    println!(
        "median of {runs}: {}",
        result_line("classic", &h, &r, Some(&rw))
    );
    println!(
        "median of {runs}: {}",
        result_line("quorum", &median(hq), &median(rq), None)
    );
    // Let the broker settle after the throughput runs (queue deletions, quorum WAL flushes).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (mut herald_lat, mut raw_lat) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let raw = raw_amqprs::latency(5_000, 1_000).await?;
        let lat = rabbit_w1::latency(5_000, 1_000).await?;
        println!("{}", latency_line(&lat, Some(&raw)));
        herald_lat.push(lat);
        raw_lat.push(raw);
    }
    let med = |v: &mut Vec<herald_bench::LatencyFigures>| {
        let mut p50: Vec<f64> = v.iter().map(|l| l.p50_ms).collect();
        let mut p99: Vec<f64> = v.iter().map(|l| l.p99_ms).collect();
        let mut max: Vec<f64> = v.iter().map(|l| l.max_ms).collect();
        for x in [&mut p50, &mut p99, &mut max] {
            x.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        }
        herald_bench::LatencyFigures {
            events: v[0].events,
            rate: v[0].rate,
            p50_ms: p50[p50.len() / 2],
            p99_ms: p99[p99.len() / 2],
            max_ms: max[max.len() / 2],
        }
    };
    println!(
        "median of {runs}: {}",
        latency_line(&med(&mut herald_lat), Some(&med(&mut raw_lat)))
    );
    Ok(())
}
