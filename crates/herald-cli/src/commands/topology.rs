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
    /// The queues that exist on the broker now, with counts, instead of the demo's declared
    /// topology (on RabbitMQ: the demo's queues and those named with --queue)
    #[arg(long)]
    live: bool,
    /// With --live: also count this queue (repeatable; for brokers that cannot list queues)
    #[arg(long = "queue", value_name = "QUEUE", requires = "live")]
    queues: Vec<String>,
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
        let stats = super::known_queue_stats(&config, &**bus.transport(), &args.queues).await;
        if stats.is_ok() {
            super::explain_known_queues(&**bus.transport());
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
