//! Upcasting: stored events of an old contract version are transformed into the current one as
//! they are read (reference 002's "message transformation"). Stored rows are never rewritten.
//!
//! A step goes from one `(name, version)` to another; steps chain (v1 → v2 → v3). The typed form
//! keeps the old struct around under its old version:
//!
//! ```
//! use herald::Event;
//! use herald_es::Upcasters;
//! use serde::{Deserialize, Serialize};
//!
//! /// The contract as version 1 wrote it.
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "order.placed", version = 1)]
//! struct OrderPlacedV1 { order_id: String, total: u64 }
//!
//! /// Version 2 splits the total into cents and a currency.
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(name = "order.placed", version = 2)]
//! struct OrderPlaced { order_id: String, cents: u64, currency: String }
//!
//! let upcasters = Upcasters::new().step(|old: OrderPlacedV1| OrderPlaced {
//!     order_id: old.order_id,
//!     cents: old.total * 100,
//!     currency: "EUR".into(),
//! });
//! let mut stored = herald::Envelope::new("order.placed", 1, "order.placed", "shop",
//!     bytes::Bytes::from_static(br#"{"order_id":"o-1","total":7}"#));
//! upcasters.upcast(&mut stored).unwrap();
//! assert_eq!((stored.event_version, stored.routing_key.as_str()), (2, "order.placed.v2"));
//! assert_eq!(stored.body_value()["cents"], 700);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald::{Envelope, Event};
use serde_json::Value;

use crate::error::{Error, Result};

type StepFn = Arc<dyn Fn(Value) -> std::result::Result<Value, String> + Send + Sync>;

#[derive(Clone)]
struct Step {
    to_name: String,
    to_version: u32,
    f: StepFn,
}

/// The upcasting steps a store applies when it reads. Cheap to clone.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: Arc<HashMap<(String, u32), Step>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("from", &keys).finish()
    }
}

/// The most steps one event may go through (a guard against a cycle of steps).
const MAX_STEPS: usize = 64;

impl Upcasters {
    /// No steps: events are read as they were stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// A typed step from `Old` (the contract as it was stored) to `New`.
    pub fn step<Old: Event, New: Event>(
        self,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self {
        self.step_json(Old::NAME, Old::VERSION, New::NAME, New::VERSION, move |v| {
            let old: Old = serde_json::from_value(v).map_err(|e| {
                format!(
                    "the stored body is not a {} (v{}): {e}",
                    std::any::type_name::<Old>(),
                    Old::VERSION
                )
            })?;
            serde_json::to_value(f(old)).map_err(|e| e.to_string())
        })
    }

    /// A step on the JSON body, from `(name, version)` to `(to_name, to_version)`.
    pub fn step_json(
        mut self,
        name: &str,
        version: u32,
        to_name: &str,
        to_version: u32,
        f: impl Fn(Value) -> std::result::Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.steps).insert(
            (name.to_string(), version),
            Step {
                to_name: to_name.to_string(),
                to_version,
                f: Arc::new(f),
            },
        );
        self
    }

    /// True when no step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Transform `envelope` in place through every step that applies: type, version, routing
    /// key and body change; the id and metadata stay.
    pub fn upcast(&self, envelope: &mut Envelope) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        let mut applied = 0;
        while let Some(step) = self
            .steps
            .get(&(envelope.event_type.clone(), envelope.event_version))
        {
            applied += 1;
            if applied > MAX_STEPS {
                return Err(Error::Decode {
                    event_type: envelope.event_type.clone(),
                    event_version: envelope.event_version,
                    event_id: envelope.id.clone(),
                    reason: "the upcasting steps form a cycle".into(),
                });
            }
            let fail = |reason: String| Error::Decode {
                event_type: envelope.event_type.clone(),
                event_version: envelope.event_version,
                event_id: envelope.id.clone(),
                reason: format!("upcasting to v{} failed: {reason}", step.to_version),
            };
            let value: Value = serde_json::from_slice(&envelope.body)
                .map_err(|e| fail(format!("the stored body is not JSON: {e}")))?;
            let value = (step.f)(value).map_err(fail)?;
            let body = serde_json::to_vec(&value).map_err(|e| fail(e.to_string()))?;
            envelope.body = Bytes::from(body);
            envelope.event_type.clone_from(&step.to_name);
            envelope.event_version = step.to_version;
            envelope.routing_key = herald::event::routing_key_for(&step.to_name, step.to_version);
        }
        Ok(())
    }
}
