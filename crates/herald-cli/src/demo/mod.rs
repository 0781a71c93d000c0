//! `herald demo`: the reference 003 system (KnowledgeNest) on any transport.
//!
//! Publishers: auth-service (`user.registered`), course-service (`course.created`,
//! `course.enrolled`), review-service (`review.created`). Consumers: notification-service
//! (every event) and analytics-service (every event, failing intermittently so retries and dead
//! letters show). The run is recorded by the history checker (`herald-check`): every confirmed
//! publish, and every successful handling per consuming service. Once the run is quiescent
//! (nothing ready or waiting for a retry in the queues, no new handling, or every pair accounted
//! for), the dead letters are read back from the broker and each confirmed event must have been
//! handled, or be in the dead letters, for each service: by distinct ids, so a duplicate
//! handling or a message dead-lettered twice never makes up for one that is missing.

mod catalog;
pub mod events;
pub mod orders;
mod report;
pub mod services;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::{Bus, Config, Topology};
use herald_check::{queue_activity, queue_names, wait_for_quiescence, History, QuiescenceOptions};

pub use self::catalog::catalog;
pub use self::report::Report;
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
    let history = History::new(services::CONSUMERS);
    let consumers = services::start_consumers(&config, &history, &options).await?;
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
    let history = History::new(services::CONSUMERS);
    let consumers = services::start_consumers(&config, &history, &options).await?;
    let publishers = services::Publishers::connect(&config).await?;
    eprintln!(
        "herald demo on {} (exchange `{}`)\n",
        crate::broker_display(&config),
        config.exchange
    );
    eprintln!("{}", merged_topology(&consumers));

    let stop = stop_on_ctrl_c();
    let started = Instant::now();
    let progress = options.progress.then(|| {
        let (history, consumers) = (history.clone(), consumers.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let retried: u64 = consumers.iter().map(|b| b.metrics().retried).sum();
                let dead: u64 = consumers.iter().map(|b| b.metrics().dead_lettered).sum();
                eprintln!(
                    "  published {:>7}  handled {:>7}  retried {:>6}  dead-lettered {:>5}  pending {:>6}",
                    history.confirmed_count(),
                    history.handled_pairs(),
                    retried,
                    dead,
                    history.pending().saturating_sub(dead)
                );
            }
        })
    });

    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(1.0 / options.rate as f64));
    let mut next_at = Instant::now();
    let mut i = 0u64;
    while options.events.is_none_or(|n| i < n) && !stop.load(Ordering::Relaxed) {
        let sent = history.now();
        let (id, key) = publishers.publish_next(i).await?;
        history.confirmed(&id, key, sent);
        i += 1;
        if let Some(iv) = interval {
            next_at += iv;
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    // Judge only once the run is over: nothing ready or delayed in the queues, and every pair
    // handled or dead-lettered (the dead letters are read back whenever the queues are idle, at
    // most once a second) or no new handling for a while.
    let quiet = wait_until_quiet(&history, &consumers).await;
    if let Some(p) = progress {
        p.abort();
    }
    record_dead_letters(&history, &consumers).await?;
    let retried = consumers.iter().map(|b| b.metrics().retried).sum();
    for c in &consumers {
        c.shutdown().await?;
    }
    publishers.shutdown().await?;
    Ok(Report::new(
        &history.check(),
        retried,
        quiet,
        started.elapsed(),
    ))
}

async fn wait_until_quiet(history: &History, consumers: &[Bus]) -> bool {
    let last_read = std::sync::Mutex::new(None::<Instant>);
    // This run's queues only: the broker may hold others (a `herald tail` left behind).
    let queues: Vec<String> = consumers.iter().flat_map(queue_names).collect();
    let options = QuiescenceOptions {
        // Retries in the demo wait up to 0.8 s; a settle longer than that cannot mistake a
        // retry in flight for the end.
        settle: Duration::from_secs(3),
        patience: Duration::from_secs(180),
        ..QuiescenceOptions::default()
    };
    let quiet = wait_for_quiescence(history, options, || {
        let (last_read, queues) = (&last_read, &queues);
        async move {
            let transports: Vec<&dyn herald::Transport> =
                consumers.iter().map(|b| &**b.transport()).collect();
            let activity = queue_activity(&transports, queues).await?;
            let due = {
                let mut last = last_read.lock().unwrap_or_else(|e| e.into_inner());
                let due = activity.is_idle()
                    && last.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1));
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                record_dead_letters(history, consumers)
                    .await
                    .map_err(|e| herald::Error::transport("demo", e))?;
            }
            Ok(activity)
        }
    })
    .await;
    if !quiet.reached {
        eprintln!(
            "the run did not go quiet in {:.0}s (last seen: {:?}); what is missing may still arrive",
            quiet.waited.as_secs_f64(),
            quiet.last
        );
    }
    quiet.reached
}

/// Record the ids in each consumer service's dead letters, read back from the broker.
async fn record_dead_letters(history: &History, consumers: &[Bus]) -> CliResult<()> {
    for (service, bus) in services::CONSUMERS.iter().zip(consumers) {
        let admin = herald::transport::dead_letter_admin(&**bus.transport())?;
        for q in bus.topology().queues {
            for d in admin.dead_letters(&q.name, 1_000_000).await? {
                history.dead_lettered(service, &d.envelope.id);
            }
        }
    }
    Ok(())
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
