//! One module per subcommand.
pub mod bench;
pub mod demo;
pub mod dlq;
pub mod outbox;
pub mod publish;
pub mod tail;
pub mod topology;

use herald::{Bus, Config};

use crate::CliResult;

/// A bus for the CLI itself, publishing as `herald-cli`.
pub async fn cli_bus(config: &Config) -> CliResult<Bus> {
    Ok(Bus::builder()
        .config(config.clone())
        .service("herald-cli")
        .build()
        .await?)
}
