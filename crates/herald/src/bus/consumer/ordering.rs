//! Order per key, parallel across keys: a delivery whose key already has a handler call running
//! waits behind it, in arrival order; deliveries of other keys (or without one) start at once.
//!
//! Keys are hashed: two keys that share a hash wait for each other, which costs some
//! parallelism and never order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::transport::Delivery;

use crate::bus::KeyOf;

/// The deliveries parked behind a running call of their key.
#[derive(Default)]
pub(super) struct KeyedOrder {
    /// An entry exists while a call of that key runs; it holds what waits behind it.
    running: HashMap<u64, VecDeque<Delivery>>,
    /// How many deliveries wait in `running`.
    parked: usize,
}

/// The hash of a delivery's key, or `None` when it has none (it then waits for nothing).
pub(super) fn key_of(key: KeyOf, delivery: &Delivery) -> Option<u64> {
    key(&delivery.envelope).map(|k| {
        let mut h = DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    })
}

impl KeyedOrder {
    /// `delivery` may start now (no call of its key runs; one now does), or is parked and
    /// `None` is returned.
    pub fn admit(&mut self, key: u64, delivery: Delivery) -> Option<Delivery> {
        match self.running.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(delivery);
                self.parked += 1;
                None
            }
            None => {
                self.running.insert(key, VecDeque::new());
                Some(delivery)
            }
        }
    }

    /// A call of `key` finished: the next delivery of that key to start, if one waits.
    pub fn finished(&mut self, key: u64) -> Option<Delivery> {
        let waiting = self.running.get_mut(&key)?;
        match waiting.pop_front() {
            Some(next) => {
                self.parked -= 1;
                Some(next)
            }
            None => {
                self.running.remove(&key);
                None
            }
        }
    }

    /// Everything parked (the consumer stops: it goes back to the queue).
    pub fn drain(&mut self) -> Vec<Delivery> {
        self.parked = 0;
        self.running
            .drain()
            .flat_map(|(_, waiting)| waiting)
            .collect()
    }

    /// How many deliveries are parked.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::envelope::Envelope;
    use crate::transport::{Outcome, Settle};

    struct Nothing;

    #[async_trait]
    impl Settle for Nothing {
        async fn settle(&self, _: u64, _: &Envelope, _: Outcome) -> crate::Result<()> {
            Ok(())
        }
    }

    fn delivery(subject: Option<&str>, tag: u64) -> Delivery {
        let mut e = Envelope::new("a", 1, "a", "s", Bytes::from_static(b"{}"));
        e.subject = subject.map(str::to_string);
        Delivery::new(e, false, tag, Arc::new(Nothing))
    }

    #[test]
    fn one_key_waits_other_keys_pass() {
        let by_subject: KeyOf = |e| e.subject.as_deref();
        let mut order = KeyedOrder::default();
        let a1 = delivery(Some("a"), 1);
        let ka = key_of(by_subject, &a1).unwrap();
        assert!(key_of(by_subject, &delivery(None, 9)).is_none());
        assert!(order.admit(ka, a1).is_some(), "the first of a key starts");
        assert!(order.admit(ka, delivery(Some("a"), 2)).is_none());
        assert!(order.admit(ka, delivery(Some("a"), 3)).is_none());
        let b = delivery(Some("b"), 4);
        let kb = key_of(by_subject, &b).unwrap();
        assert!(order.admit(kb, b).is_some(), "another key starts at once");
        assert_eq!(order.parked(), 2);
        let next = order.finished(ka).expect("a2 waits");
        assert_eq!(next.envelope.subject.as_deref(), Some("a"));
        assert_eq!(order.parked(), 1);
        assert!(order.finished(kb).is_none());
        assert!(
            order.admit(kb, delivery(Some("b"), 5)).is_some(),
            "b is free again"
        );
        assert_eq!(order.drain().len(), 1);
        assert_eq!(order.parked(), 0);
    }
}
