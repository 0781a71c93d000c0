//! The conformance kit: the behaviours every transport must show, as tests any crate can run.
//!
//! A transport crate's test file implements [`Harness`] (how to open a handle on its broker,
//! and optionally how to clean up what a case declared) and expands
//! [`conformance_tests!`](crate::conformance_tests), one `#[tokio::test]` per case:
//!
//! ```text
//! struct Nats;
//! #[async_trait::async_trait]
//! impl herald::conformance::Harness for Nats {
//!     async fn open(&self) -> Arc<dyn Transport> { /* connect */ }
//! }
//! herald::conformance_tests!(Nats);
//! ```
//!
//! Cases that need more than the core contract check the transport's
//! [`Capabilities`](crate::transport::Capabilities) first and, where it lacks one, pass after
//! writing `SKIPPED <case> on <transport>: ...` to stderr (not captured by the test runner, so
//! the skip shows in every run), as Watermill's `TestPubSub` does with its `Features`.
//!
//! Each case uses its own exchange and queue names ([`Names`]), so cases can share one real
//! broker; what a case declared is handed to [`Harness::clean_up`] when it ends, passed or not.

use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt as _;

use crate::envelope::Envelope;
use crate::middleware::RetryPolicy;
use crate::topology::{QueueSpec, Topology};
use crate::transport::{dead_letter_admin, Deliveries, Delivery, PublishOptions, Transport};
use crate::Bus;

mod bus_cases;
mod shape_cases;
mod transport_cases;

pub use bus_cases::*;
pub use shape_cases::*;
pub use transport_cases::*;

/// How a test reaches a transport.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Open a handle on this harness's broker. Opening again simulates a restarted process: the
    /// new handle must see the same durable state.
    async fn open(&self) -> Arc<dyn Transport>;

    /// How long until a consumer that vanished without settling gets its messages redelivered
    /// (lease expiry, connection loss detection).
    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// Remove what one case declared from a shared broker (queues, streams, topics), called
    /// once per topology when the case ends. The default leaves it in place.
    async fn clean_up(&self, topology: &Topology) {
        let _ = topology;
    }
}

/// Unique names for one test case.
pub struct Names {
    /// The exchange.
    pub exchange: String,
    prefix: String,
    id: String,
}

impl Names {
    /// Fresh names.
    pub fn new(case: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Names {
            exchange: format!("conf.{case}.{}", &id[..8]),
            prefix: format!("conf-{case}-{}", &id[..8]),
            id: id[..8].to_string(),
        }
    }

