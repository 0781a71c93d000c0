//! `herald chaos`: a publish/consume workload on any broker while a fault command runs on a
//! schedule, judged by the history checker (`herald-check`).
//!
//! Workload: `keys` publishing tasks, each publishing its key's events one after another (the
//! next once the previous is confirmed, so each key has an order to keep), together `events`
//! confirmed events; a failed publish is sent again with the same id until confirmed. One
//! consumer service takes the queue with one handler call at a time, so Herald promises the
//! order per key, and records every handling. Faults run from `first_fault` on, every `every`,
//! one at a time, while publishing lasts. Then the run waits for quiescence and is judged.

mod faults;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::{Bus, Config, Envelope, SubscribeOptions};
use herald_check::{
    publish_until_confirmed, queue_activity, queue_names, wait_for_quiescence, FaultReport,
    History, Quiescence, QuiescenceOptions, Verdict,
};

use crate::CliResult;

pub use self::faults::FaultSchedule;

/// The consuming service.
pub const CONSUMER: &str = "chaos-consumer";
const PUBLISHER: &str = "chaos-publisher";
/// The exchange a run uses unless told otherwise: its own, so other traffic never mixes in.
pub const EXCHANGE: &str = "herald.chaos";
const ROUTING_KEY: &str = "chaos.event";

/// One run's settings.
pub struct ChaosOptions {
    /// Confirmed events to publish.
    pub events: u64,
    /// Publishing tasks, one per ordering key.
    pub keys: u64,
    /// Events per second over all keys (0: as fast as confirmed).
    pub rate: u64,
    /// The faults, if any.
    pub faults: Option<FaultSchedule>,
    /// How long to wait for quiescence after publishing.
    pub quiescence: QuiescenceOptions,
    /// A publish that is not confirmed in this long (over every attempt) is given up.
    pub give_up_after: Duration,
    /// Print progress every second.
    pub progress: bool,
}

/// What a run found.
pub struct ChaosReport {
    /// The checker's verdict.
    pub verdict: Verdict,
    /// Each fault's effect on the run.
    pub faults: Vec<FaultReport>,
    /// Whether the run went quiet before the verdict.
    pub quiescence: Quiescence,
    /// From the first publish until the last one was confirmed.
    pub publishing: Duration,
    /// The whole run, quiescence included.
    pub elapsed: Duration,
    /// Publish latencies (first attempt to confirm) over the run, p50 and p99.
    pub publish_p50: Option<Duration>,
    /// See `publish_p50`.
    pub publish_p99: Option<Duration>,
    /// The p99 of the publishes started while a fault command ran.
    pub failover_p99: Option<Duration>,
}

