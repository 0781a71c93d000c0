//! Sagas (process managers): a typed state machine per business flow, correlated by an id taken
//! from its events.
//!
//! A transition is one database transaction: the message's id is recorded (a redelivery is not
//! a second transition), the state is saved with optimistic concurrency (a concurrent transition
//! makes this one run again on the new state), the commands it sends are staged in the outbox,
//! and its timeouts are written as rows. Nothing is sent before the state is saved, and a reply
//! cannot overtake the state that expects it: the relay publishes only what was committed.
//! Timeouts fire after a restart, exactly once (the row is deleted in the transaction of the
//! transition it causes). A failed step sends the compensations registered by the steps before
//! it ([`Effects::on_compensate`], [`Effects::compensate`]). Instances stuck without a pending
//! timeout are listed by [`SagaStore::instances`] (`herald sagas --stuck`, `GET /api/sagas`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald::Event;
//! use herald_es::saga::{Effects, Saga, SagaRunner, SagaStatus, SagaStore, InstanceQuery};
//! use herald_es::sqlite::SqliteEventStore;
//! use herald_es::event_set;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "order.placed")]
//! pub struct OrderPlaced { pub order_id: String }
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "payment.charge")]
//! pub struct ChargePayment { pub order_id: String }
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "payment.captured")]
//! pub struct PaymentCaptured { pub order_id: String }
//!
//! event_set! {
//!     #[derive(Debug, Clone)]
//!     pub enum PaymentFlowEvent { Placed(OrderPlaced), Captured(PaymentCaptured) }
//! }
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct PaymentFlow { order_id: String, paid: bool, gave_up: bool }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct PaymentLate;
//!
//! impl Saga for PaymentFlow {
//!     const NAME: &'static str = "payment-flow";
//!     type Event = PaymentFlowEvent;
//!     type Timeout = PaymentLate;
//!     fn correlate(e: &PaymentFlowEvent) -> Option<String> {
//!         Some(match e { PaymentFlowEvent::Placed(e) => e.order_id.clone(), PaymentFlowEvent::Captured(e) => e.order_id.clone() })
//!     }
//!     fn starts(e: &PaymentFlowEvent) -> bool { matches!(e, PaymentFlowEvent::Placed(_)) }
//!     fn handle(&mut self, e: &PaymentFlowEvent, fx: &mut Effects<PaymentLate>) {
//!         match e {
//!             PaymentFlowEvent::Placed(e) => {
//!                 self.order_id = e.order_id.clone();
//!                 fx.send(&ChargePayment { order_id: e.order_id.clone() });
//!                 fx.schedule("payment", Duration::from_secs(30), PaymentLate);
//!             }
//!             PaymentFlowEvent::Captured(_) => {
//!                 self.paid = true;
//!                 fx.cancel("payment");
//!                 fx.complete();
//!             }
//!         }
//!     }
//!     fn on_timeout(&mut self, _: PaymentLate, fx: &mut Effects<PaymentLate>) {
//!         self.gave_up = true;
//!         fx.fail("no payment in 30 s");
//!     }
//!     fn state_name(&self) -> String {
//!         (if self.paid { "paid" } else if self.gave_up { "gave_up" } else { "awaiting_payment" }).into()
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(SqliteEventStore::open(dir.path().join("es.db"), "order-service")?);
//! let runner = SagaRunner::<PaymentFlow>::new(store.clone());
//! let placed = herald::Envelope::for_event(&OrderPlaced { order_id: "o-1".into() }, "shop")?;
//! runner.handle(&placed).await?;
//! runner.handle(&placed).await?; // a redelivery: no second transition
//! let list = store.instances(&InstanceQuery::default()).await?;
//! assert_eq!((list[0].state_name.as_str(), list[0].version), ("awaiting_payment", 1));
//! assert!(list[0].next_timeout_at.is_some());
//! # Ok::<(), herald_es::Error>(())
//! # }).unwrap();
//! ```

mod runner;
mod store;

use std::time::Duration;

use herald::{Envelope, Event};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use runner::{Handled, SagaRunner};
pub use store::{
    CommitOutcome, DueTimeout, InstanceQuery, NewTimeout, SagaCommit, SagaInstance,
    SagaInstanceInfo, SagaStore, Trigger,
};

use crate::event_set::EventSet;

