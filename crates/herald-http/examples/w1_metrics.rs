//! Workload W1 on `memory://` (the same as `herald bench --broker memory://b`), with or without
//! the Prometheus recorder installed, to measure what metrics cost on the hot path:
//!
//! ```text
//! cargo run --release -p herald-http --example w1_metrics -- 200000             # no recorder
//! cargo run --release -p herald-http --example w1_metrics -- 200000 prometheus  # recorder installed
//! ```
use herald_bench::w1;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().as_deref().unwrap_or("200000").parse()?;
    let prometheus = args.next().as_deref() == Some("prometheus");
    let handle = if prometheus {
        Some(herald_http::metrics::install_prometheus()?)
    } else {
        None
    };
    let exchange = format!("bench.w1.{:08x}", std::process::id());
    let f = w1::run_in_process("memory://b", &exchange, events, herald::QueueKind::Classic).await?;
    let recorder = if prometheus { "prometheus" } else { "none" };
    println!(
        "RESULT workload=w1 transport=memory recorder={recorder} events={} publish_eps={:.0} e2e_eps={:.0} cpu_us_per_event={:.2}",
        f.events, f.publish_eps, f.end_to_end_eps, f.cpu_us_per_event
    );
    if let Some(handle) = handle {
        let scrape = handle.render();
        let acked = scrape
            .lines()
            .find(|l| l.starts_with("herald_acked_total{"))
            .unwrap_or("herald_acked_total missing");
        eprintln!("{acked}");
    }
    Ok(())
}