/// Run the workload on `config.broker`.
pub async fn run(mut config: Config, options: ChaosOptions) -> CliResult<ChaosReport> {
    if config.exchange == Config::default().exchange {
        config.exchange = EXCHANGE.to_string();
    }
    let history = History::new([CONSUMER]).promise_order(CONSUMER);
    let consumer = Bus::builder()
        .config(config.clone())
        .service(CONSUMER)
        .build()
        .await?;
    let recorder = history.recorder(CONSUMER);
    consumer.subscribe_raw(
        "events",
        "chaos.#",
        |_ctx: herald::Context| async {},
        SubscribeOptions::new().concurrency(1).layer(recorder),
    )?;
    consumer.start().await?;
    let publisher = Bus::builder()
        .config(config)
        .service(PUBLISHER)
        .build()
        .await?;

    let started = Instant::now();
    let publishing_done = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let faults = options
        .faults
        .clone()
        .map(|s| tokio::spawn(s.run(history.clone(), publishing_done.clone())));
    let progress = options.progress.then(|| {
        let (history, confirmed) = (history.clone(), confirmed.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "  confirmed {:>8}  handled {:>8}",
                    confirmed.load(Ordering::Relaxed),
                    history.handling_count()
                );
            }
        })
    });

    let keys = options.keys.max(1);
    let mut tasks = Vec::new();
    for k in 0..keys {
        // Key k publishes events k, k + keys, k + 2 keys, ...
        let count = options.events / keys + u64::from(k < options.events % keys);
        let interval =
            (options.rate > 0).then(|| Duration::from_secs_f64(keys as f64 / options.rate as f64));
        let key_task = KeyPublisher {
            bus: publisher.clone(),
            history: history.clone(),
            key: format!("key-{k}"),
            count,
            interval,
            give_up_after: options.give_up_after,
            confirmed: confirmed.clone(),
        };
        tasks.push(tokio::spawn(key_task.run()));
    }
    let mut first_error = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            first_error.get_or_insert(e);
        }
    }
    let publishing = started.elapsed();
    publishing_done.store(true, Ordering::SeqCst);
    if let Some(f) = faults {
        // A fault under way finishes first: a node it killed must be back before judging.
        f.await?;
    }
    if let Some(e) = first_error {
        eprintln!("publishing stopped early: {e}");
    }

    let transport = consumer.transport().clone();
    // This run's queues only: the broker may hold others, left by earlier runs.
    let queues = queue_names(&consumer);
    let quiescence = wait_for_quiescence(&history, options.quiescence, || {
        let (t, queues) = (transport.clone(), &queues);
        async move { queue_activity(&[&*t], queues).await }
    })
    .await;
    if let Some(p) = progress {
        p.abort();
    }
    consumer.shutdown().await?;
    publisher.shutdown().await?;

    let published = history.published();
    let latencies = |during_fault: bool, reports: &[FaultReport]| {
        let mut v: Vec<Duration> = published
            .iter()
            .filter(|p| {
                !during_fault
                    || reports
                        .iter()
                        .any(|f| p.sent >= f.started && p.sent < f.started + f.took)
            })
            .map(|p| p.confirmed.saturating_sub(p.sent))
            .collect();
        (
            herald_check::percentile(&mut v, 0.5),
            herald_check::percentile(&mut v, 0.99),
        )
    };
    let fault_reports = history.faults();
    let (publish_p50, publish_p99) = latencies(false, &fault_reports);
    let (_, failover_p99) = latencies(true, &fault_reports);
    Ok(ChaosReport {
        verdict: history.check(),
        faults: fault_reports,
        quiescence,
        publishing,
        elapsed: started.elapsed(),
        publish_p50,
        publish_p99,
        failover_p99,
    })
}

/// Publishes one key's events in order: each once the previous is confirmed.
struct KeyPublisher {
    bus: Bus,
    history: History,
    key: String,
    count: u64,
    interval: Option<Duration>,
    give_up_after: Duration,
    confirmed: Arc<AtomicU64>,
}

impl KeyPublisher {
    async fn run(self) -> Result<(), String> {
        let mut next_at = tokio::time::Instant::now();
        for seq in 0..self.count {
            let body = format!(r#"{{"key":"{}","seq":{seq}}}"#, self.key);
            let mut envelope =
                Envelope::new(ROUTING_KEY, 1, ROUTING_KEY, PUBLISHER, Bytes::from(body));
            envelope.subject = Some(self.key.clone());
            self.publish(envelope).await?;
            if let Some(iv) = self.interval {
                next_at += iv;
                tokio::time::sleep_until(next_at).await;
            }
        }
        Ok(())
    }

    /// Publish `envelope` until the broker confirms it (the same id each time: a copy the
    /// broker kept from a failed attempt is a duplicate, not a new event).
    async fn publish(&self, envelope: Envelope) -> Result<(), String> {
        publish_until_confirmed(
            &self.history,
            self.bus.publisher(),
            envelope,
            &self.key,
            self.give_up_after,
        )
        .await
        .map_err(|e| {
            format!(
                "{}: a publish was not confirmed in {:?}: {e}",
                self.key, self.give_up_after
            )
        })?;
        self.confirmed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
