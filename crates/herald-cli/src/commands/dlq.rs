//! `herald dlq`.

use herald::Config;

use super::cli_bus;
use crate::CliResult;

/// Dead-letter management.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Dead-letter counts per queue, or the dead letters of one queue. On RabbitMQ, which
    /// cannot list queues over AMQP, the counts cover the demo's queues and those named with
    /// --queue
    List {
        /// A work queue, e.g. analytics-service.course.enrolled
        queue: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Also count this queue (repeatable; for brokers that cannot list queues)
        #[arg(long = "queue", value_name = "QUEUE")]
        queues: Vec<String>,
    },
    /// One dead letter in full: failure metadata, headers and body
    Show {
        /// The work queue
        queue: String,
        /// The event id
        id: String,
    },
    /// Put dead letters back on their work queue, attempt count reset
    Replay {
        /// The work queue
        queue: String,
        /// These ids (repeatable)
        #[arg(long = "id")]
        ids: Vec<String>,
        /// All of them
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters
    Purge {
        /// The work queue
        queue: String,
        /// These ids (repeatable)
        #[arg(long = "id")]
        ids: Vec<String>,
        /// All of them
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

fn selection(ids: &[String], all: bool) -> CliResult<Option<&[String]>> {
    match (ids.is_empty(), all) {
        (true, false) => Err("say which: --id ID (repeatable) or --all".into()),
        (_, true) => Ok(None),
        (false, false) => Ok(Some(ids)),
    }
}

pub async fn run(config: Config, cmd: Command) -> CliResult<()> {
    let bus = cli_bus(&config).await?;
    let t = bus.transport().clone();
    let result: CliResult<()> = async {
        let admin = herald::transport::dead_letter_admin(&*t)?;
        match cmd {
            Command::List {
                queue: None,
                queues,
                ..
            } => {
                println!(
                    "{:<50} {:>8} {:>8} {:>8}",
                    "QUEUE", "READY", "DELAYED", "DEAD"
                );
                let fmt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                let stats = super::known_queue_stats(&config, &*t, &queues).await?;
                super::explain_known_queues(&*t);
                for s in stats {
                    println!(
                        "{:<50} {:>8} {:>8} {:>8}",
                        s.queue,
                        fmt(s.ready),
                        fmt(s.delayed),
                        fmt(s.dead_letters)
                    );
                }
            }
            Command::List {
                queue: Some(q),
                limit,
                ..
            } => {
                let dead = admin.dead_letters(&q, limit).await?;
                if dead.is_empty() {
                    println!("no dead letters on {q}");
                }
                for d in dead {
                    let h = &d.envelope.headers;
                    println!(
                        "{}  {:<22} attempts {:<2} {}  {}",
                        d.envelope.id,
                        d.envelope.event_type,
                        d.envelope.attempt,
                        h.get(herald::envelope::header::DEAD_LETTERED_AT)
                            .map_or("", String::as_str),
                        d.error()
                    );
                }
            }
            Command::Show { queue, id } => {
                let dead = admin.dead_letters(&queue, usize::MAX).await?;
                let d = dead
                    .into_iter()
                    .find(|d| d.envelope.id == id)
                    .ok_or_else(|| format!("no dead letter {id} on {queue}"))?;
                let e = &d.envelope;
                println!("id:           {}", e.id);
                println!("type:         {} v{}", e.event_type, e.event_version);
                println!("routing key:  {}", e.routing_key);
                println!("source:       {}", e.source);
                println!("time:         {}", herald::envelope::format_time(&e.time));
                println!("attempts:     {}", e.attempt);
                for (k, v) in &e.headers {
                    println!("{k}: {v}");
                }
                let body = serde_json::from_slice::<serde_json::Value>(&e.body)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| String::from_utf8_lossy(&e.body).into_owned());
                println!("\n{body}");
            }
            Command::Replay { queue, ids, all } => {
                let n = admin
                    .replay_dead_letters(&queue, selection(&ids, all)?)
                    .await?;
                println!("replayed {n} dead letters to {queue}");
            }
            Command::Purge { queue, ids, all } => {
                let n = admin
                    .purge_dead_letters(&queue, selection(&ids, all)?)
                    .await?;
                println!("purged {n} dead letters from {queue}");
            }
        }
        Ok(())
    }
    .await;
    bus.shutdown().await?;
    result
}
