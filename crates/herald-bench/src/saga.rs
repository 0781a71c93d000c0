//! Workload `saga`: saga transitions per second on PostgreSQL + RabbitMQ, and a projection's
//! catch-up rate.
//!
//! Transitions: `events` start messages are published to RabbitMQ through the bus; a saga runner
//! (concurrency 64) turns each into a transition: the message id recorded, a new instance saved,
//! one command staged in the outbox, in one PostgreSQL transaction. The figure is committed
//! transitions per second from the first publish to the last commit. Catch-up: `events` events
//! appended in batches, then a projection (an upsert per event, checkpoint in the same
//! transaction) applies them from the first; events per second of that catch-up.
//!
//! `notify` switches the outbox's `NOTIFY` trigger: on (the default; one transaction at a time
//! notifies, so concurrent transitions still share WAL flushes) or off (relays poll).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::{Bus, Event, SubscribeOptions};
use herald_es::postgres::{connect_client, PgEventStore, PgProjection, PgProjector};
use herald_es::projection::ProjectionRunner;
use herald_es::saga::{Effects, Handled, Saga, SagaRunner};
use herald_es::{event_set, BoxError, EventStore, ExpectedVersion, RecordedEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Starts a bench saga instance.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.saga.started")]
pub struct Started {
    /// The saga instance this message starts.
    pub id: u64,
    /// Padding, so the message is about the size of a real one.
    pub note: String,
}

/// The command each transition sends.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.saga.step")]
pub struct Step {
    /// The saga instance that sent it.
    pub id: u64,
}

event_set! {
    /// The events the bench saga reacts to.
    #[derive(Debug, Clone)]
    pub enum BenchEvent {
        /// A start message.
        Started(Started)
    }
}

/// The bench saga: one transition per instance, sending one command.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BenchSaga {
    id: u64,
}

impl Saga for BenchSaga {
    const NAME: &'static str = "bench-saga";
    type Event = BenchEvent;
    type Timeout = ();
    fn correlate(e: &BenchEvent) -> Option<String> {
        let BenchEvent::Started(s) = e;
        Some(s.id.to_string())
    }
    fn starts(_: &BenchEvent) -> bool {
        true
    }
    fn handle(&mut self, e: &BenchEvent, fx: &mut Effects<()>) {
        let BenchEvent::Started(s) = e;
        self.id = s.id;
        fx.send(&Step { id: s.id });
    }
    fn on_timeout(&mut self, _: (), _: &mut Effects<()>) {}
    fn state_name(&self) -> String {
        "started".into()
    }
}

/// What the saga workload measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct SagaFigures {
    /// Transitions committed.
    pub transitions: u64,
    /// Transitions per second.
    pub transitions_per_sec: f64,
    /// Events a projection caught up on.
    pub catch_up_events: u64,
    /// Events per second of the catch-up.
    pub catch_up_eps: f64,
}

impl SagaFigures {
    /// The `RESULT` line.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT workload=saga database=postgres transport=rabbitmq transitions={} transitions_per_sec={:.0} catch_up_events={} catch_up_eps={:.0}",
            self.transitions, self.transitions_per_sec, self.catch_up_events, self.catch_up_eps
        )
    }
}

/// Counts rows per stream: the smallest useful read model.
struct PerStream {
    table: String,
}

#[async_trait]
impl PgProjection for PerStream {
    fn name(&self) -> &str {
        "bench_per_stream"
    }
    async fn setup(&self, c: &tokio_postgres::Client) -> Result<(), BoxError> {
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL)",
            self.table
        ))
        .await?;
        Ok(())
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), BoxError> {
        tx.execute(
            &format!("INSERT INTO {} AS t VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET events = t.events + 1", self.table),
            &[&e.stream_id],
        )
        .await?;
        Ok(())
    }
    async fn reset(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), BoxError> {
        tx.execute(&format!("DELETE FROM {}", self.table), &[])
            .await?;
        Ok(())
    }
}

