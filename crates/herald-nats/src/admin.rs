//! Dead-letter administration and queue statistics on JetStream.
//!
//! A queue's dead letters are the messages on `_herald_dlq.<stream>.<queue>` in the exchange's
//! dead-letter stream. Listing reads them in order without removing them; a replay stores a
//! fresh copy addressed to the queue alone (so no other queue bound to the same key gets it
//! again) and then deletes the dead letter; a purge deletes them. Statistics come from the
//! queue's two consumers (pending and unacknowledged messages) and the dead-letter stream's
//! per-subject counts; every queue of every exchange is listed, from the consumers' records.

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_trait::async_trait;
use futures::TryStreamExt;
use herald::envelope::Envelope;
use herald::error::{Error, Result};
use herald::topology::Topology;
use herald::transport::{
    reset_for_replay, DeadLetter, DeadLetterAdmin, QueueStatistics, QueueStats, TopologyAdmin,
};

use crate::publish::{store_all, Outgoing};
use crate::topology::{bindings_consumer, direct_consumer, QueueRecord};
use crate::{names, wire, NatsTransport};

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::transport("nats", format!("{what}: {e}"))
}

/// One dead letter as stored.
struct Stored {
    sequence: u64,
    envelope: Envelope,
}

impl NatsTransport {
    /// The dead-letter stream that holds `queue`'s dead letters, and the exchange stream's name.
    async fn dead_letter_stream(&self, queue: &str) -> Result<Option<(Stream, String)>> {
        let js = &self.shared.js;
        let mut candidates: Vec<String> = self
            .shared
            .declared_exchanges()
            .iter()
            .map(|x| names::stream_name(x))
            .collect();
        let mut all = js.stream_names();
        while let Some(name) = all
            .try_next()
            .await
            .map_err(|e| failed("listing streams", e))?
        {
            if let Some(events) = name.strip_suffix("_dlq") {
                if name.starts_with("herald_") && !candidates.iter().any(|c| c == events) {
                    candidates.push(events.to_string());
                }
            }
        }
        for events in candidates {
            let Ok(stream) = js.get_stream(names::dlq_stream_name(&events)).await else {
                continue;
            };
            let subject = names::dlq_subject(&events, queue);
            let found =
                count_on(&stream, &subject).await? > 0 || self.shared.knows_queue(&events, queue);
            if found {
                return Ok(Some((stream, events)));
            }
        }
        Ok(None)
    }

    async fn read_dead(&self, stream: &Stream, subject: &str, limit: usize) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let mut from = 1;
        while out.len() < limit {
            let got = stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject)
                .send()
                .await;
            let message = match got {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => break,
                Err(e) => return Err(failed("reading dead letters", e)),
            };
            from = message.sequence + 1;
            let (envelope, _) = wire::envelope(Some(&message.headers), "", message.payload);
            out.push(Stored {
                sequence: message.sequence,
                envelope,
            });
        }
        Ok(out)
    }

    async fn selected(
        &self,
        queue: &str,
        ids: Option<&[String]>,
    ) -> Result<Option<(Stream, String, Vec<Stored>)>> {
        let Some((stream, events)) = self.dead_letter_stream(queue).await? else {
            return Ok(None);
        };
        let subject = names::dlq_subject(&events, queue);
        let mut dead = self.read_dead(&stream, &subject, usize::MAX).await?;
        dead.retain(|d| ids.is_none_or(|ids| ids.contains(&d.envelope.id)));
        Ok(Some((stream, events, dead)))
    }
}

#[async_trait]
impl DeadLetterAdmin for NatsTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.shared.check_open()?;
        let Some((stream, events)) = self.dead_letter_stream(queue).await? else {
            return Ok(Vec::new());
        };
        let dead = self
            .read_dead(&stream, &names::dlq_subject(&events, queue), limit)
            .await?;
        Ok(dead
            .into_iter()
            .map(|d| DeadLetter {
                queue: queue.to_string(),
                envelope: d.envelope,
            })
            .collect())
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.shared.check_open()?;
        let Some((stream, events, dead)) = self.selected(queue, ids).await? else {
            return Ok(0);
        };
        let mut moved = 0;
        for d in dead {
            let mut envelope = d.envelope;
            reset_for_replay(&mut envelope);
            let mut headers = wire::headers(
                &envelope,
                &format!("{}.replay.{}", envelope.id, d.sequence),
                self.shared.cfg.cloudevents_headers,
            )?;
            headers.insert(wire::ROUTING_KEY, envelope.routing_key.as_str());
            let out = Outgoing {
                subject: names::direct_subject(&events, queue),
                headers,
                body: envelope.body.clone(),
            };
            store_all(
                &self.shared.js,
                vec![out],
                self.shared.cfg.outage_timeout,
                |_| crate::publish::NoStream::Retry,
            )
            .await?;
            stream.delete_message(d.sequence).await.map_err(|e| {
                failed(
                    "removing a replayed dead letter (it may be replayed twice)",
                    e,
                )
            })?;
            moved += 1;
        }
        Ok(moved)
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        self.shared.check_open()?;
        let Some((stream, _, dead)) = self.selected(queue, ids).await? else {
            return Ok(0);
        };
        let mut purged = 0;
        for d in dead {
            stream
                .delete_message(d.sequence)
                .await
                .map_err(|e| failed("purging a dead letter", e))?;
            purged += 1;
        }
        Ok(purged)
    }
}

