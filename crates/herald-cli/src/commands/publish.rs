//! `herald publish`.

use std::time::Duration;

use bytes::Bytes;
use herald::event::routing_key_for;
use herald::{Config, Envelope};

use super::cli_bus;
use crate::CliResult;

/// Publish one event.
#[derive(clap::Args)]
pub struct Args {
    /// Event name, e.g. course.enrolled
    event: String,
    /// The JSON body, e.g. '{"user_id": 1}'
    json: String,
    /// Contract version (2 and above route as `<event>.v<N>`)
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// Routing key [default: derived from the event name and version]
    #[arg(long)]
    routing_key: Option<String>,
    /// Priority: 0..=9, or a level: low (0), normal (1), high (2), critical (3)
    #[arg(long, default_value = "0", value_parser = parse_priority)]
    priority: u8,
    /// Expire after this many milliseconds
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// CloudEvents subject
    #[arg(long)]
    subject: Option<String>,
    /// Correlation id
    #[arg(long)]
    correlation_id: Option<String>,
    /// Publish even if no queue is bound for the routing key
    #[arg(long)]
    allow_unroutable: bool,
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    serde_json::from_str::<serde_json::Value>(&args.json)
        .map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let bus = cli_bus(&config).await?;
    let key = args
        .routing_key
        .unwrap_or_else(|| routing_key_for(&args.event, args.version));
    let mut envelope = Envelope::new(
        &args.event,
        args.version,
        &key,
        "herald-cli",
        Bytes::from(args.json),
    );
    envelope.priority = args.priority;
    envelope.ttl = args.ttl_ms.map(Duration::from_millis);
    envelope.subject = args.subject;
    envelope.correlation_id = args.correlation_id;
    let id = envelope.id.clone();
    let result = bus
        .publisher()
        .publish_envelopes(vec![envelope], args.allow_unroutable)
        .await;
    bus.shutdown().await?;
    result?;
    println!("{id}");
    Ok(())
}

/// `--priority`: a number 0..=9 or a named level.
fn parse_priority(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n <= 9 => Ok(n),
        Ok(_) => Err("a numeric priority is 0..=9".into()),
        Err(_) => s.parse::<herald::Priority>().map(u8::from),
    }
}
