//! Accounting for the demo: every published id, per consuming service, must end up handled or
//! in the dead letters. What is neither is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// What the demo published and what each service did with it.
pub struct Tally {
    published: Mutex<Vec<String>>,
    handled: HashMap<&'static str, Mutex<HashMap<String, u32>>>,
}

/// The final figures.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub published: u64,
    pub handled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub elapsed: Duration,
}

impl Report {
    /// The machine-readable line.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT published={} handled={} retried={} dead_lettered={} duplicates={} lost={} seconds={:.2}",
            self.published,
            self.handled,
            self.retried,
            self.dead_lettered,
            self.duplicates,
            self.lost,
            self.elapsed.as_secs_f64()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tally {
    pub fn new(services: &[&'static str]) -> Self {
        Tally {
            published: Mutex::new(Vec::new()),
            handled: services
                .iter()
                .map(|s| (*s, Mutex::new(HashMap::new())))
                .collect(),
        }
    }

    pub fn published(&self, id: &str) {
        lock(&self.published).push(id.to_string());
    }

    pub fn handled(&self, service: &str, id: &str) {
        if let Some(m) = self.handled.get(service) {
            *lock(m).entry(id.to_string()).or_default() += 1;
        }
    }

    pub fn published_count(&self) -> u64 {
        lock(&self.published).len() as u64
    }

    /// Successful handlings over all services (unique per service).
    pub fn handled_count(&self) -> u64 {
        self.handled.values().map(|m| lock(m).len() as u64).sum()
    }

    /// Deliveries not yet handled, given how many are known dead-lettered.
    pub fn pending(&self, dead_lettered: u64) -> u64 {
        let expected = self.published_count() * self.handled.len() as u64;
        expected.saturating_sub(self.handled_count() + dead_lettered)
    }

    /// The final report. `dead` holds, per service, the ids found in its dead letters.
    pub fn report(
        &self,
        dead: &HashMap<&'static str, HashSet<String>>,
        retried: u64,
        elapsed: Duration,
    ) -> Report {
        let published = lock(&self.published).clone();
        let mut report = Report {
            published: published.len() as u64,
            retried,
            elapsed,
            ..Default::default()
        };
        for (service, handled) in &self.handled {
            let handled = lock(handled);
            let dead = dead.get(service).cloned().unwrap_or_default();
            for id in &published {
                match (handled.get(id), dead.contains(id)) {
                    (Some(times), _) => {
                        report.handled += 1;
                        report.duplicates += u64::from(times.saturating_sub(1));
                    }
                    (None, true) => report.dead_lettered += 1,
                    (None, false) => report.lost += 1,
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_for_every_id() {
        let t = Tally::new(&["a", "b"]);
        for id in ["1", "2", "3"] {
            t.published(id);
        }
        for id in ["1", "2", "3", "3"] {
            t.handled("a", id);
        }
        t.handled("b", "1");
        let dead = HashMap::from([("b", HashSet::from(["2".to_string()]))]);
        let r = t.report(&dead, 4, Duration::from_secs(1));
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
            "RESULT published=3 handled=4 retried=4 dead_lettered=1 duplicates=1 lost=1"
        ));
    }
}
