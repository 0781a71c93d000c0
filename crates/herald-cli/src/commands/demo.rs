//! `herald demo`.

use herald::Config;

use crate::demo::{self, DemoOptions};
use crate::CliResult;

/// Run the reference system.
#[derive(clap::Args)]
pub struct Args {
    /// Publish this many events, wait until the run is quiescent (every event handled or
    /// dead-lettered by each service, or the queues empty and handling stopped), print the
    /// report judged by distinct event ids and exit [default: run until Ctrl-C]
    #[arg(long)]
    events: Option<u64>,
    /// Events per second (0 = as fast as the broker accepts) [default: 50 without --events, 0 with]
    #[arg(long)]
    rate: Option<u64>,
    /// Fraction of analytics-service first attempts that fail and are retried
    #[arg(long, default_value_t = 0.10)]
    fail_rate: f64,
    /// Fraction of events analytics-service always fails on (they end in its dead letters)
    #[arg(long, default_value_t = 0.01)]
    poison_rate: f64,
    /// No progress lines
    #[arg(long)]
    quiet: bool,
    /// Where the dashboard listens (a port in use falls back to an ephemeral one)
    #[arg(long, default_value = super::serve::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// Do not start the dashboard and HTTP API
    #[arg(long)]
    no_serve: bool,
    #[command(flatten)]
    orders: crate::demo::orders::OrdersArgs,
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    if args.orders.system == "orders" {
        let options = crate::demo::orders::OrdersOptions {
            events: args.events,
            rate: args
                .rate
                .unwrap_or(if args.events.is_some() { 0 } else { 20 }),
            progress: !args.quiet,
            listen: (!args.no_serve).then_some(args.listen),
        };
        return crate::demo::orders::run(config, &args.orders, options).await;
    }
    for (name, v) in [
        ("--fail-rate", args.fail_rate),
        ("--poison-rate", args.poison_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} must be between 0 and 1, got {v}").into());
        }
    }
    let options = DemoOptions {
        events: args.events,
        rate: args
            .rate
            .unwrap_or(if args.events.is_some() { 0 } else { 50 }),
        fail_rate: args.fail_rate,
        poison_rate: args.poison_rate,
        progress: !args.quiet,
    };
    let dashboard = match args.no_serve {
        true => None,
        false => Some(super::serve::start_for_demo(&config, args.listen).await?),
    };
    let report = demo::run(config, options).await;
    if let Some(d) = dashboard {
        d.stop().await?;
    }
    let report = report?;
    eprintln!(
        "\npublished {} events; {} deliveries handled, {} retried, {} dead-lettered, {} duplicates, {} lost ({:.1}s)",
        report.published,
        report.handled,
        report.retried,
        report.dead_lettered,
        report.duplicates,
        report.lost,
        report.elapsed.as_secs_f64()
    );
    if report.dead_lettered > 0 {
        eprintln!("inspect them with: herald dlq list   (then herald dlq replay <queue> --all)");
    }
    println!("{}", report.result_line());
    if report.lost > 0 {
        return Err(format!("{} deliveries were lost", report.lost).into());
    }
    if !report.quiescent {
        return Err("the run did not go quiet; its figures may be early".into());
    }
    Ok(())
}
