//! Topology as a value: the exchange, queues, bindings, retry and dead-letter arrangements that a
//! set of subscriptions needs. It is computed from the registered handlers and configuration,
//! applied by a transport, printed by `herald topology`, and serialized for docs.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The whole arrangement one bus needs on the broker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// The topic exchange every event is published to.
    pub exchange: String,
    /// Queues with their bindings, one per subscription.
    pub queues: Vec<QueueSpec>,
}

/// Classic or quorum (RabbitMQ); other transports ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A classic durable queue.
    #[default]
    Classic,
    /// A replicated quorum queue.
    Quorum,
}

/// One durable work queue and what surrounds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSpec {
    /// `<service>.<event name>` by default.
    pub name: String,
    /// Binding patterns on the exchange (`*` and `#` allowed).
    pub bindings: Vec<String>,
    /// Classic or quorum.
    pub kind: QueueKind,
    /// The delays of the retry levels, shortest first. A transport with native delayed delivery
    /// uses the exact delay asked for; RabbitMQ declares one TTL queue per level.
    pub retry_delays: Vec<Duration>,
    /// Maximum priority, when priority ordering is wanted.
    pub max_priority: Option<u8>,
    /// Per-queue message TTL.
    pub message_ttl: Option<Duration>,
    /// Maximum number of ready messages.
    pub max_length: Option<u64>,
    /// A temporary queue, removed when its consumer stops (used by `herald tail`).
    pub auto_delete: bool,
}

impl QueueSpec {
    /// A queue with one binding and no extras.
    pub fn new(name: impl Into<String>, binding: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            bindings: vec![binding.into()],
            kind: QueueKind::Classic,
            retry_delays: Vec::new(),
            max_priority: None,
            message_ttl: None,
            max_length: None,
            auto_delete: false,
        }
    }

    /// The name of this queue's dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        dead_letter_queue_name(&self.name)
    }

    /// The name of the retry queue for one delay level.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.name, delay.as_millis())
    }
}

/// `<queue>.dlq`.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// `<exchange>.dlx`: the exchange dead letters are published to (RabbitMQ).
pub fn dead_letter_exchange_name(exchange: &str) -> String {
    format!("{exchange}.dlx")
}

/// `<exchange>.retry`: the exchange retry queues are reached through (RabbitMQ).
pub fn retry_exchange_name(exchange: &str) -> String {
    format!("{exchange}.retry")
}

impl Topology {
    /// An empty topology on `exchange`.
    pub fn new(exchange: impl Into<String>) -> Self {
        Topology {
            exchange: exchange.into(),
            queues: Vec::new(),
        }
    }

    /// Add a queue, merging bindings if one of the same name exists.
    pub fn add_queue(&mut self, queue: QueueSpec) {
        if let Some(existing) = self.queues.iter_mut().find(|q| q.name == queue.name) {
            for b in queue.bindings {
                if !existing.bindings.contains(&b) {
                    existing.bindings.push(b);
                }
            }
        } else {
            self.queues.push(queue);
        }
    }

    /// Merge another topology's queues into this one.
    pub fn merge(&mut self, other: Topology) {
        for q in other.queues {
            self.add_queue(q);
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exchange {} (topic, durable)", self.exchange)?;
        for q in &self.queues {
            let mut extras = vec![format!("{:?}", q.kind).to_lowercase()];
            if let Some(p) = q.max_priority {
                extras.push(format!("max-priority {p}"));
            }
            if let Some(t) = q.message_ttl {
                extras.push(format!("ttl {}ms", t.as_millis()));
            }
            if let Some(l) = q.max_length {
                extras.push(format!("max-length {l}"));
            }
            writeln!(f, "  queue {} ({})", q.name, extras.join(", "))?;
            for b in &q.bindings {
                writeln!(f, "    <- {} [{}]", self.exchange, b)?;
            }
            if !q.retry_delays.is_empty() {
                let levels: Vec<String> = q
                    .retry_delays
                    .iter()
                    .map(|d| format!("{}ms", d.as_millis()))
                    .collect();
                writeln!(f, "    retry delays {}", levels.join(", "))?;
            }
            writeln!(f, "    dead letters -> {}", q.dead_letter_queue())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_one_queue_with_all_bindings() {
        let mut t = Topology::new("ex");
        t.add_queue(QueueSpec::new("svc.a", "a.*"));
        t.add_queue(QueueSpec::new("svc.a", "b.#"));
        t.add_queue(QueueSpec::new("svc.a", "a.*"));
        assert_eq!(t.queues.len(), 1);
        assert_eq!(t.queues[0].bindings, vec!["a.*", "b.#"]);
        let printed = t.to_string();
        assert!(printed.contains("queue svc.a (classic)"));
        assert!(printed.contains("dead letters -> svc.a.dlq"));
    }
}
