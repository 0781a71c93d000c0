//! Consuming a queue: its two pull consumers (bindings, and messages addressed to it) read
//! into one channel of deliveries, at most `prefetch` unsettled at a time.
//!
//! Before a message is handed out: an event of the exchange that none of the queue's bindings
//! match (a client-filtered queue) is acked and skipped; one whose TTL has passed is
//! dead-lettered as `expired`; one addressed to the queue with a `herald_not_before` still
//! ahead (a delayed retry) is given back to JetStream with the remaining delay.
//!
//! Settling: ack is `+ACK`; a retry stores a copy addressed to the queue (attempt + 1, the
//! failure recorded, not before now + delay) and then acks the original; a dead letter stores
//! a copy in the dead-letter stream and then acks; a release is a `NAK` with the delay. A copy
//! is stored before the original is acked, so a crash in between means a duplicate, never a
//! loss; its `Nats-Msg-Id` is derived from the original's stream sequence, so the copy itself
//! is stored once. While a handler runs, the message's ack timer is renewed (`+WPI`) every
//! third of `ack_wait`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use herald::envelope::{format_time, header, Envelope};
use herald::error::{Error, Result};
use herald::topology::QueueSpec;
use herald::transport::{Delivery, Failure, Outcome, Settle};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::publish::{store_all, Outgoing};
use crate::puller::{Pulled, Puller};
use crate::topology::{bindings_consumer, direct_consumer, Filtering};
use crate::{names, wire, Shared};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One message handed out and not yet settled; settling (or giving it back) drops it, which
/// makes room in the consumer's window and tells the consumer so.
struct InFlight {
    reply: Subject,
    sequence: u64,
    since: Instant,
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The room first, then the news of it (fields drop only after this runs).
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// Hashes delivery tags. They are a counter, so one multiplication spreads them over the table
/// well enough, where SipHash (the default) costs more than the rest of the lookup.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ByTag = HashMap<u64, InFlight, BuildHasherDefault<TagHasher>>;

/// Settles one consumer's deliveries.
pub(crate) struct NatsSettler {
    shared: Arc<Shared>,
    stream: String,
    queue: String,
    in_flight: Mutex<ByTag>,
    next_tag: AtomicU64,
    freed: Arc<Notify>,
}

impl NatsSettler {
    fn ack_subject(&self, tag: u64) -> Result<InFlight> {
        lock(&self.in_flight)
            .remove(&tag)
            .ok_or_else(|| Error::transport("nats", format!("delivery {tag} was already settled")))
    }

    async fn send_ack(&self, reply: &Subject, kind: AckKind) -> Result<()> {
        self.shared
            .client
            .publish(reply.clone(), Bytes::from(kind))
            .await
            .map_err(|e| Error::transport("nats", format!("settling a message: {e}")))
    }

    /// Store a copy of `envelope` (a retry or a dead letter) before the original is acked.
    async fn store_copy(
        &self,
        subject: String,
        envelope: &Envelope,
        msg_id: String,
        extra: &[(&str, String)],
    ) -> Result<()> {
        let mut headers = wire::headers(envelope, &msg_id, self.shared.cfg.cloudevents_headers)?;
        for (k, v) in extra {
            headers.insert(*k, v.as_str());
        }
        let out = Outgoing {
            subject,
            headers,
            body: envelope.body.clone(),
        };
        Box::pin(store_all(
            &self.shared.js,
            vec![out],
            self.shared.cfg.outage_timeout,
            |_| crate::publish::NoStream::Retry,
        ))
        .await
    }

    /// Give every unsettled message back to JetStream at once (the transport is closing).
    pub(crate) async fn release_all(&self) {
        let all: Vec<InFlight> = lock(&self.in_flight).drain().map(|(_, f)| f).collect();
        for f in all {
            let _ = self.send_ack(&f.reply, AckKind::Nak(None)).await;
        }
    }

