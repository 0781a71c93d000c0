//! `herald sagas`: saga instances with their state and age, stuck ones flagged.

use std::time::Duration;

use herald::Config;
use herald_es::saga::InstanceQuery;

use crate::CliResult;

/// List saga instances (herald-es) from an event store.
#[derive(clap::Args)]
pub struct Args {
    /// The store: sqlite://PATH, postgres://USER@HOST/DB#SCHEMA or a libpq conninfo
    #[arg(long, env = "HERALD_ES_DATABASE", default_value = crate::demo::orders::DEFAULT_DATABASE)]
    database: String,
    /// Only this saga's instances
    #[arg(long)]
    saga: Option<String>,
    /// Only the stuck ones: active, and neither moving nor waiting for a timeout still to come
    #[arg(long)]
    stuck: bool,
    /// Seconds without progress that make an active instance stuck
    #[arg(long, default_value_t = 60)]
    stuck_after_secs: u64,
    /// At most this many, the oldest first
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(_config: Config, args: Args) -> CliResult<()> {
    let db = herald_es::open(&args.database, "herald-cli", herald_es::Upcasters::new()).await?;
    let query = InstanceQuery {
        saga: args.saga,
        stuck_only: args.stuck,
        stuck_after: Duration::from_secs(args.stuck_after_secs),
        limit: args.limit.max(1),
    };
    let instances = db.sagas().instances(&query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&instances)?);
        return Ok(());
    }
    if instances.is_empty() {
        println!(
            "{}",
            if args.stuck {
                "no stuck saga instances"
            } else {
                "no saga instances"
            }
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:<18} {:<12} {:>9} {:>9}  next timeout",
        "saga", "instance", "state", "status", "age", "idle"
    );
    for i in &instances {
        let next = i
            .next_timeout_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<28} {:<18} {:<12} {:>8.1}s {:>8.1}s  {next}{}",
            i.saga,
            i.instance_id,
            i.state_name,
            i.status.as_str(),
            i.age_secs,
            i.idle_secs,
            if i.stuck { "  STUCK" } else { "" }
        );
    }
    let stuck = instances.iter().filter(|i| i.stuck).count();
    eprintln!("{} instances, {stuck} stuck", instances.len());
    Ok(())
}
