//! Dead-letter administration and queue statistics.
//!
//! A queue's dead letters are the records of `<queue>.dlq` (one partition, so in the order
//! they failed). Kafka cannot delete one record, so replaying or purging one appends a marker
//! record (empty value, header `herald_dlq_removes` = the event id) to the same topic; a dead
//! letter is listed while no marker after it names its id. A replay is a fresh copy
//! ([`reset_for_replay`]) on the queue's first retry topic, due at once: only that queue's
//! group reads it, so other queues bound to the same key do not get it twice.

use std::time::Duration;

use async_trait::async_trait;
use herald::envelope::Envelope;
use herald::error::Result;
use herald::transport::{
    reset_for_replay, DeadLetter, DeadLetterAdmin, QueueStatistics, QueueStats,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::admin::{blocking, lag, read_topic, QueueEntry};
use crate::config::{dead_letter_topic, exchange_topic, retry_topic};
use crate::wire::REMOVES;
use crate::KafkaTransport;

impl KafkaTransport {
    /// The dead letters of `queue` not yet replayed or purged, oldest first.
    async fn live_dead_letters(&self, queue: &str) -> Result<Vec<Envelope>> {
        let cfg = self.inner.cfg.clone();
        let topic = dead_letter_topic(queue);
        let records = blocking(move || read_topic(&cfg, &topic)).await?;
        let mut live: Vec<Envelope> = Vec::new();
        for r in records {
            match r.removes {
                Some(id) => live.retain(|e| e.id != id),
                None => {
                    // A dead letter written twice (at-least-once) is listed once.
                    live.retain(|e| e.id != r.envelope.id);
                    live.push(r.envelope);
                }
            }
        }
        Ok(live)
    }

    /// Append markers removing these dead letters.
    async fn remove_dead_letters(&self, queue: &str, ids: &[String]) -> Result<()> {
        let topic = dead_letter_topic(queue);
        for id in ids {
            let headers = OwnedHeaders::new().insert(Header {
                key: REMOVES,
                value: Some(id.as_bytes()),
            });
            self.inner
                .producer
                .send(
                    FutureRecord::to(&topic)
                        .key(id.as_str())
                        .payload(&[][..])
                        .headers(headers),
                )
                .await?;
        }
        Ok(())
    }

    /// The queue's entry in the bindings topic.
    async fn entry(&self, queue: &str) -> Result<Option<QueueEntry>> {
        let find = |q: Vec<QueueEntry>| q.into_iter().find(|e| e.queue == queue);
        if let Some(e) = find(self.inner.registry.queues()) {
            return Ok(Some(e));
        }
        self.inner.registry.refresh().await?;
        Ok(find(self.inner.registry.queues()))
    }

    /// The dead letters `ids` picks (all when `None`).
    async fn pick(&self, queue: &str, ids: Option<&[String]>) -> Result<Vec<Envelope>> {
        let mut live = self.live_dead_letters(queue).await?;
        if let Some(ids) = ids {
            live.retain(|e| ids.contains(&e.id));
        }
        Ok(live)
    }
}

#[async_trait]
impl DeadLetterAdmin for KafkaTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.check_open()?;
        let mut live = self.live_dead_letters(queue).await?;
        live.truncate(limit);
        Ok(live
            .into_iter()
            .map(|envelope| DeadLetter {
                queue: queue.to_string(),
                envelope,
            })
            .collect())
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.check_open()?;
        let picked = self.pick(queue, ids).await?;
        if picked.is_empty() {
            return Ok(0);
        }
        let declared: Vec<Duration> = self
            .entry(queue)
            .await?
            .map(|e| {
                e.retry_delays_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect()
            })
            .unwrap_or_default();
        let level = self.inner.cfg.retry_levels(&declared)[0];
        let topic = retry_topic(queue, level);
        let fresh: Vec<Envelope> = picked
            .iter()
            .map(|e| {
                let mut e = e.clone();
                reset_for_replay(&mut e);
                e
            })
            .collect();
        let now = chrono::Utc::now().timestamp_millis();
        self.inner
            .producer
            .publish(&topic, &fresh, Some(now))
            .await?;
        let ids: Vec<String> = picked.into_iter().map(|e| e.id).collect();
        self.remove_dead_letters(queue, &ids).await?;
        Ok(ids.len() as u64)
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.check_open()?;
        let picked = self.pick(queue, ids).await?;
        let ids: Vec<String> = picked.into_iter().map(|e| e.id).collect();
        self.remove_dead_letters(queue, &ids).await?;
        Ok(ids.len() as u64)
    }
}

#[async_trait]
impl QueueStatistics for KafkaTransport {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.check_open()?;
        self.inner.registry.refresh().await?;
        let mut out = Vec::new();
        for q in self.inner.registry.queues() {
            let Ok(exchange) = exchange_topic(&q.exchange) else {
                continue;
            };
            let retry: Vec<String> = q
                .retry_delays_ms
                .iter()
                .map(|ms| retry_topic(&q.queue, Duration::from_millis(*ms)))
                .collect();
            let mut topics = vec![exchange.clone()];
            topics.extend(retry.iter().cloned());
            let (cfg, group) = (self.inner.cfg.clone(), q.queue.clone());
            let lags = blocking(move || lag(&cfg, &group, &topics)).await?;
            let dead = self.live_dead_letters(&q.queue).await?.len() as u64;
            out.push(QueueStats {
                queue: q.queue.clone(),
                // Records of the exchange the group has not read yet; it includes events the
                // queue does not bind, which it skips when it gets to them.
                ready: lags.get(&exchange).copied(),
                in_flight: None,
                delayed: Some(retry.iter().filter_map(|t| lags.get(t)).sum()),
                dead_letters: Some(dead),
                consumers: None,
            });
        }
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }
}
