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

/// How long a one-shot command waits for the broker unless configured: it should fail within
/// seconds on a broker that is down, not sit out a transport's 30 s outage timeout.
pub const ONE_SHOT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A bus for the CLI itself, publishing as `herald-cli`, giving up on an unreachable broker
/// after `connect_timeout_ms` (5 s unless configured).
pub async fn cli_bus(config: &Config) -> CliResult<Bus> {
    let mut config = config.clone();
    if config.connect_timeout_ms == 0 {
        config.connect_timeout_ms = ONE_SHOT_CONNECT_TIMEOUT_MS;
    }
    Ok(Bus::builder()
        .config(config)
        .service("herald-cli")
        .build()
        .await?)
}

/// Counts for every queue the CLI can know of: every queue on a broker that lists them;
/// otherwise (RabbitMQ over AMQP cannot list queues) the demo's queues and those named on the
/// command line, looked up one by one, the ones that exist.
pub async fn known_queue_stats(
    config: &Config,
    transport: &dyn herald::Transport,
    named: &[String],
) -> CliResult<Vec<herald::transport::QueueStats>> {
    let stats = herald::transport::queue_statistics(transport)?;
    if transport.capabilities().lists_all_queues {
        return Ok(stats.queue_stats().await?);
    }
    let mut names: Vec<String> = crate::demo::topology(config)
        .await?
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect();
    names.extend(named.iter().cloned());
    names.sort();
    names.dedup();
    Ok(stats.stats_of(&names).await?)
}

/// What to say when a transport cannot enumerate the broker's queues (AMQP 0-9-1 has no way to
/// list them): which queues were looked up, and how to name others.
pub fn explain_known_queues(transport: &dyn herald::Transport) {
    if !transport.capabilities().lists_all_queues {
        eprintln!(
            "RabbitMQ does not list queues over AMQP: these are the demo's queues that exist; \
             name others with --queue <service>.<routing key> (repeatable), \
             or see them all with `rabbitmqctl list_queues`"
        );
    }
}
