//! One Herald consumer: a member of the queue's consumer group, on a thread of its own.
//!
//! The thread polls librdkafka (which also serves the group's rebalance callbacks, and may
//! block in them), turns records into deliveries and hands them over through a channel. It
//! reads the exchange's topic, skipping records whose routing key the queue does not bind,
//! and the queue's retry topics, holding a retry record (and pausing its partition) until the
//! record's `herald_not_before`. At most `prefetch` deliveries are out at once. Offsets are
//! committed every `commit_interval`, never past an unsettled delivery ([`crate::offsets`]);
//! a rebalance waits (up to `revoke_grace`) for the deliveries of revoked partitions, so
//! instances joining and leaving a group rarely hand each other a message twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::envelope::{format_time, header, Envelope};
use herald::error::Result;
use herald::pattern::topic_matches;
use herald::topology::QueueSpec;
use herald::transport::{Delivery, Failure, Outcome, Settle};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::admin::{kafka_error, lock};
use crate::config::{dead_letter_topic, pick_level, retry_topic, KafkaConfig};
use crate::hub::Hub;
use crate::offsets::{Assignment, Delayed, Tp};
use crate::producer::Producer;
use crate::wire;

/// What a consumer reads and where its copies go.
pub(crate) struct Plan {
    pub queue: QueueSpec,
    pub exchange_topic: Arc<str>,
    /// `(level, topic)`, shortest first.
    pub retry_topics: Vec<(Duration, Arc<str>)>,
    pub dead_letter_topic: String,
    pub prefetch: usize,
}

impl Plan {
    pub fn new(
        cfg: &KafkaConfig,
        queue: &QueueSpec,
        exchange_topic: &str,
        prefetch: usize,
    ) -> Self {
        Plan {
            queue: queue.clone(),
            exchange_topic: Arc::from(exchange_topic),
            retry_topics: cfg
                .retry_levels(&queue.retry_delays)
                .into_iter()
                .map(|l| (l, Arc::from(retry_topic(&queue.name, l))))
                .collect(),
            dead_letter_topic: dead_letter_topic(&queue.name),
            prefetch: prefetch.max(1),
        }
    }

    fn topic(&self, name: &str) -> Option<Arc<str>> {
        if *self.exchange_topic == *name {
            return Some(self.exchange_topic.clone());
        }
        self.retry_topics
            .iter()
            .find(|(_, t)| **t == *name)
            .map(|(_, t)| t.clone())
    }

    /// The retry topic for a delay.
    pub fn retry_topic_for(&self, delay: Duration) -> &str {
        let levels: Vec<Duration> = self.retry_topics.iter().map(|(l, _)| *l).collect();
        let level = pick_level(&levels, delay);
        self.retry_topics
            .iter()
            .find(|(l, _)| *l == level)
            .or(self.retry_topics.first())
            .map_or(&*self.exchange_topic, |(_, t)| t)
    }
}

/// What the thread, the rebalance callbacks and the deliveries share.
pub(crate) struct Shared {
    pub plan: Plan,
    pub producer: Arc<Producer>,
    state: Mutex<Assignment>,
    /// Signalled when a delivery ends.
    ended: Condvar,
    /// Stop taking messages; wait for those out, then commit and leave the group.
    pub cancel: CancellationToken,
    /// The transport was dropped (a process gone): leave at once, waiting for nothing.
    pub hard_stop: Arc<AtomicBool>,
    cfg: Arc<KafkaConfig>,
}

impl Shared {
    pub fn new(
        plan: Plan,
        producer: Arc<Producer>,
        cfg: Arc<KafkaConfig>,
        cancel: CancellationToken,
        hard_stop: Arc<AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            plan,
            producer,
            state: Mutex::default(),
            ended: Condvar::new(),
            cancel,
            hard_stop,
            cfg,
        })
    }

    fn stopping(&self) -> bool {
        self.cancel.is_cancelled() || self.hard_stop.load(Ordering::Relaxed)
    }

    fn finish(&self, tp: &Tp, offset: i64, epoch: u64, settled: bool) {
        lock(&self.state).finish(tp, offset, epoch, settled);
        self.ended.notify_all();
    }

    /// Wait up to `within` for a delivery to end.
    fn wait(&self, within: Duration) {
        let state = lock(&self.state);
        let _ = self.ended.wait_timeout(state, within);
    }
}

