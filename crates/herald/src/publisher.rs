//! Publishing: build the envelope, check it, hand it to the transport, return once durable;
//! and answering requests ([`Publisher::reply`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::SmallVec;

use crate::envelope::{header, Envelope};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::telemetry::counters::Metrics;
use crate::telemetry::handles::{PublishCounters, PublishTelemetry};
use crate::telemetry::observe::Observe;
use crate::topology::Topology;
use crate::transport::{PublishOptions, Transport};

/// Named priority levels (reference 000's `MessagePriority`), over the numeric priority
/// 0..=9 that transports order by: `Low` = 0, `Normal` = 1, `High` = 2, `Critical` = 3, the
/// same numbers a publisher written against that reference uses. A message published without
/// a priority has 0. Queues order by priority only when declared with
/// [`QueueOptions::max_priority`](crate::QueueOptions::max_priority) (3 or more to tell these
/// four apart).
///
/// ```
/// use herald::{MessageOptions, Priority};
/// let urgent = MessageOptions::default().priority_level(Priority::Critical);
/// assert_eq!(urgent.priority, 3);
/// assert_eq!(Priority::of(urgent.priority), Priority::Critical);
/// assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// 0: whenever there is time.
    Low,
    /// 1: the usual.
    Normal,
    /// 2: ahead of the usual.
    High,
    /// 3: ahead of everything else.
    Critical,
}

impl Priority {
    /// The level of a numeric priority (3 and above are critical).
    pub fn of(priority: u8) -> Priority {
        match priority {
            0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            _ => Priority::Critical,
        }
    }

