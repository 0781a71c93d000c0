//! Metrics through the [`metrics`] facade: counters of what was published and what became of
//! each delivery, handler durations, in-flight work, broker connection state and sampled queue
//! depths. Herald records them; the application chooses the exporter by installing a recorder
//! (`herald_http::metrics::install_prometheus` for Prometheus text format) **before** it builds
//! the bus, since handles are registered once (per subscription when its consumer starts, per
//! event type on the publisher) and bound to the recorder current at that moment. With no
//! recorder installed the handles are no-ops.
//!
//! The names are in [`names`]; `docs/metrics.md` describes each one. [`counters`] are the
//! bus's own plain counters (what [`Bus::metrics`](crate::Bus::metrics) returns), kept whether
//! or not a recorder is installed.

pub mod counters;
pub mod names;

pub(crate) mod handles;
pub(crate) mod observe;
mod sampler;

pub use names::{MetricInfo, MetricKind, ALL};
pub use sampler::spawn_queue_depth_sampler;

/// Register the help text of every metric with the installed recorder (exporters show it as
/// `# HELP`). Call once after installing a recorder; harmless to call again.
pub fn describe() {
    for m in ALL {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
        }
    }
}

/// Record a broker connection going up or down (`transport` e.g. `rabbitmq`, `role` e.g.
/// `publisher`). Not on a hot path: called by connection supervisors on state changes.
pub fn connection_state(transport: &'static str, role: &'static str, up: bool) {
    metrics::gauge!(names::CONNECTION_UP, names::LABEL_TRANSPORT => transport, names::LABEL_ROLE => role)
        .set(if up { 1.0 } else { 0.0 });
}

/// Record a broker connection re-established after a loss.
pub fn reconnected(transport: &'static str, role: &'static str) {
    metrics::counter!(names::RECONNECTS, names::LABEL_TRANSPORT => transport, names::LABEL_ROLE => role)
        .increment(1);
}
