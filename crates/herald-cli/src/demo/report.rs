//! The demo's final figures, from the history checker's verdict.

use std::time::Duration;

use herald_check::Verdict;

/// The final figures. Every count but `retried` is of distinct (service, event) pairs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub published: u64,
    pub handled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Whether the run went quiet before it was judged.
    pub quiescent: bool,
    pub elapsed: Duration,
}

impl Report {
    /// The figures of `verdict`, with the bus's count of retries (attempts, not events).
    pub fn new(verdict: &Verdict, retried: u64, quiescent: bool, elapsed: Duration) -> Self {
        Report {
            published: verdict.events,
            handled: verdict.handled,
            retried,
            dead_lettered: verdict.dead_lettered,
            duplicates: verdict.duplicates,
            lost: verdict.lost,
            quiescent,
            elapsed,
        }
    }

    /// The machine-readable line.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT published={} handled={} retried={} dead_lettered={} duplicates={} lost={} seconds={:.2} quiescent={}",
            self.published,
            self.handled,
            self.retried,
            self.dead_lettered,
            self.duplicates,
            self.lost,
            self.elapsed.as_secs_f64(),
            if self.quiescent { "yes" } else { "no" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_check::History;

    #[test]
    fn the_result_line_counts_distinct_pairs() {
        let h = History::new(["a", "b"]);
        for id in ["1", "2", "3"] {
            h.confirmed(id, "k", h.now());
        }
        for id in ["1", "2", "3", "3"] {
            h.handled("a", id, "k", 1);
        }
        h.handled("b", "1", "k", 1);
        // Dead-lettered twice (a redelivery dead-lettered again): one pair all the same.
        h.dead_lettered("b", "2");
        h.dead_lettered("b", "2");
        let r = Report::new(&h.check(), 4, true, Duration::from_secs(1));
        assert_eq!(
            (
                r.published,
                r.handled,
                r.dead_lettered,
                r.duplicates,
                r.lost
            ),
            (3, 4, 1, 1, 1)
        );
        assert!(r.result_line().starts_with(
            "RESULT published=3 handled=4 retried=4 dead_lettered=1 duplicates=1 lost=1 seconds=1.00 quiescent=yes"
        ));
    }
}