    /// Renew the ack timer of messages held longer than `after`.
    async fn renew(&self, after: Duration) {
        let due: Vec<Subject> = lock(&self.in_flight)
            .values()
            .filter(|f| f.since.elapsed() >= after)
            .map(|f| f.reply.clone())
            .collect();
        for reply in due {
            let _ = self.send_ack(&reply, AckKind::Progress).await;
        }
    }
}

#[async_trait]
impl Settle for NatsSettler {
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        let held = self.ack_subject(tag)?;
        match outcome {
            Outcome::Ack => self.send_ack(&held.reply, AckKind::Ack).await,
            Outcome::Release { delay } => {
                let delay = (!delay.is_zero()).then_some(delay);
                self.send_ack(&held.reply, AckKind::Nak(delay)).await
            }
            // The copies are boxed: the future of every ack stays small.
            Outcome::Retry { delay, failure } => {
                Box::pin(self.retry(held, envelope, delay, failure)).await
            }
            Outcome::DeadLetter(failure) => {
                Box::pin(async {
                    let result = self.dead_letter(envelope, &failure, held.sequence).await;
                    self.finish(held, result).await
                })
                .await
            }
        }
    }
}

impl NatsSettler {
    async fn retry(
        &self,
        held: InFlight,
        envelope: &Envelope,
        delay: Duration,
        failure: Failure,
    ) -> Result<()> {
        let mut copy = envelope.clone();
        copy.attempt = copy.attempt.saturating_add(1);
        failure.record(&mut copy);
        let not_before = Utc::now().timestamp_millis()
            + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
        let result = self
            .store_copy(
                names::direct_subject(&self.stream, &self.queue),
                &copy,
                format!("{}.retry.{}", envelope.id, held.sequence),
                &[
                    (wire::ROUTING_KEY, envelope.routing_key.clone()),
                    (wire::NOT_BEFORE, not_before.to_string()),
                ],
            )
            .await;
        self.finish(held, result).await
    }

    /// Ack the original once its copy is stored; without the copy, leave it unacked (JetStream
    /// redelivers it after `ack_wait`).
    async fn finish(&self, held: InFlight, stored: Result<()>) -> Result<()> {
        stored?;
        self.send_ack(&held.reply, AckKind::Ack).await
    }

    async fn dead_letter(
        &self,
        envelope: &Envelope,
        failure: &Failure,
        sequence: u64,
    ) -> Result<()> {
        let mut copy = envelope.clone();
        failure.record(&mut copy);
        copy.headers
            .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
        self.store_copy(
            names::dlq_subject(&self.stream, &self.queue),
            &copy,
            format!("{}.dlq.{sequence}", envelope.id),
            &[(wire::ROUTING_KEY, envelope.routing_key.clone())],
        )
        .await
    }
}

/// What one consumer needs to run.
pub(crate) struct ConsumeTask {
    pub shared: Arc<Shared>,
    pub spec: QueueSpec,
    pub exchange: String,
    pub filtering: Filtering,
    pub prefetch: usize,
    pub cancel: CancellationToken,
}

/// The settler the caller's deliveries will use, and the channel they come from; the task
/// that feeds it runs until `cancel` fires or the receiver is dropped.
pub(crate) fn start(task: ConsumeTask) -> (Arc<NatsSettler>, mpsc::Receiver<Delivery>) {
    let stream = names::stream_name(&task.exchange);
    let settler = Arc::new(NatsSettler {
        shared: task.shared.clone(),
        stream,
        queue: task.spec.name.clone(),
        in_flight: Mutex::new(ByTag::default()),
        next_tag: AtomicU64::new(1),
        freed: Arc::new(Notify::new()),
    });
    let (tx, rx) = mpsc::channel(task.prefetch.max(1));
    let every = (task.shared.cfg.ack_wait / 3).max(Duration::from_millis(50));
    tokio::spawn(renew_loop(
        Arc::downgrade(&settler),
        every,
        task.shared.shutdown.clone(),
    ));
    tokio::spawn(run(task, settler.clone(), tx));
    (settler, rx)
}

/// Renew the ack timers of what is held, until the settler goes or the transport is closed or
/// dropped (a dropped transport stands for a crashed process: what it held comes back after
/// `ack_wait`). A consumer's own cancel does not stop it: messages taken before it still run
/// to their end.
async fn renew_loop(settler: Weak<NatsSettler>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(settler) = settler.upgrade() else {
            return;
        };
        settler.renew(every).await;
    }
}

