//! `sqlite://path`: the embedded durable broker, Herald's default.
//!
//! Everything lives in one SQLite file in WAL mode, so several processes on one host share a
//! broker without a server: queues, bindings, messages, leases and dead letters are rows (the
//! schema is described in the `schema` module source). Routing is evaluated at publish time
//! against the bindings in the file, so a publisher in one process reaches queues declared by
//! another.
//!
//! # How it works
//!
//! - **One connection thread per handle.** rusqlite is blocking, so every statement runs on a
//!   dedicated thread; async callers send it commands and await the answer.
//! - **Group commit.** The thread runs every command queued while the previous transaction ran in
//!   one `BEGIN IMMEDIATE` transaction (each under a savepoint, so one bad publish does not fail
//!   the others), and answers only after `COMMIT`: [`publish`](crate::Transport::publish) returns
//!   once the messages are committed.
//! - **Leases.** A consumer claims up to its free prefetch in one `UPDATE ... RETURNING`, leasing
//!   the rows for [`SqliteOptions::lease`]. A live consumer renews the leases of everything it
//!   holds every `lease / 3`; a crashed one stops, and its messages come back when the lease ends.
//!   Dropping a handle (or a consumer) gives back its unsettled messages at once.
//! - **Waking consumers.** Publishes through any handle on the same file in this process wake
//!   consumers at once; publishes from other processes are seen by polling that starts at
//!   [`SqliteOptions::poll_min`] and backs off to [`SqliteOptions::poll_max`] while idle.
//! - **Acks** are queued, not awaited, and committed with the next group (within about a
//!   millisecond; [`close`](crate::Transport::close) flushes them). A crash before that commit
//!   means a redelivery, never a loss.
//!
//! # Durability
//!
//! The default, [`Durability::ProcessCrash`], runs WAL with `synchronous = NORMAL`: a committed
//! publish survives the crash or `kill -9` of any process, but the last transactions before an OS
//! crash or power loss may be lost. [`Durability::PowerLoss`] uses `synchronous = FULL` (an fsync
//! per commit, group commit amortizes it) and survives power loss too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::topology::{QueueSpec, Topology};
use crate::transport::{
    Capabilities, ConsumeOptions, DeadLetter, DeadLetterAdmin, Deliveries, PublishOptions,
    QueueStatistics, QueueStats, Transport,
};

mod consumer;
mod schema;
mod settle;
mod store;
mod writer;

use self::settle::SqliteSettler;
use self::writer::{Cmd, NewMessage, Reply};

/// How much a committed publish survives. See the [module docs](self#durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous = NORMAL`: survives any process crash (`kill -9`); an OS crash or
    /// power loss may lose the last commits. The default: no fsync per commit.
    #[default]
    ProcessCrash,
    /// WAL with `synchronous = FULL`: also survives power loss, at the cost of an fsync per
    /// (group) commit.
    PowerLoss,
}

/// Settings for [`SqliteTransport::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a claimed message stays with its consumer without a renewal. A live consumer
    /// renews every `lease / 3`, so this is how long a crashed consumer's messages wait before
    /// redelivery. Default 30 s.
    pub lease: Duration,
    /// How long to wait for another process's write lock before failing. Default 5 s.
    pub busy_timeout: Duration,
    /// What a committed publish survives. Default [`Durability::ProcessCrash`].
    pub durability: Durability,
    /// The first poll interval of an idle consumer. Default 1 ms.
    pub poll_min: Duration,
    /// The longest poll interval of an idle consumer: the worst-case delay before a consumer sees
    /// a message published by another process, or a delayed message coming due. Default 50 ms.
    pub poll_max: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            lease: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
            durability: Durability::ProcessCrash,
            poll_min: Duration::from_millis(1),
            poll_max: Duration::from_millis(50),
        }
    }
}