/// A saga: its state is `Self`, its transitions are [`Saga::handle`] and [`Saga::on_timeout`].
/// Both are plain functions of the state: what they want done goes into [`Effects`], which the
/// runner commits with the new state in one transaction.
pub trait Saga: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga's name (instances are keyed by it and their id).
    const NAME: &'static str;
    /// The events it reacts to.
    type Event: EventSet;
    /// What its timeouts carry.
    type Timeout: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The instance an event belongs to (e.g. its order id); `None`: not for this saga.
    fn correlate(event: &Self::Event) -> Option<String>;

    /// Whether an event may start a new instance. Any other event for an unknown instance is an
    /// error the bus retries (and dead-letters if the instance never appears).
    fn starts(event: &Self::Event) -> bool;

    /// React to an event.
    fn handle(&mut self, event: &Self::Event, fx: &mut Effects<Self::Timeout>);

    /// React to a timeout that came due.
    fn on_timeout(&mut self, timeout: Self::Timeout, fx: &mut Effects<Self::Timeout>);

    /// A short name for the current state, shown in listings (`awaiting_payment`).
    fn state_name(&self) -> String;
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    /// Still running: waiting for a message or a timeout.
    Active,
    /// Finished successfully.
    Completed,
    /// Finished by compensating what it had done.
    Compensated,
    /// Finished without success and without compensations.
    Failed,
}

impl SagaStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Active => "active",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => SagaStatus::Active,
            "completed" => SagaStatus::Completed,
            "compensated" => SagaStatus::Compensated,
            "failed" => SagaStatus::Failed,
            _ => return None,
        })
    }

    /// True once the instance finished (its timeouts are dropped).
    pub fn is_finished(self) -> bool {
        self != SagaStatus::Active
    }
}

/// A command kept for later (a compensation): enough to publish it again with a new id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCommand {
    /// The event name.
    pub event_type: String,
    /// Its contract version.
    pub event_version: u32,
    /// Its routing key.
    pub routing_key: String,
    /// Its JSON body.
    pub body: String,
}

impl StoredCommand {
    fn of<E: Event>(e: &E) -> Result<Self, String> {
        Ok(StoredCommand {
            event_type: E::NAME.to_string(),
            event_version: E::VERSION,
            routing_key: E::ROUTING_KEY.to_string(),
            body: serde_json::to_string(e).map_err(|e| e.to_string())?,
        })
    }

    /// A fresh envelope of the command.
    pub fn to_envelope(&self, source: &str) -> Envelope {
        Envelope::new(
            &self.event_type,
            self.event_version,
            &self.routing_key,
            source,
            bytes::Bytes::from(self.body.clone()),
        )
    }
}

/// What a transition wants done, committed with the new state.
#[derive(Debug)]
pub struct Effects<T> {
    pub(crate) sends: Vec<Envelope>,
    pub(crate) schedule: Vec<(String, Duration, T)>,
    pub(crate) cancel: Vec<String>,
    pub(crate) compensations: Vec<StoredCommand>,
    pub(crate) compensate: bool,
    pub(crate) status: Option<SagaStatus>,
    pub(crate) failure: Option<String>,
    pub(crate) errors: Vec<String>,
}

impl<T> Default for Effects<T> {
    fn default() -> Self {
        Effects {
            sends: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            compensations: Vec::new(),
            compensate: false,
            status: None,
            failure: None,
            errors: Vec::new(),
        }
    }
}

impl<T> Effects<T> {
    /// Send a command (or any event): staged in the outbox in the transition's transaction,
    /// with the flow's correlation id, the triggering message as causation, and the instance id
    /// as subject (commands of one instance are published in order).
    pub fn send<E: Event>(&mut self, command: &E) {
        match Envelope::for_event(command, "") {
            Ok(e) => self.sends.push(e),
            Err(e) => self.errors.push(e.to_string()),
        }
    }

    /// Fire `timeout` after `after`, durably; a timeout of the same key replaces it.
    pub fn schedule(&mut self, key: &str, after: Duration, timeout: T) {
        self.cancel.retain(|k| k != key);
        self.schedule.push((key.to_string(), after, timeout));
    }

    /// Drop the pending timeout of this key, if any.
    pub fn cancel(&mut self, key: &str) {
        self.schedule.retain(|(k, _, _)| k != key);
        self.cancel.push(key.to_string());
    }

    /// Remember `command` as the compensation of a step that succeeded; [`compensate`]
    /// sends the remembered commands, the last remembered first.
    ///
    /// [`compensate`]: Effects::compensate
    pub fn on_compensate<E: Event>(&mut self, command: &E) {
        match StoredCommand::of(command) {
            Ok(c) => self.compensations.push(c),
            Err(e) => self.errors.push(e),
        }
    }

    /// Send every remembered compensation (newest first) and finish the instance as
    /// `compensated`.
    pub fn compensate(&mut self) {
        self.compensate = true;
        self.status = Some(SagaStatus::Compensated);
    }

    /// Finish the instance as `completed` (its pending timeouts are dropped).
    pub fn complete(&mut self) {
        self.status = Some(SagaStatus::Completed);
    }

    /// Finish the instance as `failed`, with a reason (logged).
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.status = Some(SagaStatus::Failed);
        self.failure = Some(reason.into());
    }
}
