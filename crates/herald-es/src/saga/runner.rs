//! Drives one saga: its messages from the bus, its timeouts from the store.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald::{Bus, Context, Envelope, SubscribeOptions};
use tokio_util::sync::CancellationToken;

use super::store::{CommitOutcome, DueTimeout, NewTimeout, SagaCommit, SagaStore, Trigger};
use super::{Effects, Saga, SagaStatus, StoredCommand};
use crate::error::{Error, Result};
use crate::event_set::EventSet;
use crate::telemetry::{SAGA_TIMEOUTS_FIRED, SAGA_TRANSITIONS};
use crate::upcast::Upcasters;

/// What handling a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A transition was committed.
    Transitioned,
    /// The message was handled before: nothing done.
    Duplicate,
    /// Not for this saga (not one of its events, or no instance id).
    Ignored,
}

/// Runs saga `S` on a [`SagaStore`].
pub struct SagaRunner<S: Saga> {
    store: Arc<dyn SagaStore>,
    upcasters: Upcasters,
    attempts: u32,
    timeout_poll: Duration,
    _s: PhantomData<fn() -> S>,
}

impl<S: Saga> SagaRunner<S> {
    /// On `store`: 20 attempts per transition when instances race, timeouts polled every
    /// 200 ms.
    pub fn new(store: Arc<dyn SagaStore>) -> Self {
        SagaRunner {
            store,
            upcasters: Upcasters::new(),
            attempts: 20,
            timeout_poll: Duration::from_millis(200),
            _s: PhantomData,
        }
    }

    /// Upcast incoming messages of old contract versions.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// How often due timeouts are looked for.
    pub fn timeout_poll(mut self, interval: Duration) -> Self {
        self.timeout_poll = interval;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.store
    }

    /// Subscribe the saga to each of its events on `bus` (queue
    /// `<service>.<saga name>.<routing key>`). A failed transition is retried by the bus's
    /// pipeline and dead-lettered with its reason at the end.
    pub fn subscribe(self: &Arc<Self>, bus: &Bus, options: SubscribeOptions) -> herald::Result<()> {
        for d in S::Event::descriptors() {
            let runner = self.clone();
            bus.subscribe_raw(
                &format!("{}.{}", S::NAME, d.routing_key),
                d.routing_key,
                move |ctx: Context| {
                    let runner = runner.clone();
                    async move {
                        runner.handle(ctx.envelope()).await?;
                        Ok::<(), Error>(())
                    }
                },
                options.clone(),
            )?;
        }
        Ok(())
    }

    /// Handle one message: decode, find the instance, run the transition, commit it.
    pub async fn handle(&self, envelope: &Envelope) -> Result<Handled> {
        let mut envelope = envelope.clone();
        self.upcasters.upcast(&mut envelope)?;
        let Some(event) = S::Event::from_envelope(&envelope)? else {
            return Ok(Handled::Ignored);
        };
        let Some(instance_id) = S::correlate(&event) else {
            return Ok(Handled::Ignored);
        };
        // An event that starts instances most often starts a new one: the first attempt then
        // writes the new instance without loading it first (one statement instead of two). If
        // the instance exists, that write changes nothing and reports a conflict, and the next
        // attempt loads it.
        let mut assume_new = S::starts(&event);
        for _ in 0..self.attempts {
            let loaded = if assume_new {
                None
            } else {
                self.store.load_instance(S::NAME, &instance_id).await?
            };
            let guessed = std::mem::take(&mut assume_new);
            let (mut state, version, status, correlation, compensations) = match loaded {
                Some(i) => (
                    decode_state::<S>(&i.state, &instance_id)?,
                    i.version,
                    i.status,
                    i.correlation_id,
                    i.compensations,
                ),
                None if S::starts(&event) => (
                    S::default(),
                    0,
                    SagaStatus::Active,
                    envelope.correlation_or_id().to_string(),
                    "[]".to_string(),
                ),
                None => {
                    return Err(Error::NoInstance {
                        saga: S::NAME.into(),
                        instance: instance_id,
                        event_type: envelope.event_type.clone(),
                    })
                }
            };
            let mut fx = Effects::default();
            state.handle(&event, &mut fx);
            let commit = self.commit_of(
                &instance_id,
                &correlation,
                &envelope.id,
                version,
                status,
                &compensations,
                state,
                fx,
                Trigger::Message(envelope.id.clone()),
            )?;
            match self.store.commit_transition(&commit).await? {
                CommitOutcome::Committed => {
                    count(S::NAME, CommitOutcome::Committed);
                    return Ok(Handled::Transitioned);
                }
                CommitOutcome::Duplicate => {
                    count(S::NAME, CommitOutcome::Duplicate);
                    return Ok(Handled::Duplicate);
                }
                // A wrong guess that the instance was new is not a race with another writer.
                CommitOutcome::Conflict if guessed => {}
                CommitOutcome::Conflict => count(S::NAME, CommitOutcome::Conflict),
            }
        }
        Err(Error::TooManyConflicts {
            what: format!("saga {} instance {instance_id}", S::NAME),
            attempts: self.attempts,
        })
    }

    /// Fire every timeout due now; returns how many fired. Each fires exactly once: its row is
    /// deleted in the transaction of the transition it causes.
    pub async fn fire_due_timeouts(&self) -> Result<usize> {
        let mut fired = 0;
        for timeout in self.store.due_timeouts(S::NAME, 256).await? {
            if self.fire(&timeout).await? {
                fired += 1;
            }
        }
        Ok(fired)
    }

