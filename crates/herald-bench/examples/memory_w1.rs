//! Run W1 through the bus on `memory://` only (no raw floor beside it), for instruction counts:
//! `scripts/bench-instructions memory` runs it under callgrind at two sizes.
//!
//! `cargo run --release -p herald-bench --example memory_w1 -- [events] [runs]`
//! (defaults: 200000 events, 1 run).

use herald::QueueKind;
use herald_bench::w1;

/// jemalloc, as in the `herald` binary: bus and raw baseline alike run on it.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    for run in 0..runs {
        let broker = format!("memory://memory-w1-{run}");
        let f = w1::run_in_process(&broker, "bench.w1", events, QueueKind::Classic)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "RESULT workload=w1 transport=memory events={} herald_eps={:.0} cpu_us_per_event={:.2}",
            f.events, f.end_to_end_eps, f.cpu_us_per_event
        );
    }
    Ok(())
}