/// The embedded durable transport: a broker in one SQLite file, shared by every process that
/// opens it. See the [module docs](self) for how it works and what it guarantees.
///
/// Clones share one connection; [`open`](Self::open) again for an independent one (as another
/// process would have).
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use herald::transport::sqlite::SqliteTransport;
/// use herald::transport::{ConsumeOptions, PublishOptions};
/// use herald::{Envelope, QueueSpec, Topology, Transport};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> herald::Result<()> {
/// let dir = tempfile::tempdir().expect("temp dir");
/// let broker = SqliteTransport::open(&dir.path().join("herald.db")).await?;
///
/// let queue = QueueSpec::new("billing.order-placed", "order.*");
/// let mut topology = Topology::new("events");
/// topology.add_queue(queue.clone());
/// broker.apply_topology(&topology).await?;
///
/// let event = Envelope::new("order.placed", 1, "order.placed", "shop", Bytes::from_static(b"{\"id\":7}"));
/// broker.publish("events", &[event], PublishOptions::default()).await?; // committed on return
///
/// let cancel = CancellationToken::new();
/// let mut deliveries = broker.consume(&queue, ConsumeOptions::default(), cancel.clone()).await?;
/// let delivery = deliveries.recv().await.expect("a delivery");
/// assert_eq!(&delivery.envelope.body[..], b"{\"id\":7}");
/// delivery.ack().await?;
/// cancel.cancel();
/// broker.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteTransport {
    inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

/// State shared by a handle, its consumers and its deliveries.
pub(crate) struct Inner {
    cmd: Sender<Cmd>,
    pub(crate) options: SqliteOptions,
    pub(crate) notify: Arc<Notify>,
    /// Fires on close or when the last handle is dropped: consumers and renewers stop.
    pub(crate) shutdown: CancellationToken,
    closed: AtomicBool,
    instance: String,
    next_consumer: AtomicU64,
    /// Live consumers of this handle: (owner, queue, auto_delete).
    owners: Mutex<Vec<(Arc<str>, String, bool)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One notifier per database file in this process, so a publish through any handle wakes the
/// consumers of every handle.
fn notifier(path: &Path) -> Arc<Notify> {
    static NOTIFIERS: OnceLock<Mutex<HashMap<PathBuf, Arc<Notify>>>> = OnceLock::new();
    lock(NOTIFIERS.get_or_init(Default::default))
        .entry(path.to_path_buf())
        .or_default()
        .clone()
}

fn stopped() -> Error {
    Error::transport(
        "sqlite",
        "the connection thread has stopped; open the transport again",
    )
}

impl Inner {
    pub(crate) fn send(&self, cmd: Cmd) -> Result<()> {
        self.cmd.send(cmd).map_err(|_| stopped())
    }

