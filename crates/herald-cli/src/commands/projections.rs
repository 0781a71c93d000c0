//! `herald projections`: projections (herald-es) with their checkpoint and lag; rebuild one.

use std::time::{Duration, Instant};

use herald::Config;

use crate::CliResult;

/// The store a command reads.
#[derive(clap::Args)]
pub struct Store {
    /// The store: sqlite://PATH, postgres://USER@HOST/DB#SCHEMA or a libpq conninfo
    #[arg(long, env = "HERALD_ES_DATABASE", default_value = crate::demo::orders::DEFAULT_DATABASE)]
    database: String,
}

/// List projections or rebuild one.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Each projection's checkpoint, how many events it is behind, and since when
    List(Store),
    /// Rebuild a projection from the first event: the process running it clears its read model
    /// and replays every event, in one transaction with its checkpoint
    Rebuild {
        /// The projection's name
        name: String,
        #[command(flatten)]
        store: Store,
        /// Wait up to this many seconds for the rebuild to start and catch up
        #[arg(long)]
        wait: Option<u64>,
    },
}

pub async fn run(_config: Config, command: Command) -> CliResult<()> {
    match command {
        Command::List(store) => {
            let db = open(&store).await?;
            let list = db.events().projections().await?;
            if list.is_empty() {
                println!("no projections");
            }
            for p in list {
                println!(
                    "{:<28} checkpoint {:<16} behind {:>8} events, oldest {:>7.1}s{}",
                    p.name,
                    p.checkpoint.to_string(),
                    p.backlog.events,
                    p.backlog.age_secs(),
                    if p.rebuild_requested {
                        "  (rebuild requested)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::Rebuild { name, store, wait } => {
            let db = open(&store).await?;
            db.events().request_rebuild(&name).await?;
            eprintln!("rebuild of {name} requested; the process running it resets its read model and replays every event");
            let Some(secs) = wait else {
                return Ok(());
            };
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                let p = db
                    .events()
                    .projections()
                    .await?
                    .into_iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| format!("projection {name} disappeared"))?;
                if !p.rebuild_requested && p.backlog.events == 0 {
                    println!("{name} rebuilt: checkpoint {}", p.checkpoint);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name} has not {} after {secs}s: is the process that runs it up?",
                        if p.rebuild_requested {
                            "started rebuilding"
                        } else {
                            "caught up"
                        }
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn open(store: &Store) -> CliResult<herald_es::Database> {
    Ok(herald_es::open(&store.database, "herald-cli", herald_es::Upcasters::new()).await?)
}
