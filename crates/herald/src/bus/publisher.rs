//! Publishing: build the envelope, check it, hand it to the transport, return once durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::metrics::Metrics;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::telemetry::handles::PublishTelemetry;
use crate::transport::{PublishOptions, Transport};

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
}

impl MessageOptions {
    /// With this priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority.min(9);
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
        self.send_one(prepared, options.allow_unroutable)
    }

    /// Send one envelope built before the returned future, as its id and a batch of one: the
    /// event, the options and the envelope itself are not held in the future across the wait
    /// for the broker, which keeps every publish's future small (many are in flight at once).
    async fn send_one(
        &self,
        prepared: Result<(String, Vec<Envelope>)>,
        allow_unroutable: bool,
    ) -> Result<String> {
        let (id, batch) = prepared?;
        self.send(batch, allow_unroutable).await?;
        Ok(id)
    }

    /// Publish several events of one type in one all-or-nothing call; returns their ids.
    pub async fn publish_batch<E: Event>(&self, events: &[E]) -> Result<Vec<String>> {
        let envelopes = events
            .iter()
            .map(|e| Envelope::for_event(e, &self.core.service))
            .collect::<Result<Vec<_>>>()?;
        let ids = envelopes.iter().map(|e| e.id.clone()).collect();
        self.send(envelopes, false).await?;
        Ok(ids)
    }

    /// Publish ready-made envelopes (foreign payloads, replays, the CLI).
    pub async fn publish_envelopes(
        &self,
        envelopes: Vec<Envelope>,
        allow_unroutable: bool,
    ) -> Result<()> {
        self.send(envelopes, allow_unroutable).await
    }

    /// The service name events are published as.
    pub fn service(&self) -> &str {
        &self.core.service
    }

    /// The exchange events go to.
    pub fn exchange(&self) -> &str {
        &self.core.exchange
    }

    async fn send(&self, mut envelopes: Vec<Envelope>, allow_unroutable: bool) -> Result<()> {
        let kind = self.core.transport.kind();
        let span = crate::trace::spans::publish_span(kind, &self.core.exchange, &mut envelopes);
        crate::trace::spans::instrument(self.send_traced(envelopes, allow_unroutable), span).await
    }

    async fn send_traced(&self, envelopes: Vec<Envelope>, allow_unroutable: bool) -> Result<()> {
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
        let result = self
            .core
            .transport
            .publish(&self.core.exchange, &envelopes, options)
            .await;
        record_publish(&self.core, &envelopes, &result);
        result?;
        self.core.metrics.add_published(envelopes.len() as u64);
        Ok(())
    }
}

/// Count a publish call per event type (a batch is usually of one type: one lookup per run).
fn record_publish(core: &PublishCore, envelopes: &[Envelope], result: &Result<()>) {
    for run in envelopes.chunk_by(|a, b| a.event_type == b.event_type) {
        core.telemetry
            .record(&core.service, &run[0].event_type, run.len() as u64, result);
    }
}