    pub(crate) async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    pub(crate) fn forget_owner(&self, owner: &str) {
        lock(&self.owners).retain(|(o, _, _)| &**o != owner);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Dropped with the last clone of a handle: stop its consumers and give back what they hold,
/// as a broker does when a connection goes away.
struct Guard {
    inner: Arc<Inner>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        for (owner, queue, auto_delete) in lock(&self.inner.owners).drain(..) {
            let _ = self.inner.send(Cmd::ConsumerGone {
                owner,
                queue,
                auto_delete,
            });
        }
    }
}

impl SqliteTransport {
    /// Open (creating it and its parent directories if needed) the broker file at `path` with
    /// default [`SqliteOptions`].
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Open the broker file at `path` with explicit options.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<Self> {
        let (cmd, rx) = std::sync::mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(PathBuf, Arc<Notify>)>>();
        let thread_path = path.to_path_buf();
        let thread_options = options.clone();
        std::thread::Builder::new()
            .name("herald-sqlite".into())
            .spawn(move || {
                let conn = match schema::open(&thread_path, &thread_options) {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let canonical =
                    std::fs::canonicalize(&thread_path).unwrap_or_else(|_| thread_path.clone());
                let notify = notifier(&canonical);
                let store = store::Store::new(conn, canonical.clone(), thread_options.lease);
                let _ = ready_tx.send(Ok((canonical, notify.clone())));
                writer::run(store, rx, notify);
            })
            .map_err(|e| {
                Error::transport("sqlite", format!("cannot start the connection thread: {e}"))
            })?;
        let (canonical, notify) = ready_rx.await.map_err(|_| stopped())??;
        tracing::debug!(path = %canonical.display(), "sqlite transport open");
        let inner = Arc::new(Inner {
            cmd,
            options,
            notify,
            shutdown: CancellationToken::new(),
            closed: AtomicBool::new(false),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            next_consumer: AtomicU64::new(0),
            owners: Mutex::new(Vec::new()),
        });
        Ok(SqliteTransport {
            _guard: Arc::new(Guard {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    /// The options this handle was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.options
    }
}

fn encode(envelope: &Envelope) -> Result<NewMessage> {
    let headers = serde_json::to_string(&envelope.header_map())
        .map_err(|e| Error::transport("sqlite", format!("cannot encode headers as JSON: {e}")))?;
    Ok(NewMessage {
        routing_key: envelope.routing_key.clone(),
        headers,
        body: envelope.body.clone(),
        priority: envelope.priority,
        ttl_ms: store::ttl_ms(envelope),
    })
}

#[async_trait]
impl Transport for SqliteTransport {
    fn capabilities(&self) -> Capabilities {
        Capabilities::EMBEDDED
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        Some(self)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        Some(self)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn apply_topology(&self, topology: &Topology) -> Result<()> {
        self.inner.check_open()?;
        let topology = topology.clone();
        self.inner
            .request(|reply| Cmd::Topology(topology, reply))
            .await
    }

    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()> {
        self.inner.check_open()?;
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.iter().map(encode).collect::<Result<Vec<_>>>()?;
        self.inner
            .request(|reply| Cmd::Publish {
                exchange: exchange.to_string(),
                batch,
                require_route: options.require_route,
                reply,
            })
            .await
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        self.inner.check_open()?;
        let n = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        let owner: Arc<str> = Arc::from(format!("{}:{n}", self.inner.instance));
        self.inner
            .request(|reply| Cmd::Register {
                owner: owner.clone(),
                queue: queue.name.clone(),
                reply,
            })
            .await?;
        lock(&self.inner.owners).push((owner.clone(), queue.name.clone(), queue.auto_delete));
        let prefetch = options.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let settler = Arc::new(SqliteSettler::new(
            self.inner.clone(),
            queue.name.clone(),
            owner,
            queue.auto_delete,
        ));
        let every = (self.inner.options.lease / 3).max(Duration::from_millis(20));
        tokio::spawn(consumer::renew(
            Arc::downgrade(&settler),
            self.inner.shutdown.clone(),
            every,
        ));
        tokio::spawn(consumer::run(settler, tx, prefetch, cancel));
        Ok(rx.into())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        self.inner.request(Cmd::Flush).await
    }
}

#[async_trait]
impl DeadLetterAdmin for SqliteTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = queue.to_string();
        self.inner
            .request(|reply| Cmd::DeadLetters {
                queue,
                limit,
                reply,
            })
            .await
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        let (queue, ids) = (queue.to_string(), ids.map(<[String]>::to_vec));
        self.inner
            .request(|reply| Cmd::Replay { queue, ids, reply })
            .await
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        let (queue, ids) = (queue.to_string(), ids.map(<[String]>::to_vec));
        self.inner
            .request(|reply| Cmd::Purge { queue, ids, reply })
            .await
    }
}

#[async_trait]
impl QueueStatistics for SqliteTransport {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.inner.request(Cmd::Stats).await
    }

    async fn bindings(&self, exchange: &str) -> Result<Option<Vec<(String, String)>>> {
        let exchange = exchange.to_string();
        let bindings = self
            .inner
            .request(|reply| Cmd::Bindings { exchange, reply })
            .await?;
        Ok(Some(bindings))
    }
}
