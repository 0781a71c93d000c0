//! `herald tail`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald::{Config, Context, SubscribeOptions};
use tokio::sync::Notify;

use super::cli_bus;
use crate::CliResult;

/// Print matching events as they arrive.
#[derive(clap::Args)]
pub struct Args {
    /// Routing-key pattern, e.g. `course.*` or `#`
    pattern: String,
    /// Stop after this many events
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line (envelope attributes and body; a body that is not JSON is a string)
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: Args) -> CliResult<()> {
    let bus = cli_bus(&config).await?;
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (s, d, count, json) = (seen.clone(), done.clone(), args.count, args.json);
    let suffix = format!("tail.{}", uuid_suffix());
    // Raw: an observer shows every message, JSON or not, and dead-letters nothing.
    bus.subscribe_raw(
        &suffix,
        &args.pattern,
        move |ctx: Context| {
            let n = s.fetch_add(1, Ordering::SeqCst) + 1;
            if count.is_none_or(|c| n <= c) {
                print_event(&ctx, &ctx.envelope().body_value(), json);
            }
            if count.is_some_and(|c| n >= c) {
                d.notify_one();
            }
            std::future::ready(())
        },
        SubscribeOptions::new().temporary().concurrency(1),
    )?;
    bus.start().await?;
    eprintln!(
        "tailing `{}` on {} (Ctrl-C to stop)",
        args.pattern,
        crate::broker_display(&config)
    );
    tokio::select! {
        _ = done.notified() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    bus.shutdown().await?;
    Ok(())
}

fn uuid_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn print_event(ctx: &Context, body: &serde_json::Value, json: bool) {
    let e = ctx.envelope();
    if json {
        let line = serde_json::json!({
            "id": e.id, "type": e.event_type, "source": e.source, "time": herald::envelope::format_time(&e.time),
            "routing_key": e.routing_key, "correlation_id": e.correlation_id, "causation_id": e.causation_id,
            "attempt": e.attempt, "data": body,
        });
        println!("{line}");
    } else {
        println!(
            "{} {:<20} {} from {}  {}",
            e.time.format("%H:%M:%S%.3f"),
            e.routing_key,
            e.id,
            e.source,
            body
        );
    }
}
