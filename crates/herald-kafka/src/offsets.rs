//! Which offsets a consumer may commit: per assigned partition, the records taken and not yet
//! settled. The committed position is the oldest unsettled record (or the one after the last
//! taken when all are settled), so a commit never passes a message the pipeline has not
//! finished with: a crash or a rebalance redelivers from there (at-least-once).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use herald::envelope::Envelope;

/// A topic and partition.
pub(crate) type Tp = (Arc<str>, i32);

/// A retry record waiting for its time.
pub(crate) struct Delayed {
    pub offset: i64,
    pub due_ms: i64,
    pub envelope: Envelope,
}

/// One assigned partition.
#[derive(Default)]
pub(crate) struct Partition {
    /// Which assignment this state belongs to: settlements of an earlier one are ignored.
    pub epoch: u64,
    /// The offset after the last record taken; `None` before the first.
    pub next: Option<i64>,
    /// Taken and not settled (handed out, delayed, or abandoned).
    pub pending: BTreeSet<i64>,
    /// Of `pending`: records whose delivery was dropped without settlement; only a new owner
    /// of the partition delivers them again.
    pub abandoned: usize,
    /// Retry records not yet due, in offset order (the partition is paused while any wait).
    pub delayed: VecDeque<Delayed>,
    /// The position last sent to the broker.
    pub committed: Option<i64>,
}

impl Partition {
    /// Where the group may resume: the oldest unsettled record, else after the last taken.
    pub fn position(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    /// A position to commit, when it moved since the last commit.
    pub fn to_commit(&self) -> Option<i64> {
        self.position()
            .filter(|p| self.committed.is_none_or(|c| *p > c))
    }

    /// Deliveries of this partition a handler still holds.
    pub fn in_hand(&self) -> usize {
        self.pending
            .len()
            .saturating_sub(self.delayed.len() + self.abandoned)
    }

    /// Record `offset` as taken; `pending` when it must be settled before a commit passes it.
    pub fn take(&mut self, offset: i64, pending: bool) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if pending {
            self.pending.insert(offset);
        }
    }
}

/// The state of one consumer's assignment.
#[derive(Default)]
pub(crate) struct Assignment {
    pub partitions: HashMap<Tp, Partition>,
    /// Increased on every assignment.
    pub epoch: u64,
    /// Deliveries handed out and neither settled nor dropped.
    pub outstanding: usize,
}

impl Assignment {
    /// A new assignment of `tps` (librdkafka's eager protocol revokes everything first).
    pub fn assign(&mut self, tps: impl IntoIterator<Item = Tp>) {
        self.epoch += 1;
        for tp in tps {
            self.partitions.insert(
                tp,
                Partition {
                    epoch: self.epoch,
                    ..Partition::default()
                },
            );
        }
    }

    /// A delivery ended: settled (its offset may be passed) or dropped unsettled.
    pub fn finish(&mut self, tp: &Tp, offset: i64, epoch: u64, settled: bool) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(p) = self.partitions.get_mut(tp).filter(|p| p.epoch == epoch) {
            if settled {
                p.pending.remove(&offset);
            } else {
                p.abandoned += 1;
            }
        }
    }

    /// Positions to commit now, marked as committed.
    pub fn commits(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if let Some(pos) = p.to_commit() {
                p.committed = Some(pos);
                out.push((tp.clone(), pos));
            }
        }
        out
    }

    /// A commit of these partitions failed: send them again next time.
    pub fn commit_failed(&mut self, tps: &[Tp]) {
        for tp in tps {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.committed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unsettled_record() {
        let tp: Tp = (Arc::from("t"), 0);
        let mut a = Assignment::default();
        a.assign([tp.clone()]);
        let epoch = a.epoch;
        let p = a.partitions.get_mut(&tp).unwrap();
        for o in 10..15 {
            p.take(o, o != 12); // 12 did not match the queue's bindings: nothing to settle
        }
        a.outstanding = 4;
        assert_eq!(a.commits(), vec![(tp.clone(), 10)]);
        a.finish(&tp, 11, epoch, true);
        assert!(a.commits().is_empty(), "10 is still in a handler");
        a.finish(&tp, 10, epoch, true);
        assert_eq!(a.commits(), vec![(tp.clone(), 13)]);
        a.finish(&tp, 13, epoch, false);
        a.finish(&tp, 14, epoch, true);
        assert!(
            a.commits().is_empty(),
            "an abandoned record blocks the commit"
        );
        let p = &a.partitions[&tp];
        assert_eq!((p.in_hand(), p.abandoned, a.outstanding), (0, 1, 0));
        // A settlement from an earlier assignment is ignored.
        a.assign([tp.clone()]);
        a.partitions.get_mut(&tp).unwrap().take(20, true);
        a.outstanding = 1;
        a.finish(&tp, 20, epoch, true);
        assert_eq!(a.partitions[&tp].pending.len(), 1);
        a.commit_failed(std::slice::from_ref(&tp));
        assert_eq!(a.commits(), vec![(tp, 20)]);
    }
}
