//! Waiting until a run is over before judging it: nothing ready in a queue, nothing delayed for a
//! retry, nothing in flight, and the history no longer changing.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use herald::Transport;

use crate::History;

/// What the broker still holds for the run's queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not settled, where the transport can tell.
    pub in_flight: u64,
    /// Messages waiting for a delayed redelivery (retry queues).
    pub delayed: u64,
}

impl Activity {
    /// Nothing ready, in flight or delayed.
    pub fn is_idle(&self) -> bool {
        self.ready == 0 && self.in_flight == 0 && self.delayed == 0
    }

    fn add(&mut self, other: Activity) {
        self.ready += other.ready;
        self.in_flight += other.in_flight;
        self.delayed += other.delayed;
    }
}

/// The activity of every queue the transports know (their queue statistics: a RabbitMQ handle
/// counts the queues it declared). A transport without queue statistics counts as idle, so the
/// history alone decides.
pub async fn transport_activity(transports: &[&dyn Transport]) -> herald::Result<Activity> {
    activity(transports, None).await
}

/// The names of every queue `bus` declares, on all its exchanges: what [`queue_activity`]
/// should look at for a run on that bus.
pub fn queue_names(bus: &herald::Bus) -> Vec<String> {
    bus.topologies()
        .into_iter()
        .flat_map(|t| t.queues.into_iter().map(|q| q.name))
        .collect()
}

/// The activity of the queues named `queues` only (see [`queue_names`]): a transport's
/// statistics may list queues other runs left behind (a Kafka handle lists every queue
/// registered on the broker), whose backlog is not this run's.
pub async fn queue_activity(
    transports: &[&dyn Transport],
    queues: &[String],
) -> herald::Result<Activity> {
    activity(transports, Some(queues)).await
}

async fn activity(
    transports: &[&dyn Transport],
    only: Option<&[String]>,
) -> herald::Result<Activity> {
    let mut total = Activity::default();
    for t in transports {
        let Some(stats) = t.queue_statistics() else {
            continue;
        };
        for q in stats.queue_stats().await? {
            if only.is_some_and(|names| !names.contains(&q.queue)) {
                continue;
            }
            total.add(Activity {
                ready: q.ready.unwrap_or(0),
                in_flight: q.in_flight.unwrap_or(0),
                delayed: q.delayed.unwrap_or(0),
            });
        }
    }
    Ok(total)
}

/// How long to wait for quiescence.
#[derive(Debug, Clone, Copy)]
pub struct QuiescenceOptions {
    /// The queues must stay idle and the history unchanged this long (when some pairs are still
    /// unaccounted for: with every pair handled or dead-lettered, one idle look is enough).
    pub settle: Duration,
    /// Give up after this long.
    pub patience: Duration,
    /// How often to look.
    pub poll: Duration,
}

impl Default for QuiescenceOptions {
    fn default() -> Self {
        QuiescenceOptions {
            settle: Duration::from_secs(3),
            patience: Duration::from_secs(120),
            poll: Duration::from_millis(200),
        }
    }
}

/// How the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiescence {
    /// Whether the run went quiet (else the patience ran out: what is missing may still come).
    pub reached: bool,
    /// How long the wait took.
    pub waited: Duration,
    /// The last activity seen.
    pub last: Activity,
}

/// Wait until the run is quiescent: `probe` (see [`transport_activity`]) reports idle queues and
/// either every confirmed pair is handled or dead-lettered, or nothing changed in the history for
/// `options.settle`. A probe that fails (the broker is down) counts as busy. `probe` is also the
/// place to read dead letters back into the history (they decide when every pair is accounted
/// for); it is called every `options.poll`.
pub async fn wait_for_quiescence<P, F>(
    history: &History,
    options: QuiescenceOptions,
    mut probe: P,
) -> Quiescence
where
    P: FnMut() -> F,
    F: Future<Output = herald::Result<Activity>>,
{
    let started = Instant::now();
    let mut last = Activity::default();
    let mut seen = usize::MAX;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let idle = match probe().await {
            Ok(a) => {
                last = a;
                a.is_idle()
            }
            Err(e) => {
                tracing::debug!(error = %e, "quiescence probe failed; the run counts as busy");
                false
            }
        };
        let handlings = history.handling_count();
        if idle && handlings == seen {
            quiet_since.get_or_insert_with(Instant::now);
        } else {
            quiet_since = None;
        }
        seen = handlings;
        let settled = quiet_since.is_some_and(|t| t.elapsed() >= options.settle);
        if (idle && history.pending() == 0) || settled {
            return Quiescence {
                reached: true,
                waited: started.elapsed(),
                last,
            };
        }
        if started.elapsed() >= options.patience {
            return Quiescence {
                reached: false,
                waited: started.elapsed(),
                last,
            };
        }
        tokio::time::sleep(options.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn options() -> QuiescenceOptions {
        QuiescenceOptions {
            settle: Duration::from_secs(2),
            patience: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn returns_at_once_when_everything_is_accounted_for() {
        let h = History::new(["a"]);
        h.confirmed("1", "k", h.now());
        h.handled("a", "1", "k", 1);
        let q = wait_for_quiescence(&h, options(), || async { Ok(Activity::default()) }).await;
        assert!(q.reached);
        assert!(q.waited < Duration::from_millis(50), "{:?}", q.waited);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_while_the_broker_holds_messages_then_settles() {
        let h = History::new(["a"]);
        h.confirmed("1", "k", h.now());
        // The broker reports a message ready for the first second, then nothing; the event is
        // never handled, so only the settle time ends the wait.
        let polls = Arc::new(AtomicU64::new(0));
        let q = wait_for_quiescence(&h, options(), || {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(Activity {
                    ready: u64::from(n < 10),
                    ..Activity::default()
                })
            }
        })
        .await;
        assert!(q.reached);
        assert!(
            q.waited >= Duration::from_secs(3) && q.waited < Duration::from_secs(4),
            "{:?}",
            q.waited
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_its_patience_while_the_broker_is_down() {
        let h = History::new(["a"]);
        h.confirmed("1", "k", h.now());
        let q = wait_for_quiescence(&h, options(), || async { Err(herald::Error::Closed) }).await;
        assert!(!q.reached);
        assert!(q.waited >= Duration::from_secs(30));
    }

    /// A queue another run left behind, with a backlog, does not keep this run from being idle.
    #[tokio::test]
    async fn queue_activity_counts_only_the_named_queues() {
        use herald::topology::QueueSpec;
        use herald::transport::{memory::MemoryTransport, PublishOptions};
        let t = MemoryTransport::new();
        let mut topology = herald::Topology::new("ex");
        topology.add_queue(QueueSpec::new("mine", "mine.#"));
        topology.add_queue(QueueSpec::new("left-behind", "#"));
        t.apply_topology(&topology).await.unwrap();
        let e = herald::Envelope::new("other.event", 1, "other.event", "test", "{}".into());
        t.publish("ex", &[e], PublishOptions::default())
            .await
            .unwrap();
        let all = transport_activity(&[&t]).await.unwrap();
        assert_eq!(all.ready, 1, "{all:?}");
        let mine = queue_activity(&[&t], &["mine".to_string()]).await.unwrap();
        assert!(mine.is_idle(), "{mine:?}");
    }
}