    /// A service name unique to this case: on a real broker queues are global, and a bus
    /// names its queues `<service>.<event>`.
    pub fn service(&self, name: &str) -> String {
        format!("{name}-{}", self.id)
    }
    /// A queue name in this case's namespace.
    pub fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

/// What the running case declared, for [`Harness::clean_up`].
enum Declared {
    Topology(Topology),
    Bus(Bus),
}

tokio::task_local! {
    static RECORDED: Arc<Mutex<Vec<Declared>>>;
}

fn record(declared: Declared) {
    let _ = RECORDED.try_with(|r| r.lock().unwrap_or_else(|e| e.into_inner()).push(declared));
}

/// Runs one case: records what it declares, then hands that to [`Harness::clean_up`] whether
/// the case passed or panicked (the panic is then resumed). The macro uses it; a transport's
/// own tests can too.
pub struct Recorder;

impl Recorder {
    /// Run `case` against `harness`.
    pub async fn run<H, F>(harness: &H, case: F)
    where
        H: Harness,
        F: std::future::Future<Output = ()>,
    {
        let recorded: Arc<Mutex<Vec<Declared>>> = Arc::default();
        let outcome = RECORDED
            .scope(recorded.clone(), AssertUnwindSafe(case).catch_unwind())
            .await;
        let declared = std::mem::take(&mut *recorded.lock().unwrap_or_else(|e| e.into_inner()));
        for d in declared {
            let topologies = match d {
                Declared::Topology(t) => vec![t],
                Declared::Bus(b) => b.topologies(),
            };
            for topology in &topologies {
                harness.clean_up(topology).await;
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Whether the transport has what a case needs. When it does not, writes `SKIPPED <case> on
/// <transport>: needs <what>` to stderr (past the test runner's capture) and returns false.
pub fn skip_unless(t: &dyn Transport, case: &str, has: bool, what: &str) -> bool {
    if !has {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {case} on {}: needs {what}",
            t.kind()
        );
    }
    has
}

/// A message on `key` whose JSON body is `{"n": n}`.
pub fn msg(key: &str, n: u32) -> Envelope {
    let body = serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap_or_default();
    Envelope::new(key, 1, key, "conformance", Bytes::from(body))
}

/// The `n` of a [`msg`] body (`u32::MAX` for any other body).
pub fn n_of(e: &Envelope) -> u32 {
    serde_json::from_slice::<serde_json::Value>(&e.body)
        .ok()
        .and_then(|v| v["n"].as_u64())
        .unwrap_or(u64::MAX) as u32
}

/// Declare these queues on the case's exchange (recorded for clean-up).
pub async fn declare(t: &dyn Transport, names: &Names, queues: Vec<QueueSpec>) {
    let mut topo = Topology::new(&names.exchange);
    for q in queues {
        topo.add_queue(q);
    }
    t.apply_topology(&topo).await.expect("apply topology");
    record(Declared::Topology(topo));
}

/// The next delivery within `within`, or `None`.
pub async fn recv(rx: &mut Deliveries, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Publish to the case's exchange, requiring a route.
pub async fn publish(t: &dyn Transport, names: &Names, batch: &[Envelope]) {
    t.publish(&names.exchange, batch, PublishOptions::default())
        .await
        .expect("publish");
}

/// How long a case waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A bus on a new handle of the harness's broker, for one of the case's services (recorded
/// for clean-up).
pub async fn bus(h: &dyn Harness, n: &Names, service: &str) -> Bus {
    let b = Bus::builder()
        .transport(h.open().await)
        .exchange(&n.exchange)
        .service(n.service(service))
        .build()
        .await
        .expect("build bus");
    record(Declared::Bus(b.clone()));
    b
}

/// Wait up to 20 s for `cond`, failing the case with `what` when it never holds.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The queue's dead letters once there are `want` of them (or whatever is there after
/// [`WAIT`]).
pub async fn dead_letters_of(
    t: &dyn Transport,
    queue: &str,
    want: usize,
) -> Vec<crate::transport::DeadLetter> {
    let admin = dead_letter_admin(t).expect("dead-letter administration");
    let deadline = Instant::now() + WAIT;
    loop {
        let dl = admin
            .dead_letters(queue, 100)
            .await
            .expect("read dead letters");
        if dl.len() >= want || Instant::now() > deadline {
            return dl;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A retry policy for tests: one immediate attempt, then 50 ms backoff without jitter.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        immediate: 1,
        jitter: 0.0,
        ..RetryPolicy::exponential(max_attempts, Duration::from_millis(50))
    }
}

pub use self::events::{Ping, Pong};

/// The events the bus cases publish.
mod events {
    use serde::{Deserialize, Serialize};

    /// A test event (`conformance.ping`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Ping {
        /// Which one.
        pub n: u32,
    }

    impl crate::Event for Ping {
        const NAME: &'static str = "conformance.ping";
        const VERSION: u32 = 1;
        const ROUTING_KEY: &'static str = "conformance.ping";
        fn descriptor() -> crate::EventDescriptor {
            crate::EventDescriptor {
                name: Self::NAME,
                version: 1,
                routing_key: Self::ROUTING_KEY,
                type_name: "Ping",
                publisher: None,
                consumers: &[],
                description: "",
            }
        }
    }

    /// The follow-up a ping handler publishes (`conformance.pong`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Pong {
        /// The ping's `n`.
        pub n: u32,
    }

    impl crate::Event for Pong {
        const NAME: &'static str = "conformance.pong";
        const VERSION: u32 = 1;
        const ROUTING_KEY: &'static str = "conformance.pong";
        fn descriptor() -> crate::EventDescriptor {
            crate::EventDescriptor {
                name: Self::NAME,
                version: 1,
                routing_key: Self::ROUTING_KEY,
                type_name: "Pong",
                publisher: None,
                consumers: &[],
                description: "",
            }
        }
    }
}

/// Expand one `#[tokio::test]` per conformance case for a harness expression (evaluated anew
/// for each case). Cases the transport's capabilities rule out pass after printing `SKIPPED`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            capabilities_are_honest, routing_and_fanout, unroutable_is_an_error,
            envelope_round_trip, competing_consumers, fifo_order_for_one_consumer, ack_is_final,
            durable_across_reopen, unsettled_messages_come_back, delayed_retry,
            release_does_not_count, dead_letters_list_replay_purge,
            replay_reaches_only_its_queue, queue_stats_count_what_waits, priority_order,
            expired_messages_are_dead_lettered, full_queue_rejects_publish,
            cancel_stops_and_keeps_messages,
            bus_fan_out_and_compete, bus_retries_then_dead_letters,
            bus_poison_message_is_dead_lettered_without_retries, bus_panic_is_a_failed_attempt,
            bus_timeout_is_a_failed_attempt, bus_follow_ups_carry_correlation_and_causation,
            bus_unroutable_publish_is_an_error, bus_graceful_shutdown_loses_nothing,
            bus_consumes_foreign_json_by_pattern, bus_raw_subscription_takes_any_body,
            bus_refuses_what_the_transport_lacks, bus_request_reply,
            bus_named_queues_on_two_exchanges, bus_linear_retry_schedule, bus_order_per_key);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::Recorder::run(&harness, $crate::conformance::$case(&harness)).await;
            }
        )*
    };
}
