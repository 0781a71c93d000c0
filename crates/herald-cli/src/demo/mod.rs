//! `herald demo`: the reference 003 system (KnowledgeNest) on any transport.
//!
//! Publishers: auth-service (`user.registered`), course-service (`course.created`,
//! `course.enrolled`), review-service (`review.created`). Consumers: notification-service
//! (every event) and analytics-service (every event, failing intermittently so retries and dead
//! letters show). Every published id is tracked per consuming service: at the end each must be
//! handled or found in the dead letters; anything else is reported as lost.

mod catalog;
pub mod events;
pub mod orders;
pub mod services;
mod tally;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, Config, Topology};

pub use self::catalog::catalog;
pub use self::tally::Report;
use self::tally::Tally;
use crate::CliResult;

/// Options for one demo run.
pub struct DemoOptions {
    /// Publish this many events, wait for them all, and exit. None: run until Ctrl-C.
    pub events: Option<u64>,
    /// Events per second while publishing (0 = as fast as the broker accepts them).
    pub rate: u64,
    /// Fraction of analytics first attempts that fail (then succeed on retry).
    pub fail_rate: f64,
    /// Fraction of analytics messages that always fail (and end in the dead letters).
    pub poison_rate: f64,
    /// Print a progress line every half second.
    pub progress: bool,
}

/// The demo's topology, computed from its subscriptions without touching a broker.
pub async fn topology(config: &Config) -> CliResult<Topology> {
    let mut config = config.clone();
    config.broker = "memory://herald-topology".into();
    let options = DemoOptions {
        events: Some(0),
        rate: 0,
        fail_rate: 0.0,
        poison_rate: 0.0,
        progress: false,
    };
    let consumers = services::start_consumers(
        &config,
        Arc::new(Tally::new(&services::CONSUMERS)),
        &options,
    )
    .await?;
    let t = merged_topology(&consumers);
    for c in consumers {
        c.shutdown().await?;
    }
    Ok(t)
}

fn merged_topology(buses: &[Bus]) -> Topology {
    let mut t = buses[0].topology();
    for b in &buses[1..] {
        t.merge(b.topology());
    }
    t
}

/// Run the demo; returns the final report.
pub async fn run(config: Config, options: DemoOptions) -> CliResult<Report> {
    let tally = Arc::new(Tally::new(&services::CONSUMERS));
    let consumers = services::start_consumers(&config, tally.clone(), &options).await?;
    let publishers = services::Publishers::connect(&config).await?;
    eprintln!(
        "herald demo on {} (exchange `{}`)\n",
        crate::broker_display(&config),
        config.exchange
    );
    eprintln!("{}", merged_topology(&consumers));

    let stop = stop_on_ctrl_c();
    let started = Instant::now();
    let dead_count = {
        let consumers = consumers.clone();
        move || {
            consumers
                .iter()
                .map(|b| b.metrics().dead_lettered)
                .sum::<u64>()
        }
    };
    let progress = options.progress.then(|| {
        let (tally, consumers, dead_count) = (tally.clone(), consumers.clone(), dead_count.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let retried: u64 = consumers.iter().map(|b| b.metrics().retried).sum();
                let dead = dead_count();
                eprintln!(
                    "  published {:>7}  handled {:>7}  retried {:>6}  dead-lettered {:>5}  pending {:>6}",
                    tally.published_count(),
                    tally.handled_count(),
                    retried,
                    dead,
                    tally.pending(dead)
                );
            }
        })
    });

    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(1.0 / options.rate as f64));
    let mut next_at = Instant::now();
    let mut i = 0u64;
    while options.events.is_none_or(|n| i < n) && !stop.load(Ordering::Relaxed) {
        let id = publishers.publish_next(i).await?;
        tally.published(&id);
        i += 1;
        if let Some(iv) = interval {
            next_at += iv;
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    // Wait until every published event is handled or dead-lettered by both services.
    let patience = Instant::now() + Duration::from_secs(120);
    while tally.pending(dead_count()) > 0 && Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let retried = consumers.iter().map(|b| b.metrics().retried).sum();
    let dead = dead_letter_ids(&consumers).await?;
    for c in &consumers {
        c.shutdown().await?;
    }
    publishers.shutdown().await?;
    Ok(tally.report(&dead, retried, started.elapsed()))
}

/// The ids in each consumer service's dead letters, read back from the broker.
async fn dead_letter_ids(consumers: &[Bus]) -> CliResult<HashMap<&'static str, HashSet<String>>> {
    let mut out = HashMap::new();
    for (service, bus) in services::CONSUMERS.iter().zip(consumers) {
        let mut ids = HashSet::new();
        let admin = herald::transport::dead_letter_admin(&**bus.transport())?;
        for q in bus.topology().queues {
            for d in admin.dead_letters(&q.name, 1_000_000).await? {
                ids.insert(d.envelope.id);
            }
        }
        out.insert(*service, ids);
    }
    Ok(out)
}

fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: waiting for what was published…");
            flag.store(true, Ordering::Relaxed);
        }
    });
    stop
}
