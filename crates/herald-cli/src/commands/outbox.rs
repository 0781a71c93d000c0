//! `herald outbox`: the transactional outbox on PostgreSQL (see the herald-outbox crate).

use std::sync::Arc;

use herald::Config;
use herald_outbox::postgres::{self, PgOutbox, PgStore, TriggerEvents, TriggerSpec};
use herald_outbox::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

use super::cli_bus;
use crate::CliResult;

/// Where the outbox lives.
#[derive(clap::Args)]
pub struct Database {
    /// PostgreSQL connection string, e.g. `host=127.0.0.1 user=postgres dbname=test`
    #[arg(long, env = "HERALD_OUTBOX_DATABASE", hide_env_values = true)]
    database: String,
    /// Schema of the outbox table
    #[arg(long, default_value = "public")]
    outbox_schema: String,
    /// Name of the outbox table
    #[arg(long, default_value = "herald_outbox")]
    outbox_table: String,
}

impl Database {
    fn outbox(&self, service: &str) -> CliResult<PgOutbox> {
        Ok(PgOutbox::new(service)?
            .schema(&self.outbox_schema)?
            .table(&self.outbox_table)?)
    }
}

/// Outbox commands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Counts by status, oldest pending age, average processing time, recent failures
    Status {
        #[command(flatten)]
        db: Database,
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Install a trigger that stages insert/update/delete (and status-change) events for a table
    Trigger {
        #[command(flatten)]
        db: Database,
        /// The table, e.g. listings
        #[arg(long)]
        table: String,
        /// The table's schema
        #[arg(long, default_value = "public")]
        schema: String,
        /// The column identifying a row (the aggregate id)
        #[arg(long, default_value = "id")]
        key_column: String,
        /// Also stage `<prefix>.status.<value>` when this column changes
        #[arg(long)]
        status_column: Option<String>,
        /// Routing-key prefix [default: the table name]
        #[arg(long)]
        prefix: Option<String>,
        /// Service name written as the events' source
        #[arg(long, default_value = "database")]
        service: String,
        /// Skip inserts
        #[arg(long)]
        no_insert: bool,
        /// Skip updates
        #[arg(long)]
        no_update: bool,
        /// Skip deletes
        #[arg(long)]
        no_delete: bool,
    },
    /// Run a relay: publish staged events to the broker until Ctrl-C
    Relay {
        #[command(flatten)]
        db: Database,
        /// Rows per round
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// The service trigger-written events are published as (their CloudEvents source)
        #[arg(long, default_value = "database")]
        service: String,
    },
}

pub async fn run(config: Config, cmd: Command) -> CliResult<()> {
    match cmd {
        Command::Status { db, json } => {
            let status = postgres::status(&db.database, &db.outbox("herald-cli")?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Trigger {
            db,
            table,
            schema,
            key_column,
            status_column,
            prefix,
            service,
            no_insert,
            no_update,
            no_delete,
        } => {
            let mut spec = TriggerSpec::new(&table)?
                .schema(&schema)?
                .key_column(&key_column)?
                .events(TriggerEvents {
                    insert: !no_insert,
                    update: !no_update,
                    delete: !no_delete,
                });
            if let Some(c) = &status_column {
                spec = spec.status_column(c)?;
            }
            if let Some(p) = &prefix {
                spec = spec.prefix(p)?;
            }
            postgres::install_trigger(&db.database, &db.outbox(&service)?, &spec).await?;
            println!("trigger installed on {schema}.{table}");
        }
        Command::Relay {
            db,
            batch_size,
            service,
        } => {
            let bus = cli_bus(&config).await?;
            let store = Arc::new(PgStore::connect(&db.database, db.outbox(&service)?).await?);
            let relay = Relay::new(
                store,
                bus.publisher().clone(),
                RelayConfig {
                    batch_size: batch_size.max(1),
                    ..RelayConfig::default()
                },
            );
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            eprintln!(
                "relaying {}.{} to {} (Ctrl-C to stop)",
                db.outbox_schema,
                db.outbox_table,
                crate::broker_display(&config)
            );
            relay.run(cancel).await;
            bus.shutdown().await?;
        }
    }
    Ok(())
}
