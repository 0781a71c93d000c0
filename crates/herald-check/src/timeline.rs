//! Publish latency and handling gaps around faults: how long a fault stalled the run, and when
//! it recovered.

use std::time::Duration;

use crate::history::{Fault, Handled, Published};

/// A publish counts as slow, when judging recovery, above this many times the p99 before the
/// first fault ...
const SLOW_FACTOR: u32 = 5;
/// ... and never below this.
const SLOW_FLOOR: Duration = Duration::from_millis(200);

/// What one fault did to the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// The fault's label (its command).
    pub label: String,
    /// When it started, since the history began.
    pub started: Duration,
    /// How long it ran.
    pub took: Duration,
    /// Whether it reported success.
    pub succeeded: bool,
    /// Publishes started while it ran.
    pub publishes: usize,
    /// Their 99th percentile latency (`None` without publishes).
    pub publish_p99: Option<Duration>,
    /// Their longest latency.
    pub publish_max: Option<Duration>,
    /// The longest any publish it is to blame for waited (sent before or during it, completed
    /// before the next fault): the failover as a publisher sees it.
    pub stall: Duration,
    /// From the fault's start until the last slow publish it is to blame for had completed: how
    /// long publishing took to be itself again. A publish is slow above five times the p99
    /// before the first fault (at least 200 ms), and the fault to blame is the last one that
    /// started before it completed. Zero when no publish was slow.
    pub recovery: Duration,
    /// The longest time without a handling, from the fault's start until the next fault.
    pub handling_gap: Duration,
}

/// The `q` quantile (0..=1) of `values`, by nearest rank.
pub fn percentile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

pub(crate) struct Timeline<'a> {
    published: &'a [Published],
    handled: &'a [Handled],
}

fn latency(p: &Published) -> Duration {
    p.confirmed.saturating_sub(p.sent)
}

impl<'a> Timeline<'a> {
    pub fn new(published: &'a [Published], handled: &'a [Handled]) -> Self {
        Timeline { published, handled }
    }

    fn latencies(&self, from: Duration, until: Duration) -> Vec<Duration> {
        self.published
            .iter()
            .filter(|p| p.sent >= from && p.sent < until)
            .map(latency)
            .collect()
    }

    pub fn around(&self, faults: &[Fault]) -> Vec<FaultReport> {
        let first = faults.first().map_or(Duration::MAX, |f| f.started);
        let baseline =
            percentile(&mut self.latencies(Duration::ZERO, first), 0.99).unwrap_or(Duration::ZERO);
        let slow = (baseline * SLOW_FACTOR).max(SLOW_FLOOR);
        let end = self
            .published
            .iter()
            .map(|p| p.confirmed)
            .chain(self.handled.last().map(|h| h.at))
            .max()
            .map_or(Duration::ZERO, |t| t + Duration::from_nanos(1));
        faults
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let next = faults.get(i + 1).map_or(end, |n| n.started.max(f.started));
                let mut during = self.latencies(f.started, f.ended.max(f.started));
                // Slow publishes that completed after this fault started and before the next
                // one did: this fault is the last to start before they completed.
                let blamed = || {
                    self.published
                        .iter()
                        .filter(move |p| p.confirmed >= f.started && p.confirmed < next)
                };
                let recovered_at = blamed()
                    .filter(|p| latency(p) > slow)
                    .map(|p| p.confirmed)
                    .max();
                let stall = blamed().map(latency).max().unwrap_or(Duration::ZERO);
                FaultReport {
                    label: f.label.clone(),
                    started: f.started,
                    took: f.ended.saturating_sub(f.started),
                    succeeded: f.succeeded,
                    publishes: during.len(),
                    publish_p99: percentile(&mut during, 0.99),
                    publish_max: during.iter().max().copied(),
                    stall,
                    recovery: recovered_at.map_or(Duration::ZERO, |t| t.saturating_sub(f.started)),
                    handling_gap: self.longest_gap(f.started, next),
                }
            })
            .collect()
    }

    fn longest_gap(&self, from: Duration, until: Duration) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for h in self.handled.iter().filter(|h| h.at >= from && h.at < until) {
            gap = gap.max(h.at.saturating_sub(last));
            last = last.max(h.at);
        }
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::History;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn publish(id: &str, sent: u64, confirmed: u64) -> Published {
        Published {
            id: id.into(),
            key: "k".into(),
            sent: ms(sent),
            confirmed: ms(confirmed),
        }
    }

    fn handled(at: u64) -> Handled {
        Handled {
            service: "a".into(),
            id: format!("h{at}"),
            key: "k".into(),
            attempt: 1,
            at: ms(at),
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&mut v, 0.99), Some(ms(99)));
        assert_eq!(percentile(&mut v, 0.5), Some(ms(50)));
        assert_eq!(percentile(&mut [ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&mut [], 0.99), None);
    }

    #[test]
    fn a_fault_stalls_publishes_until_it_recovers() {
        // Steady 2 ms publishes, a fault at 1 s that stalls two publishes until 2.5 s (and one
        // in flight when it started), then steady again; handlings stop from 1.0 s to 2.6 s.
        let mut published: Vec<Published> = (0..100)
            .map(|i| publish(&format!("p{i}"), i * 10, i * 10 + 2))
            .collect();
        published.push(publish("s0", 995, 2_300));
        published.push(publish("s1", 1_010, 2_400));
        published.push(publish("s2", 1_020, 2_500));
        published
            .extend((0..50).map(|i| publish(&format!("q{i}"), 2_500 + i * 10, 2_502 + i * 10)));
        let handled: Vec<Handled> = [990, 2_600, 2_610, 3_000]
            .into_iter()
            .map(handled)
            .collect();
        let fault = Fault {
            label: "kill".into(),
            started: ms(1_000),
            ended: ms(1_800),
            succeeded: true,
        };
        let report = Timeline::new(&published, &handled).around(&[fault]);
        assert_eq!(report.len(), 1);
        let r = &report[0];
        assert_eq!(r.publishes, 2);
        assert_eq!(r.publish_max, Some(ms(1_480)));
        assert_eq!(r.recovery, ms(1_500));
        assert_eq!(r.stall, ms(1_480));
        assert_eq!(r.handling_gap, ms(1_600));
        assert_eq!(r.took, ms(800));
    }

    #[test]
    fn a_stall_is_blamed_on_the_last_fault_before_it_ended() {
        // Fault A at 1 s, fault B at 5 s; a publish sent at 4.9 s (in A's window) is stuck until
        // 7 s: B caused that, and A recovered with its own stall, done at 1.5 s.
        let mut published: Vec<Published> = (0..50)
            .map(|i| publish(&format!("p{i}"), i * 10, i * 10 + 2))
            .collect();
        published.push(publish("a", 1_000, 1_500));
        published.push(publish("b", 4_900, 7_000));
        let fault = |at: u64| Fault {
            label: "kill".into(),
            started: ms(at),
            ended: ms(at + 500),
            succeeded: true,
        };
        let r = Timeline::new(&published, &[]).around(&[fault(1_000), fault(5_000)]);
        assert_eq!(r[0].recovery, ms(500));
        assert_eq!(r[1].recovery, ms(2_000));
        assert_eq!((r[0].stall, r[1].stall), (ms(500), ms(2_100)));
    }

    #[test]
    fn a_history_reports_its_faults() {
        let h = History::new(["a"]);
        let at = h.now();
        h.fault("scripts/cluster.sh kill-random", at, true);
        let r = h.faults();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].recovery, Duration::ZERO);
        assert_eq!(r[0].publish_p99, None);
    }
}