#[async_trait]
impl QueueStatistics for NatsTransport {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.shared.check_open()?;
        let js = &self.shared.js;
        let mut out = Vec::new();
        let mut all = js.stream_names();
        let mut streams = Vec::new();
        while let Some(name) = all
            .try_next()
            .await
            .map_err(|e| failed("listing streams", e))?
        {
            if name.starts_with("herald_") && !name.ends_with("_dlq") {
                streams.push(name);
            }
        }
        for name in streams {
            let Ok(stream) = js.get_stream(&name).await else {
                continue;
            };
            let dead = js.get_stream(names::dlq_stream_name(&name)).await.ok();
            let mut consumers = stream.consumers();
            let mut records: Vec<QueueRecord> = Vec::new();
            while let Some(info) = consumers
                .try_next()
                .await
                .map_err(|e| failed("listing consumers", e))?
            {
                if !info.name.starts_with("q_") {
                    continue;
                }
                if let Some(r) = QueueRecord::from_description(info.config.description.as_deref()) {
                    records.push(r);
                }
            }
            for r in records {
                let mut stat = QueueStats {
                    queue: r.queue.clone(),
                    ..Default::default()
                };
                let (mut ready, mut in_flight, mut delayed) = (0u64, 0u64, 0u64);
                for (consumer, addressed) in [
                    (bindings_consumer(&r.queue), false),
                    (direct_consumer(&r.queue), true),
                ] {
                    if let Ok(info) = stream.consumer_info(&consumer).await {
                        if addressed {
                            delayed += info.num_pending;
                        } else {
                            ready += info.num_pending;
                        }
                        in_flight += info.num_ack_pending as u64;
                    }
                }
                stat.ready = Some(ready);
                stat.in_flight = Some(in_flight);
                // Retries and replays waiting on the queue's addressed subject.
                stat.delayed = Some(delayed);
                if let Some(dead) = &dead {
                    let subject = names::dlq_subject(&name, &r.queue);
                    stat.dead_letters = count_on(dead, &subject).await.ok();
                }
                out.push(stat);
            }
        }
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }

    async fn bindings(&self, exchange: &str) -> Result<Option<Vec<(String, String)>>> {
        self.shared.check_open()?;
        let queues = crate::topology::list_queues(&self.shared.js, exchange).await?;
        Ok(Some(
            queues
                .into_iter()
                .flat_map(|q| {
                    let queue = q.queue;
                    q.bindings.into_iter().map(move |b| (b, queue.clone()))
                })
                .collect(),
        ))
    }
}

#[async_trait]
impl TopologyAdmin for NatsTransport {
    async fn delete_topology(&self, topology: &Topology) -> Result<()> {
        self.shared.check_open()?;
        let js = &self.shared.js;
        let stream = names::stream_name(&topology.exchange);
        if let Ok(s) = js.get_stream(&stream).await {
            for q in &topology.queues {
                self.shared.routes.forget(&topology.exchange, &q.name);
                for name in [bindings_consumer(&q.name), direct_consumer(&q.name)] {
                    let _ = s.delete_consumer(&name).await;
                }
            }
            let left = crate::topology::list_queues(js, &topology.exchange).await?;
            if !left.is_empty() {
                // Other queues still use the exchange: keep its streams.
                return Ok(());
            }
        }
        for name in [names::dlq_stream_name(&stream), stream] {
            if let Err(e) = js.delete_stream(&name).await {
                let text = e.to_string();
                if !text.contains("not found") {
                    return Err(failed("deleting a stream", e));
                }
            }
        }
        Ok(())
    }
}

/// How many messages a stream holds on `subject`.
async fn count_on(stream: &Stream, subject: &str) -> Result<u64> {
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| failed("reading message counts", e))?
        .try_collect()
        .await
        .map_err(|e| failed("reading message counts", e))?;
    Ok(counts.iter().map(|(_, n)| *n as u64).sum())
}
