//! One module per subcommand.
pub mod bench;
pub mod bench_workload;
pub mod chaos;
pub mod demo;
pub mod dlq;
pub mod docs;
pub mod outbox;
pub mod projections;
pub mod publish;
pub mod sagas;
pub mod serve;
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

/// What to say when a transport cannot enumerate the broker's queues (AMQP 0-9-1 has no way to
/// list them; a RabbitMQ handle knows only the queues it declared itself).
pub fn explain_empty_listing(transport: &dyn herald::Transport) {
    if !transport.capabilities().lists_all_queues {
        eprintln!(
            "RabbitMQ does not list queues over AMQP: name one, e.g. `herald dlq list <service>.<routing key>` \
             (`herald topology` prints the demo's queue names; `rabbitmqctl list_queues` lists them all)"
        );
    }
}