/// Run the workload on PostgreSQL (`conninfo`) and the RabbitMQ broker `amqp`, in a fresh
/// schema and exchange removed afterwards.
pub async fn run(
    conninfo: &str,
    amqp: &str,
    events: u64,
    notify: bool,
) -> Result<SagaFigures, BoxError> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("bench_saga_{}", &tag[..10]);
    let exchange = format!("bench.saga.{}", &tag[..8]);
    let store = Arc::new(
        PgEventStore::builder(conninfo)
            .schema(&schema)
            .service("bench-saga")
            .pool_size(32)
            .outbox_notify(notify)
            .connect()
            .await?,
    );
    let result = measure(&store, amqp, &exchange, events).await;
    let c = connect_client(conninfo).await?;
    let _ = c
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
    result
}

async fn measure(
    store: &Arc<PgEventStore>,
    amqp: &str,
    exchange: &str,
    events: u64,
) -> Result<SagaFigures, BoxError> {
    let saga_bus = Bus::builder()
        .service("bench-saga")
        .broker(amqp)
        .exchange(exchange)
        .build()
        .await?;
    let runner = Arc::new(SagaRunner::<BenchSaga>::new(store.clone()));
    let done = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    {
        let (runner, done, all) = (runner.clone(), done.clone(), all.clone());
        saga_bus.subscribe_raw(
            "bench-saga.started",
            Started::ROUTING_KEY,
            move |ctx: herald::Context| {
                let (runner, done, all) = (runner.clone(), done.clone(), all.clone());
                async move {
                    if runner.handle(ctx.envelope()).await? == Handled::Transitioned
                        && done.fetch_add(1, Ordering::SeqCst) + 1 == events
                    {
                        all.notify_one();
                    }
                    Ok::<(), herald_es::Error>(())
                }
            },
            SubscribeOptions::new().concurrency(64).prefetch(256),
        )?;
    }
    saga_bus.start().await?;
    let publisher = Bus::builder()
        .service("bench-client")
        .broker(amqp)
        .exchange(exchange)
        .build()
        .await?;
    let finished = all.notified();
    let started = Instant::now();
    let note = "x".repeat(120);
    let mut id = 0;
    while id < events {
        let chunk: Vec<Started> = (id..(id + 1000).min(events))
            .map(|id| Started {
                id,
                note: note.clone(),
            })
            .collect();
        id += chunk.len() as u64;
        publisher.publish_batch(&chunk).await?;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(600), finished).await;
    let elapsed = started.elapsed();
    let transitions = done.load(Ordering::SeqCst);
    let topology = saga_bus.topology();
    saga_bus.shutdown().await?;
    publisher.shutdown().await?;
    for q in &topology.queues {
        crate::rabbit_w1::cleanup(exchange, q).await;
    }
    outcome.map_err(|_| format!("only {transitions} of {events} transitions within 10 minutes"))?;

    // Catch-up: append in batches of 500 over 100 streams, then project from the first event.
    let mut versions = vec![0u64; 100];
    let mut seq = 0;
    while seq < events {
        let s = (seq / 500 % 100) as usize;
        let n = (events - seq).min(500);
        let batch = (seq..seq + n)
            .map(|i| herald::Envelope::for_event(&Step { id: i }, "bench-saga"))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = format!("catchup-{s}");
        versions[s] = store
            .append(&stream, ExpectedVersion::Exact(versions[s]), batch)
            .await?
            .version;
        seq += n;
    }
    let projector = Arc::new(PgProjector::new(
        store,
        PerStream {
            table: format!("{}.bench_per_stream", store.schema()),
        },
    ));
    let catch_up = ProjectionRunner::new(store.clone(), projector).batch_size(1000);
    // Wait until the appends are readable (transactions elsewhere on the server hold readers).
    while store.backlog(herald_es::Checkpoint::START).await?.events < events {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let mut applied = 0;
    while applied < events {
        applied += catch_up.catch_up().await?;
    }
    let catch_up_elapsed = t.elapsed();
    Ok(SagaFigures {
        transitions,
        transitions_per_sec: transitions as f64 / elapsed.as_secs_f64(),
        catch_up_events: applied,
        catch_up_eps: applied as f64 / catch_up_elapsed.as_secs_f64(),
    })
}
