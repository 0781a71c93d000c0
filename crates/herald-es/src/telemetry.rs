//! The crate's metrics, through the `metrics` facade (documented in `docs/metrics.md`). With no
//! recorder installed they cost next to nothing.
//!
//! ```
//! assert!(herald_es::telemetry::ALL.iter().any(|(name, ..)| *name == herald_es::telemetry::PROJECTION_LAG_EVENTS));
//! ```

/// Counter: events appended to the store.
pub const APPENDED: &str = "herald_es_appended_total";
/// Counter: appends refused for a version conflict (each is retried by `Repository`).
pub const APPEND_CONFLICTS: &str = "herald_es_append_conflicts_total";
/// Counter, label `projection`: events a projection applied (committed with its checkpoint).
pub const PROJECTION_APPLIED: &str = "herald_es_projection_applied_total";
/// Gauge, label `projection`: events recorded after the projection's checkpoint.
pub const PROJECTION_LAG_EVENTS: &str = "herald_es_projection_lag_events";
/// Gauge, label `projection`: seconds since the oldest event the projection has not applied was
/// recorded (0 when caught up).
pub const PROJECTION_LAG_SECONDS: &str = "herald_es_projection_lag_seconds";
/// Counter, labels `saga`, `outcome` (`committed`, `duplicate`, `conflict`): saga transitions.
pub const SAGA_TRANSITIONS: &str = "herald_es_saga_transitions_total";
/// Counter, label `saga`: timeouts that fired (each exactly once).
pub const SAGA_TIMEOUTS_FIRED: &str = "herald_es_saga_timeouts_fired_total";

/// Every metric: name, kind, labels, help.
pub const ALL: &[(&str, &str, &str, &str)] = &[
    (
        APPENDED,
        "counter",
        "",
        "events appended to the event store",
    ),
    (
        APPEND_CONFLICTS,
        "counter",
        "",
        "appends refused because the stream moved (optimistic concurrency); commands retry",
    ),
    (
        PROJECTION_APPLIED,
        "counter",
        "projection",
        "events a projection applied, committed with its checkpoint",
    ),
    (
        PROJECTION_LAG_EVENTS,
        "gauge",
        "projection",
        "events recorded after the projection's checkpoint",
    ),
    (
        PROJECTION_LAG_SECONDS,
        "gauge",
        "projection",
        "seconds since the oldest event the projection has not applied was recorded",
    ),
    (
        SAGA_TRANSITIONS,
        "counter",
        "saga, outcome",
        "saga transitions: committed, duplicate (message already handled), conflict (retried)",
    ),
    (
        SAGA_TIMEOUTS_FIRED,
        "counter",
        "saga",
        "saga timeouts fired (each exactly once)",
    ),
];

/// Register the help texts with the installed recorder.
pub fn describe() {
    for (name, kind, _, help) in ALL {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            _ => metrics::describe_gauge!(*name, *help),
        }
    }
}

pub(crate) fn appended(n: usize) {
    metrics::counter!(APPENDED).increment(n as u64);
}

pub(crate) fn append_conflict() {
    metrics::counter!(APPEND_CONFLICTS).increment(1);
}