/// One delivery's settlement; dropped unsettled, it leaves its record uncommitted.
struct Ticket {
    shared: Arc<Shared>,
    tp: Tp,
    offset: i64,
    epoch: u64,
    done: AtomicBool,
}

impl Ticket {
    fn new(shared: &Arc<Shared>, tp: &Tp, offset: i64, epoch: u64) -> Arc<Self> {
        Arc::new(Ticket {
            shared: shared.clone(),
            tp: tp.clone(),
            offset,
            epoch,
            done: AtomicBool::new(false),
        })
    }

    /// Produce the copy an outcome asks for, then let the offset be committed.
    async fn carry_out(&self, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        let plan = &self.shared.plan;
        let now_ms = chrono::Utc::now().timestamp_millis();
        match outcome {
            Outcome::Ack => {}
            Outcome::Retry { delay, failure } => {
                let mut copy = envelope.clone();
                copy.attempt += 1;
                failure.record(&mut copy);
                copy.ttl = None;
                let due = now_ms + delay.as_millis() as i64;
                let topic = plan.retry_topic_for(delay);
                self.shared
                    .producer
                    .publish(topic, std::slice::from_ref(&copy), Some(due))
                    .await?;
            }
            Outcome::Release { delay } => {
                let due = now_ms + delay.as_millis() as i64;
                let topic = plan.retry_topic_for(delay);
                self.shared
                    .producer
                    .publish(topic, std::slice::from_ref(envelope), Some(due))
                    .await?;
            }
            Outcome::DeadLetter(failure) => {
                let copy = dead_letter(envelope, &failure);
                self.shared
                    .producer
                    .publish(&plan.dead_letter_topic, std::slice::from_ref(&copy), None)
                    .await?;
            }
        }
        if !self.done.swap(true, Ordering::AcqRel) {
            self.shared.finish(&self.tp, self.offset, self.epoch, true);
        }
        Ok(())
    }
}

/// The dead letter for `envelope`: failure recorded, time stamped.
pub(crate) fn dead_letter(envelope: &Envelope, failure: &Failure) -> Envelope {
    let mut copy = envelope.clone();
    failure.record(&mut copy);
    copy.headers.insert(
        header::DEAD_LETTERED_AT.into(),
        format_time(&chrono::Utc::now()),
    );
    copy.ttl = None;
    copy
}

#[async_trait]
impl Settle for Ticket {
    async fn settle(&self, _tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        self.carry_out(envelope, outcome).await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.shared.finish(&self.tp, self.offset, self.epoch, false);
        }
    }
}

/// librdkafka's callbacks for one consumer.
pub(crate) struct Callbacks(pub Arc<Shared>);

impl ClientContext for Callbacks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::admin::log(level, fac, message);
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let shared = &self.0;
        let tps: Vec<Tp> = revoked
            .elements()
            .iter()
            .filter_map(|e| Some((shared.plan.topic(e.topic())?, e.partition())))
            .collect();
        // Let the handlers finish what they hold of these partitions, so the next owner does
        // not get it again; not when stopping (the bus already settled what it could).
        let deadline = Instant::now() + shared.cfg.revoke_grace;
        while !shared.stopping() && Instant::now() < deadline {
            let in_hand: usize = {
                let state = lock(&shared.state);
                tps.iter()
                    .filter_map(|tp| state.partitions.get(tp))
                    .map(|p| p.in_hand())
                    .sum()
            };
            if in_hand == 0 {
                break;
            }
            shared.wait(Duration::from_millis(20));
        }
        let waited = deadline.elapsed();
        let started = Instant::now();
        commit(consumer, shared, CommitMode::Sync);
        tracing::debug!(queue = %shared.plan.queue.name, partitions = tps.len(), ?waited, commit = ?started.elapsed(), "revoked");
        let mut state = lock(&shared.state);
        for tp in &tps {
            state.partitions.remove(tp);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let shared = &self.0;
            let tps: Vec<Tp> = assigned
                .elements()
                .iter()
                .filter_map(|e| Some((shared.plan.topic(e.topic())?, e.partition())))
                .collect();
            tracing::debug!(queue = %shared.plan.queue.name, partitions = tps.len(), "assigned");
            lock(&shared.state).assign(tps);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(queue = %self.0.plan.queue.name, error = %e, "offset commit failed; sending it again");
            let shared = &self.0;
            let tps: Vec<Tp> = offsets
                .elements()
                .iter()
                .filter_map(|el| Some((shared.plan.topic(el.topic())?, el.partition())))
                .collect();
            lock(&shared.state).commit_failed(&tps);
        }
    }
}