    async fn fire(&self, timeout: &DueTimeout) -> Result<bool> {
        for _ in 0..self.attempts {
            let Some(instance) = self
                .store
                .load_instance(S::NAME, &timeout.instance_id)
                .await?
            else {
                self.store.drop_timeout(timeout.id).await?;
                return Ok(false);
            };
            let payload: S::Timeout = serde_json::from_str(&timeout.payload).map_err(|e| {
                Error::Data(format!(
                    "timeout `{}` of saga {} instance {} does not decode: {e}",
                    timeout.key,
                    S::NAME,
                    timeout.instance_id
                ))
            })?;
            let mut state = decode_state::<S>(&instance.state, &timeout.instance_id)?;
            let mut fx = Effects::default();
            state.on_timeout(payload, &mut fx);
            let cause = format!("timeout:{}:{}", S::NAME, timeout.id);
            let commit = self.commit_of(
                &timeout.instance_id,
                &instance.correlation_id,
                &cause,
                instance.version,
                instance.status,
                &instance.compensations,
                state,
                fx,
                Trigger::Timeout(timeout.id),
            )?;
            match self.store.commit_transition(&commit).await? {
                CommitOutcome::Committed => {
                    count(S::NAME, CommitOutcome::Committed);
                    metrics::counter!(SAGA_TIMEOUTS_FIRED, "saga" => S::NAME).increment(1);
                    return Ok(true);
                }
                CommitOutcome::Duplicate => return Ok(false),
                CommitOutcome::Conflict => count(S::NAME, CommitOutcome::Conflict),
            }
        }
        Err(Error::TooManyConflicts {
            what: format!("saga {} instance {}", S::NAME, timeout.instance_id),
            attempts: self.attempts,
        })
    }

    /// Fire due timeouts until `cancel` fires. Failures are logged and retried.
    pub async fn run_timeouts(&self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let wait = match self.fire_due_timeouts().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => self.timeout_poll,
                Err(e) => {
                    tracing::warn!(saga = S::NAME, error = %e, "firing saga timeouts failed; will retry");
                    self.timeout_poll.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Turn a transition's effects into the commit that stores them.
    #[allow(clippy::too_many_arguments)]
    fn commit_of(
        &self,
        instance_id: &str,
        correlation: &str,
        cause: &str,
        version: u64,
        status: SagaStatus,
        compensations: &str,
        state: S,
        fx: Effects<S::Timeout>,
        trigger: Trigger,
    ) -> Result<SagaCommit> {
        if let Some(e) = fx.errors.first() {
            return Err(Error::Data(format!(
                "saga {} instance {instance_id}: a message or timeout does not encode: {e}",
                S::NAME
            )));
        }
        let mut remembered: Vec<StoredCommand> = serde_json::from_str(compensations)
            .map_err(|e| Error::Data(format!("compensations of {instance_id}: {e}")))?;
        remembered.extend(fx.compensations);
        let mut sends = fx.sends;
        if fx.compensate {
            sends.extend(
                remembered
                    .drain(..)
                    .rev()
                    .map(|c| c.to_envelope(self.store.saga_service())),
            );
        }
        let service = self.store.saga_service();
        for e in &mut sends {
            e.source = service.to_string();
            e.correlation_id = Some(correlation.to_string());
            e.causation_id = Some(cause.to_string());
            e.subject = Some(format!("{}:{instance_id}", S::NAME));
        }
        let status = fx.status.unwrap_or(status);
        if let Some(reason) = &fx.failure {
            tracing::warn!(
                saga = S::NAME,
                instance = instance_id,
                reason,
                "saga failed"
            );
        }
        let now = Utc::now();
        let schedule = fx
            .schedule
            .into_iter()
            .map(|(key, after, payload)| {
                Ok(NewTimeout {
                    key,
                    due_at: now
                        + chrono::Duration::from_std(after)
                            .unwrap_or_else(|_| chrono::Duration::days(365 * 100)),
                    payload: serde_json::to_string(&payload)
                        .map_err(|e| Error::Data(format!("a timeout does not encode: {e}")))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SagaCommit {
            saga: S::NAME.to_string(),
            instance_id: instance_id.to_string(),
            correlation_id: correlation.to_string(),
            expected_version: version,
            state: serde_json::to_string(&state)
                .map_err(|e| Error::Data(format!("the saga state does not encode: {e}")))?,
            state_name: state.state_name(),
            status,
            compensations: serde_json::to_string(&remembered)
                .map_err(|e| Error::Data(e.to_string()))?,
            trigger,
            outbox: sends,
            schedule: if status.is_finished() {
                Vec::new()
            } else {
                schedule
            },
            cancel: fx.cancel,
            cancel_all: status.is_finished(),
        })
    }
}

fn decode_state<S: Saga>(state: &str, instance: &str) -> Result<S> {
    serde_json::from_str(state).map_err(|e| {
        Error::Data(format!(
            "the state of saga {} instance {instance} does not decode: {e}",
            S::NAME
        ))
    })
}

fn count(saga: &'static str, outcome: CommitOutcome) {
    let outcome = match outcome {
        CommitOutcome::Committed => "committed",
        CommitOutcome::Duplicate => "duplicate",
        CommitOutcome::Conflict => "conflict",
    };
    metrics::counter!(SAGA_TRANSITIONS, "saga" => saga, "outcome" => outcome).increment(1);
}