/// Open the pullers of both consumers, re-declaring the queue when the server lost it, until it
/// works or `cancel` fires.
async fn open_both(task: &ConsumeTask) -> Option<(Puller, Puller)> {
    let stream = names::stream_name(&task.exchange);
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = async {
            // The consumers must exist: a server that lost them (an empty store) gets them
            // declared again below.
            let js_stream = task.shared.js.get_stream(&stream).await.map_err(|e| {
                Error::transport("nats", format!("opening the exchange's stream: {e}"))
            })?;
            for name in [
                bindings_consumer(&task.spec.name),
                direct_consumer(&task.spec.name),
            ] {
                js_stream.consumer_info(&name).await.map_err(|e| {
                    Error::transport("nats", format!("opening consumer {name}: {e}"))
                })?;
            }
            let shared = &task.shared;
            let b = Puller::open(
                &shared.client,
                &stream,
                &bindings_consumer(&task.spec.name),
                &shared.reconnects,
                shared.cfg.pull_expires,
            )
            .await?;
            let d = Puller::open(
                &shared.client,
                &stream,
                &direct_consumer(&task.spec.name),
                &shared.reconnects,
                shared.cfg.pull_expires,
            )
            .await?;
            Ok::<_, Error>((b, d))
        }
        .await;
        match opened {
            Ok(both) => return Some(both),
            Err(e) => {
                tracing::warn!(queue = %task.spec.name, error = %e, "cannot consume yet; declaring the queue again");
                let _ = task.shared.redeclare(&task.exchange, &task.spec).await;
            }
        }
        tokio::select! {
            _ = task.cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Ask for what there is room for: at most `prefetch` messages asked for or held, asked for in
/// halves (or whatever is left when nothing is on its way). The queue-addressed consumer
/// (retries, replays: rare) always has one message asked for, outside that window.
async fn top_up(
    bound: &mut Puller,
    direct: &mut Puller,
    prefetch: usize,
    held: usize,
) -> Result<()> {
    if direct.outstanding() == 0 {
        direct.ask(1).await?;
    }
    let room = prefetch.saturating_sub(held + bound.outstanding());
    if room > 0 && (room >= (prefetch / 2).max(1) || bound.outstanding() == 0) {
        bound.ask(room).await?;
    }
    Ok(())
}

async fn run(task: ConsumeTask, settler: Arc<NatsSettler>, tx: mpsc::Sender<Delivery>) {
    let prefetch = task.prefetch.max(1);
    let window = Arc::new(Semaphore::new(prefetch));
    'outer: loop {
        let Some((mut bound, mut direct)) = open_both(&task).await else {
            break;
        };
        loop {
            let held = prefetch - window.available_permits();
            if let Err(e) = top_up(&mut bound, &mut direct, prefetch, held).await {
                tracing::debug!(queue = %task.spec.name, error = %e, "pull request not sent; opening again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'outer;
            }
            let pulled = tokio::select! {
                _ = task.cancel.cancelled() => break 'outer,
                _ = tx.closed() => break 'outer,
                // A settlement made room: ask for more.
                _ = settler.freed.notified() => continue,
                p = bound.next() => p,
                p = direct.next() => p,
            };
            let message = match pulled {
                Some(Pulled::Message(m)) => m,
                Some(Pulled::Reset) => {
                    tracing::trace!(queue = %task.spec.name, "less on its way than asked for; asking again");
                    continue;
                }
                Some(Pulled::Gone(why)) => {
                    tracing::warn!(queue = %task.spec.name, reason = %why, "consumer gone; declaring it again");
                    let _ = task.shared.redeclare(&task.exchange, &task.spec).await;
                    continue 'outer;
                }
                None => continue 'outer,
            };
            // Never more than `prefetch` held: one that arrives past it (a request the server
            // answered after this side gave it up) goes back for a moment.
            let Ok(permit) = window.clone().try_acquire_owned() else {
                if let Some(reply) = message.reply.as_ref() {
                    let _ = settler
                        .send_ack(reply, AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                }
                continue;
            };
            if let Some(delivery) = take(&task, &settler, message, permit).await {
                if tx.send(delivery).await.is_err() {
                    break 'outer;
                }
            }
        }
    }
    if task.spec.auto_delete {
        task.shared
            .delete_queue(&task.exchange, &task.spec.name)
            .await;
    }
}

/// Decide what to do with one message: a delivery to hand out, or `None` when it was settled
/// here (skipped, expired, not yet due).
async fn take(
    task: &ConsumeTask,
    settler: &Arc<NatsSettler>,
    message: async_nats::Message,
    permit: OwnedSemaphorePermit,
) -> Option<Delivery> {
    let reply = message.reply.clone()?;
    let (sequence, delivered) = ack_info(reply.as_str());
    let subject = message.subject.as_str();
    let key = names::routing_key_of(&task.exchange, subject);
    if let (Some(key), Filtering::Client) = (key, &task.filtering) {
        let wanted = task
            .spec
            .bindings
            .iter()
            .any(|b| herald::pattern::topic_matches(b, key));
        if !wanted {
            let _ = settler.send_ack(&reply, AckKind::Ack).await;
            return None;
        }
    }
    let (envelope, extras) = wire::envelope(
        message.headers.as_ref(),
        key.unwrap_or(subject),
        message.payload,
    );
    let now = Utc::now().timestamp_millis();
    let queue_ttl_passed = task.spec.message_ttl.is_some_and(|ttl| {
        Utc::now()
            .signed_duration_since(envelope.time)
            .to_std()
            .unwrap_or_default()
            > ttl
    });
    if extras.expires_at.is_some_and(|at| at <= now) || queue_ttl_passed {
        let failure = Failure::now(
            &envelope,
            &task.spec.name,
            "expired",
            "the message's TTL passed before it was delivered",
        );
        match settler.dead_letter(&envelope, &failure, sequence).await {
            Ok(()) => {
                let _ = settler.send_ack(&reply, AckKind::Ack).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not dead-letter an expired message; it will come back")
            }
        }
        return None;
    }
    if let Some(at) = extras.not_before.filter(|at| *at > now) {
        let wait = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
        let _ = settler.send_ack(&reply, AckKind::Nak(Some(wait))).await;
        return None;
    }
    let tag = settler.next_tag.fetch_add(1, Ordering::Relaxed);
    lock(&settler.in_flight).insert(
        tag,
        InFlight {
            reply,
            sequence,
            since: Instant::now(),
            permit: Some(permit),
            freed: settler.freed.clone(),
        },
    );
    // Redelivered: JetStream delivered this stored message before (a consumer died, a release).
    let redelivered = delivered > 1;
    Some(Delivery::new(envelope, redelivered, tag, settler.clone()).with_trace(extras.trace))
}

/// The stream sequence and delivery count in a JetStream ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, with a
/// domain and an account hash after `ACK` and a random token at the end on newer servers.
fn ack_info(reply: &str) -> (u64, u64) {
    // This runs for every message: the dots are counted (a loop the compiler vectorizes),
    // then only the tail is walked, backwards, to the token wanted.
    let bytes = reply.as_bytes();
    let tokens = bytes.iter().filter(|&&b| b == b'.').count() + 1;
    // The n-th token from the end, 1 being the last.
    let from_end = |n: usize| -> Option<u64> {
        let mut end = bytes.len();
        for _ in 1..n {
            end = bytes[..end].iter().rposition(|&b| b == b'.')?;
        }
        let start = bytes[..end]
            .iter()
            .rposition(|&b| b == b'.')
            .map_or(0, |i| i + 1);
        std::str::from_utf8(&bytes[start..end])
            .ok()?
            .parse::<u64>()
            .ok()
    };
    let (sequence, delivered) = if tokens >= 12 {
        (from_end(5), from_end(6))
    } else {
        (from_end(4), from_end(5))
    };
    (sequence.unwrap_or(0), delivered.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::ack_info;

    #[test]
    fn ack_subjects_of_both_forms() {
        assert_eq!(
            ack_info("$JS.ACK.S.C.3.1234.17.1700000000000000000.5"),
            (1234, 3)
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.hash.S.C.2.99.4.1700000000000000000.0.tok"),
            (99, 2)
        );
        assert_eq!(ack_info("garbage"), (0, 1));
        assert_eq!(ack_info("a.b.c"), (0, 1), "too few tokens");
        assert_eq!(ack_info(""), (0, 1));
    }
}