/// Commit every position that moved.
fn commit(consumer: &BaseConsumer<Callbacks>, shared: &Shared, mode: CommitMode) {
    let commits = lock(&shared.state).commits();
    if commits.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &commits {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::debug!(queue = %shared.plan.queue.name, error = %e, "offset commit failed");
        let tps: Vec<Tp> = commits.into_iter().map(|(tp, _)| tp).collect();
        lock(&shared.state).commit_failed(&tps);
    }
}

/// Create the group member and subscribe it (on the caller's thread: errors are returned).
pub(crate) fn subscribe(shared: &Arc<Shared>) -> Result<BaseConsumer<Callbacks>> {
    let consumer: BaseConsumer<Callbacks> = shared
        .cfg
        .consumer(&shared.plan.queue.name)
        .create_with_context(Callbacks(shared.clone()))
        .map_err(|e| kafka_error("cannot create a consumer", e))?;
    let mut topics: Vec<&str> = vec![&shared.plan.exchange_topic];
    topics.extend(shared.plan.retry_topics.iter().map(|(_, t)| &**t));
    consumer
        .subscribe(&topics)
        .map_err(|e| kafka_error("cannot subscribe", e))?;
    Ok(consumer)
}

/// The consumer thread's body: runs until the member is cancelled (its last consumer left)
/// or stopped hard.
pub(crate) fn run(shared: Arc<Shared>, consumer: BaseConsumer<Callbacks>, hub: Arc<Hub>) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let mut reader = Reader {
        shared: &shared,
        consumer: &consumer,
        hub: &hub,
        runtime,
    };
    let mut last_commit = Instant::now();
    let interval = shared.cfg.commit_interval;
    let mut last_report = Instant::now();
    let mut taken = 0u64;
    loop {
        if last_report.elapsed() >= Duration::from_secs(5) {
            let state = lock(&shared.state);
            tracing::trace!(queue = %shared.plan.queue.name, outstanding = state.outstanding, partitions = state.partitions.len(), taken, "consumer");
            last_report = Instant::now();
        }
        if shared.stopping() {
            break;
        }
        if last_commit.elapsed() >= interval {
            commit(&consumer, &shared, CommitMode::Async);
            last_commit = Instant::now();
        }
        if lock(&shared.state).outstanding >= shared.plan.prefetch {
            shared.wait(Duration::from_millis(50));
            continue;
        }
        let next_due = reader.deliver_due();
        let timeout = next_due.map_or(Duration::from_millis(50), |d| {
            d.min(Duration::from_millis(50))
        });
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                taken += 1;
                reader.take(&m)
            }
            Some(Err(e)) => {
                tracing::debug!(queue = %shared.plan.queue.name, error = %e, "consumer error")
            }
            None => {}
        }
    }
    // Wait for what is out (the bus settles or releases it), then commit and leave.
    let patience = if !hub.attached() {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(30)
    };
    let deadline = Instant::now() + patience;
    while !shared.hard_stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if lock(&shared.state).outstanding == 0 {
            break;
        }
        shared.wait(Duration::from_millis(20));
    }
    commit(&consumer, &shared, CommitMode::Sync);
    drop(consumer);
    tracing::debug!(queue = %shared.plan.queue.name, "consumer left its group");
}

/// Turns records into deliveries.
struct Reader<'a> {
    shared: &'a Arc<Shared>,
    consumer: &'a BaseConsumer<Callbacks>,
    hub: &'a Hub,
    runtime: Option<tokio::runtime::Handle>,
}

