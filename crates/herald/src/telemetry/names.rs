//! The name of every metric Herald records, all prefixed `herald_`. `docs/metrics.md` has the same
//! table for humans; [`ALL`] is the list the dashboard test checks panel queries against.

/// Label: the event's CloudEvents type, e.g. `user.registered`.
pub const LABEL_EVENT_TYPE: &str = "event_type";
/// Label: the work queue a delivery came from.
pub const LABEL_QUEUE: &str = "queue";
/// Label: the publishing service (the bus's `service`).
pub const LABEL_SERVICE: &str = "service";
/// Label: the failure kind of a handler error (`handler`, `timeout`, `panic`, `decode`, ...).
pub const LABEL_KIND: &str = "kind";
/// Label: the transport kind (`rabbitmq`, `sqlite`, `memory`).
pub const LABEL_TRANSPORT: &str = "transport";
/// Label: which supervised connection (`publisher` or `consumer`).
pub const LABEL_ROLE: &str = "role";
/// Label: which count of a queue (`ready`, `in_flight`, `delayed`, `dead_letters`).
pub const LABEL_STATE: &str = "state";

/// Counter `{service, event_type}`: events handed to the transport (attempted publishes).
pub const PUBLISHED: &str = "herald_published_total";
/// Counter `{service, event_type}`: events the transport durably accepted (stored or confirmed).
pub const CONFIRMED: &str = "herald_confirmed_total";
/// Counter `{service, event_type}`: events refused because no queue is bound for them.
pub const RETURNED: &str = "herald_returned_total";
/// Counter `{queue, event_type}`: deliveries a consumer took from its queue.
pub const CONSUMED: &str = "herald_consumed_total";
/// Counter `{queue, event_type}`: deliveries handled successfully and acknowledged.
pub const ACKED: &str = "herald_acked_total";
/// Counter `{queue, event_type}`: deliveries that failed and were scheduled for redelivery.
pub const RETRIED: &str = "herald_retried_total";
/// Counter `{queue, event_type}`: deliveries moved to the dead letters.
pub const DEAD_LETTERED: &str = "herald_dead_lettered_total";
/// Counter `{queue, event_type, kind}`: deliveries whose handler pipeline ended in an error.
pub const FAILED: &str = "herald_failed_total";
/// Counter `{queue, event_type}`: deliveries given back untouched (open circuit, shutdown).
pub const RELEASED: &str = "herald_released_total";
/// Counter `{queue}`: settlements the transport refused (the message is redelivered later).
pub const SETTLE_ERRORS: &str = "herald_settle_errors_total";
/// Histogram `{queue, event_type}`: seconds from taking a delivery to the pipeline's answer.
pub const HANDLER_DURATION: &str = "herald_handler_duration_seconds";
/// Gauge `{queue}`: deliveries being handled right now.
pub const IN_FLIGHT: &str = "herald_in_flight";
/// Gauge `{transport, role}`: 1 while the broker connection is up, 0 while it is down.
pub const CONNECTION_UP: &str = "herald_connection_up";
/// Counter `{transport, role}`: connections re-established after a loss.
pub const RECONNECTS: &str = "herald_reconnects_total";
/// Gauge `{queue, state}`: messages in a queue by state, from the queue-depth sampler.
pub const QUEUE_DEPTH: &str = "herald_queue_depth";
/// Gauge: outbox rows not yet published (pending, processing and failed).
pub const OUTBOX_PENDING: &str = "herald_outbox_pending";
/// Gauge: seconds since the oldest unpublished outbox row was staged (0 when none).
pub const OUTBOX_OLDEST_AGE: &str = "herald_outbox_oldest_age_seconds";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Distribution in buckets (`_bucket`, `_sum`, `_count` series in Prometheus).
    Histogram,
}

/// One metric: name, kind, labels and meaning.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    /// The metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

const PUB: &[&str] = &[LABEL_SERVICE, LABEL_EVENT_TYPE];
const CONS: &[&str] = &[LABEL_QUEUE, LABEL_EVENT_TYPE];

macro_rules! info {
    ($name:expr, $kind:ident, $labels:expr, $help:expr) => {
        MetricInfo {
            name: $name,
            kind: MetricKind::$kind,
            labels: $labels,
            help: $help,
        }
    };
}

/// Every metric Herald records (the bus, the RabbitMQ supervisor, the sampler and the outbox).
pub const ALL: &[MetricInfo] = &[
    info!(
        PUBLISHED,
        Counter, PUB, "Events handed to the transport (attempted publishes)."
    ),
    info!(
        CONFIRMED,
        Counter, PUB, "Events the transport durably accepted (stored or broker-confirmed)."
    ),
    info!(
        RETURNED,
        Counter, PUB, "Events refused as unroutable: no queue is bound for them."
    ),
    info!(
        CONSUMED,
        Counter, CONS, "Deliveries a consumer took from its queue."
    ),
    info!(
        ACKED,
        Counter, CONS, "Deliveries handled successfully and acknowledged."
    ),
    info!(
        RETRIED,
        Counter, CONS, "Deliveries that failed and were scheduled for redelivery."
    ),
    info!(
        DEAD_LETTERED,
        Counter, CONS, "Deliveries moved to the dead letters."
    ),
    info!(
        FAILED,
        Counter,
        &[LABEL_QUEUE, LABEL_EVENT_TYPE, LABEL_KIND],
        "Deliveries whose handler pipeline ended in an error, by failure kind."
    ),
    info!(
        RELEASED,
        Counter, CONS, "Deliveries given back untouched (open circuit breaker, shutdown)."
    ),
    info!(
        SETTLE_ERRORS,
        Counter,
        &[LABEL_QUEUE],
        "Settlements the transport refused; the message is redelivered later."
    ),
    info!(
        HANDLER_DURATION,
        Histogram, CONS, "Seconds from taking a delivery to the handler pipeline's answer."
    ),
    info!(
        IN_FLIGHT,
        Gauge,
        &[LABEL_QUEUE],
        "Deliveries being handled right now."
    ),
    info!(
        CONNECTION_UP,
        Gauge,
        &[LABEL_TRANSPORT, LABEL_ROLE],
        "1 while the broker connection is up, 0 while it is down."
    ),
    info!(
        RECONNECTS,
        Counter,
        &[LABEL_TRANSPORT, LABEL_ROLE],
        "Broker connections re-established after a loss."
    ),
    info!(
        QUEUE_DEPTH,
        Gauge,
        &[LABEL_QUEUE, LABEL_STATE],
        "Messages in a queue by state (ready, in_flight, delayed, dead_letters), sampled."
    ),
    info!(
        OUTBOX_PENDING,
        Gauge,
        &[],
        "Outbox rows not yet published (pending, processing, failed)."
    ),
    info!(
        OUTBOX_OLDEST_AGE,
        Gauge,
        &[],
        "Seconds since the oldest unpublished outbox row was staged; 0 when none."
    ),
];