    /// Its name: `low`, `normal`, `high`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p as u8
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| format!("`{s}` is not a priority level: low, normal, high or critical"))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-message options for [`Publisher::publish_with`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageOptions {
    /// Priority 0..=9 (needs a queue declared with a max priority to take effect).
    pub priority: u8,
    /// Expire the message if not consumed within this time (it then goes to the dead letters).
    pub ttl: Option<Duration>,
    /// CloudEvents subject, e.g. the aggregate id.
    pub subject: Option<String>,
    /// Correlation id; defaults to none, which makes this event start a flow.
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context, sent unchanged. Leave it `None` (the usual case): the publish then
    /// continues the trace in force (see [`crate::trace`]) or starts a new one.
    pub traceparent: Option<String>,
    /// Extra headers (CloudEvents extensions).
    pub headers: BTreeMap<String, String>,
    /// Publish even when no queue is bound for the routing key.
    pub allow_unroutable: bool,
    /// The exchange to publish to, instead of the event's own (`#[event(exchange = ..)]`) or
    /// the bus's.
    pub exchange: Option<String>,
}

impl MessageOptions {
    /// With this priority, 0..=9.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority.min(9);
        self
    }
    /// With this named priority level.
    pub fn priority_level(mut self, level: Priority) -> Self {
        self.priority = level.into();
        self
    }
    /// To this exchange instead of the event's own or the bus's.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }
    /// With this time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// With this subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
    /// With this correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
    /// Allow publishing when no queue would receive it.
    pub fn allow_unroutable(mut self) -> Self {
        self.allow_unroutable = true;
        self
    }

    fn apply(&self, e: &mut Envelope) {
        e.priority = self.priority;
        e.ttl = self.ttl;
        e.subject.clone_from(&self.subject);
        e.correlation_id.clone_from(&self.correlation_id);
        e.causation_id.clone_from(&self.causation_id);
        e.traceparent.clone_from(&self.traceparent);
        e.headers
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// Publishes events for one service. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    core: Arc<PublishCore>,
}

pub(crate) struct PublishCore {
    pub transport: Arc<dyn Transport>,
    pub exchange: String,
    pub service: String,
    pub max_message_bytes: usize,
    pub allow_unroutable: bool,
    pub metrics: Arc<Metrics>,
    pub telemetry: PublishTelemetry,
    /// Sees every publish (the test harness).
    pub observer: Option<Arc<dyn Observe>>,
    /// Exchanges other than `exchange` declared on the way to a first publish there.
    pub declared: Mutex<Vec<String>>,
    /// In front of every exchange name given (empty but in the test harness; `exchange`
    /// already has it).
    pub namespace: String,
}

impl Publisher {
    pub(crate) fn new(core: PublishCore) -> Self {
        Publisher {
            core: Arc::new(core),
        }
    }

    /// Publish one event; returns its id once the transport durably accepted it.
    pub fn publish<E: Event>(&self, event: &E) -> impl Future<Output = Result<String>> + Send + '_ {
        self.publish_with(event, MessageOptions::default())
    }

    /// Publish one event with options.
    pub fn publish_with<E: Event>(
        &self,
        event: &E,
        options: MessageOptions,
    ) -> impl Future<Output = Result<String>> + Send + '_ {
        let prepared = Envelope::for_event(event, &self.core.service).map(|mut e| {
            options.apply(&mut e);
            (e.id.clone(), vec![e])
        });
        let exchange = match options.exchange {
            Some(x) => Some(Cow::Owned(format!("{}{x}", self.core.namespace))),
            None => E::EXCHANGE.map(|x| self.resolve(Some(x))),
        };
        self.send_one(prepared, exchange, options.allow_unroutable)
    }

    /// Send one envelope built before the returned future, as its id and a batch of one: the
    /// event, the options and the envelope itself are not held in the future across the wait
    /// for the broker, which keeps every publish's future small (many are in flight at once).
    async fn send_one(
        &self,
        prepared: Result<(String, Vec<Envelope>)>,
        exchange: Option<Cow<'static, str>>,
        allow_unroutable: bool,
    ) -> Result<String> {
        let (id, batch) = prepared?;
        self.send(exchange.as_deref(), batch, allow_unroutable)
            .await?;
        Ok(id)
    }

    /// Publish several events of one type in one all-or-nothing call; returns their ids.
    pub async fn publish_batch<E: Event>(&self, events: &[E]) -> Result<Vec<String>> {
        let envelopes = events
            .iter()
            .map(|e| Envelope::for_event(e, &self.core.service))
            .collect::<Result<Vec<_>>>()?;
        let ids = envelopes.iter().map(|e| e.id.clone()).collect();
        let exchange = self.resolve(E::EXCHANGE);
        self.send(Some(&exchange), envelopes, false).await?;
        Ok(ids)
    }

    /// Publish ready-made envelopes (foreign payloads, replays, the CLI).
    pub async fn publish_envelopes(
        &self,
        envelopes: Vec<Envelope>,
        allow_unroutable: bool,
    ) -> Result<()> {
        self.send(None, envelopes, allow_unroutable).await
    }

    /// Publish ready-made envelopes to `exchange` (declared first if this bus has not yet).
    pub async fn publish_envelopes_to(
        &self,
        exchange: &str,
        envelopes: Vec<Envelope>,
        allow_unroutable: bool,
    ) -> Result<()> {
        self.send(Some(exchange), envelopes, allow_unroutable).await
    }

    /// Answer `request` (a message a handler received from [`Bus::request`](crate::Bus::request))
    /// with `reply`: its causation id becomes the request's id, its correlation id the
    /// request's. It goes back the way the request came: the transport's own path (RabbitMQ's
    /// direct reply-to) or the requester's reply queue. Fails when `request` asked for no reply.
    pub async fn reply(&self, request: &Envelope, mut reply: Envelope) -> Result<()> {
        reply.causation_id = Some(request.id.clone());
        if reply.correlation_id.is_none() {
            reply.correlation_id = Some(request.correlation_or_id().to_string());
        }
        if let Some(native) = self.core.transport.request_reply() {
            if native.is_request(request) {
                return native.reply(request, reply).await;
            }
        }
        let (Some(exchange), Some(key)) = (
            request.headers.get(header::REPLY_EXCHANGE),
            request.headers.get(header::REPLY_TO),
        ) else {
            return Err(Error::Config(format!(
                "event {} asked for no reply (it was published, not sent with Bus::request)",
                request.id
            )));
        };
        reply.routing_key.clone_from(key);
        // A requester that gave up is gone with its reply queue: the reply is then unroutable.
        self.send(Some(exchange), vec![reply], false).await
    }

    /// The service name events are published as.
    pub fn service(&self) -> &str {
        &self.core.service
    }

    /// The exchange events go to.
    pub fn exchange(&self) -> &str {
        &self.core.exchange
    }

    /// The transport, for what publishing alone does not cover (request/reply).
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.core.transport
    }

    /// The full name of an exchange given by name (`None`: the bus's own).
    pub(crate) fn resolve<'a>(&self, exchange: Option<&'a str>) -> Cow<'a, str> {
        match exchange {
            None => Cow::Owned(self.core.exchange.clone()),
            Some(x) if self.core.namespace.is_empty() => Cow::Borrowed(x),
            Some(x) => Cow::Owned(format!("{}{x}", self.core.namespace)),
        }
    }

    /// Publish to `exchange` (its full name; `None`: the bus's own).
    pub(crate) async fn send(
        &self,
        exchange: Option<&str>,
        mut envelopes: Vec<Envelope>,
        allow_unroutable: bool,
    ) -> Result<()> {
        let exchange = match exchange {
            Some(x) if x != self.core.exchange => {
                self.declare(x).await?;
                x
            }
            _ => &self.core.exchange,
        };
        let kind = self.core.transport.kind();
        let span = crate::trace::spans::publish_span(kind, exchange, &mut envelopes);
        crate::trace::spans::instrument(
            self.send_traced(exchange, envelopes, allow_unroutable),
            span,
        )
        .await
    }

    /// Declare an exchange other than the bus's before the first publish to it (a broker
    /// refuses a publish to an exchange that does not exist).
    async fn declare(&self, exchange: &str) -> Result<()> {
        let known = |d: &Mutex<Vec<String>>| {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|x| x == exchange)
        };
        if known(&self.core.declared) {
            return Ok(());
        }
        self.core
            .transport
            .apply_topology(&Topology::new(exchange))
            .await?;
        let mut declared = self.core.declared.lock().unwrap_or_else(|e| e.into_inner());
        if !declared.iter().any(|x| x == exchange) {
            declared.push(exchange.to_string());
        }
        Ok(())
    }

    async fn send_traced(
        &self,
        exchange: &str,
        envelopes: Vec<Envelope>,
        allow_unroutable: bool,
    ) -> Result<()> {
        for e in &envelopes {
            if e.body.len() > self.core.max_message_bytes {
                return Err(Error::TooLarge {
                    size: e.body.len(),
                    limit: self.core.max_message_bytes,
                });
            }
        }
        let options = PublishOptions {
            require_route: !(allow_unroutable || self.core.allow_unroutable),
        };
        // The envelopes go to the transport; what is counted after is taken before.
        let counters = publish_counters(&self.core, &envelopes);
        let n = envelopes.len() as u64;
        let observed = self.core.observer.as_ref().map(|_| envelopes.clone());
        let result = self
            .core
            .transport
            .publish_owned(exchange, envelopes, options)
            .await;
        for (c, k) in &counters {
            c.record(*k, &result);
        }
        result?;
        self.core.metrics.add_published(n);
        if let (Some(observer), Some(envelopes)) = (&self.core.observer, observed) {
            observer.published(exchange, &envelopes);
        }
        Ok(())
    }
}

/// The counters of a publish call, per event type, with how many of each (a batch is usually
/// of one type: one lookup per run).
fn publish_counters(
    core: &PublishCore,
    envelopes: &[Envelope],
) -> SmallVec<[(Arc<PublishCounters>, u64); 1]> {
    envelopes
        .chunk_by(|a, b| a.event_type == b.event_type)
        .map(|run| {
            (
                core.telemetry.counters(&core.service, &run[0].event_type),
                run.len() as u64,
            )
        })
        .collect()
}