impl Reader<'_> {
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let plan = &self.shared.plan;
        let Some(topic) = plan.topic(m.topic()) else {
            return;
        };
        let tp: Tp = (topic.clone(), m.partition());
        let offset = m.offset();
        let from_exchange = Arc::ptr_eq(&topic, &plan.exchange_topic);
        // Only the routing key is needed to skip a record of another event.
        if from_exchange && !self.binds(m) {
            if let Some(p) = lock(&self.shared.state).partitions.get_mut(&tp) {
                p.take(offset, false);
            }
            return;
        }
        let received = wire::read(m);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut envelope = received.envelope;
        let ttl = match (envelope.ttl, plan.queue.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expired = ttl
            .zip(received.timestamp)
            .is_some_and(|(ttl, at)| at + ttl.as_millis() as i64 <= now_ms);
        let mut state = lock(&self.shared.state);
        let Some(p) = state.partitions.get_mut(&tp) else {
            return;
        };
        let epoch = p.epoch;
        p.take(offset, true);
        let due = received
            .not_before
            .filter(|d| *d > now_ms && !from_exchange);
        if due.is_some() || !p.delayed.is_empty() {
            let was_idle = p.delayed.is_empty();
            p.delayed.push_back(Delayed {
                offset,
                due_ms: due.unwrap_or(now_ms),
                envelope,
            });
            drop(state);
            if was_idle {
                let _ = self.consumer.pause(&tpl_of(&tp));
            }
            return;
        }
        state.outstanding += 1;
        drop(state);
        let ticket = Ticket::new(self.shared, &tp, offset, epoch);
        if expired {
            envelope.ttl = None;
            let failure = Failure::now(
                &envelope,
                &plan.queue.name,
                "expired",
                "the message's time to live passed before it was delivered",
            );
            match &self.runtime {
                Some(rt) => {
                    rt.spawn(async move {
                        if let Err(e) = ticket.carry_out(&envelope, Outcome::DeadLetter(failure)).await {
                            tracing::warn!(error = %e, "could not dead-letter an expired message; it is delivered again later");
                        }
                    });
                }
                None => drop(ticket),
            }
            return;
        }
        self.hand_over(envelope, ticket);
    }

    fn binds(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        use rdkafka::message::Headers;
        let key = m.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == wire::ROUTING_KEY)
                .or_else(|| hs.iter().find(|h| h.key == "ce_type"))
                .and_then(|h| h.value)
        });
        let key = key.map_or(
            std::borrow::Cow::Borrowed(m.topic()),
            String::from_utf8_lossy,
        );
        self.shared
            .plan
            .queue
            .bindings
            .iter()
            .any(|b| topic_matches(b, &key))
    }

    fn hand_over(&self, envelope: Envelope, ticket: Arc<Ticket>) {
        let delivery = Delivery::new(envelope, false, 0, ticket);
        if !self.hub.push(delivery) {
            tracing::debug!(queue = %self.shared.plan.queue.name, "no consumer left; stopping");
        }
    }

    /// Hand over the retry records that are due (as many as the prefetch allows), resuming a
    /// partition whose wait is over; returns how long until the next one is due.
    fn deliver_due(&mut self) -> Option<Duration> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut ready = Vec::new();
        let mut resume = Vec::new();
        let mut next_due: Option<i64> = None;
        {
            let mut state = lock(&self.shared.state);
            let mut room = self.shared.plan.prefetch.saturating_sub(state.outstanding);
            let mut taken = 0;
            for (tp, p) in state.partitions.iter_mut() {
                let mut popped = false;
                while room > 0 && p.delayed.front().is_some_and(|d| d.due_ms <= now_ms) {
                    if let Some(d) = p.delayed.pop_front() {
                        ready.push((tp.clone(), p.epoch, d));
                        room -= 1;
                        taken += 1;
                        popped = true;
                    }
                }
                match p.delayed.front() {
                    Some(d) => next_due = Some(next_due.map_or(d.due_ms, |n| n.min(d.due_ms))),
                    None if popped => resume.push(tp.clone()),
                    None => {}
                }
            }
            state.outstanding += taken;
        }
        for tp in &resume {
            let _ = self.consumer.resume(&tpl_of(tp));
        }
        for (tp, epoch, d) in ready {
            let ticket = Ticket::new(self.shared, &tp, d.offset, epoch);
            self.hand_over(d.envelope, ticket);
        }
        next_due.map(|d| Duration::from_millis(u64::try_from(d - now_ms).unwrap_or(0)))
    }
}

fn tpl_of(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    tpl
}
