//! `herald topology`.

use herald::Config;

use super::cli_bus;
use crate::CliResult;

/// Print topology.
#[derive(clap::Args)]
pub struct Args {
    /// As JSON
    #[arg(long)]
    json: bool,
    /// The demo's event contracts: name, version, publisher, consumers, routing key
    #[arg(long, conflicts_with = "live")]
    catalog: bool,
    /// The queues that exist on the broker now, with counts, instead of the demo's declared topology
    #[arg(long)]
    live: bool,
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    if args.catalog {
        let catalog = crate::demo::catalog(&config).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&catalog.to_json())?);
        } else {
            print!("{catalog}");
        }
        return Ok(());
    }
    if args.live {
        let bus = cli_bus(&config).await?;
        let stats = match herald::transport::queue_statistics(&**bus.transport()) {
            Ok(s) => s.queue_stats().await,
            Err(e) => Err(e),
        };
        if stats.as_ref().is_ok_and(|s| s.is_empty()) {
            super::explain_empty_listing(&**bus.transport());
        }
        bus.shutdown().await?;
        let stats = stats?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            let fmt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "{:<50} {:>8} {:>9} {:>8} {:>8} {:>9}",
                "QUEUE", "READY", "IN-FLIGHT", "DELAYED", "DEAD", "CONSUMERS"
            );
            for s in stats {
                println!(
                    "{:<50} {:>8} {:>9} {:>8} {:>8} {:>9}",
                    s.queue,
                    fmt(s.ready),
                    fmt(s.in_flight),
                    fmt(s.delayed),
                    fmt(s.dead_letters),
                    fmt(s.consumers)
                );
            }
        }
        return Ok(());
    }
    let topology = crate::demo::topology(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&topology)?);
    } else {
        print!("{topology}");
    }
    Ok(())
}
