//! The connection thread: every statement of one [`SqliteTransport`](super::SqliteTransport)
//! runs here, so the async runtime never blocks on SQLite.
//!
//! Group commit: the thread takes the first queued command, then every command queued behind it
//! (up to [`MAX_GROUP`] commands or about [`MAX_WEIGHT`] rows), and runs all the writes in ONE
//! `BEGIN IMMEDIATE` transaction, each under its own savepoint so one failing publish
//! (unroutable, queue full) does not affect the others. Callers are answered only after
//! `COMMIT`. Concurrent publishes, claims and settlements therefore share one commit. Acks are
//! not awaited: they pile up while a transaction runs, a group of nothing but acks waits up to
//! [`ACK_LINGER`] for more (or for a claim to ride along), and each group deletes its acks with
//! one statement per consumer.
//!
//! Fairness between processes: SQLite's write lock is not queued, so after a busy group the
//! thread pauses [`LOCK_GAP`] before taking the lock again, while a waiting process polls for it
//! every 50 µs (see the busy handler in `schema`).

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::store::Store;
use crate::error::{Error, Result};
use crate::topology::Topology;
use crate::transport::{DeadLetter, QueueStats};

/// The most commands one transaction takes.
pub(crate) const MAX_GROUP: usize = 1024;
/// The most rows (roughly) one transaction writes, see [`Cmd::weight`].
const MAX_WEIGHT: usize = 2048;
/// How long a group of only acks waits for company, see [`linger_for_acks`].
const ACK_LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// How many acks end that wait early.
const ACK_BATCH: usize = 256;

/// A group at least this big means the thread is busy (see [`LOCK_GAP`]).
const BUSY_GROUP: usize = 16;
/// The pause between busy groups that lets other processes take the write lock.
const LOCK_GAP: std::time::Duration = std::time::Duration::from_micros(100);

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A message ready to insert, encoded by the publishing task.
pub(crate) struct NewMessage {
    pub routing_key: String,
    pub headers: String,
    pub body: Bytes,
    pub priority: u8,
    pub ttl_ms: Option<i64>,
}

/// A row handed to a consumer.
pub(crate) struct Claimed {
    pub id: i64,
    pub routing_key: String,
    pub headers: String,
    pub body: Vec<u8>,
    pub priority: i64,
    pub ttl_ms: Option<i64>,
    pub deliveries: i64,
}

/// What to do with a leased row.
pub(crate) enum SettleOp {
    /// Delete it.
    Ack,
    /// Give the lease up and make it visible again after `delay_ms`, with new headers.
    Reschedule { headers: String, delay_ms: i64 },
    /// Move it to the dead letters as this (already annotated) message.
    DeadLetter {
        msg_id: String,
        routing_key: String,
        headers: String,
        body: Bytes,
    },
}

/// One request to the connection thread.
pub(crate) enum Cmd {
    Topology(Topology, Reply<()>),
    Publish {
        exchange: String,
        batch: Vec<NewMessage>,
        require_route: bool,
        reply: Reply<()>,
    },
    Claim {
        queue: String,
        owner: Arc<str>,
        max: usize,
        reply: Reply<Vec<Claimed>>,
    },
    Settle {
        id: i64,
        owner: Arc<str>,
        op: SettleOp,
        reply: Option<Reply<()>>,
    },
    /// Extend the leases of everything `owner` holds and its consumer heartbeat.
    Renew {
        owner: Arc<str>,
        queue: String,
    },
    Register {
        owner: Arc<str>,
        queue: String,
        reply: Reply<()>,
    },
    /// A consumer is gone: release what it still holds, remove it, drop an auto-delete queue.
    ConsumerGone {
        owner: Arc<str>,
        queue: String,
        auto_delete: bool,
    },
    DeadLetters {
        queue: String,
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    Replay {
        queue: String,
        ids: Option<Vec<String>>,
        reply: Reply<u64>,
    },
    Purge {
        queue: String,
        ids: Option<Vec<String>>,
        reply: Reply<u64>,
    },
    Stats(Reply<Vec<QueueStats>>),
    /// The `(pattern, queue)` bindings on an exchange.
    Bindings {
        exchange: String,
        reply: Reply<Vec<(String, String)>>,
    },
    /// Answered once everything queued before it is committed.
    Flush(Reply<()>),
}

impl Cmd {
    /// Roughly how many rows the command writes: groups are cut at [`MAX_WEIGHT`] so one
    /// transaction never holds the write lock long enough to starve another process.
    fn weight(&self) -> usize {
        match self {
            Cmd::Publish { batch, .. } => batch.len().max(1),
            Cmd::Claim { max, .. } => (*max).max(1),
            _ => 1,
        }
    }

    fn is_ack(&self) -> bool {
        matches!(
            self,
            Cmd::Settle {
                op: SettleOp::Ack,
                reply: None,
                ..
            }
        )
    }

    fn is_read(&self) -> bool {
        matches!(
            self,
            Cmd::DeadLetters { .. } | Cmd::Stats(_) | Cmd::Bindings { .. } | Cmd::Flush(_)
        )
    }
}

/// An answer held back until the transaction commits.
enum Pending {
    Unit(Reply<()>, Result<()>),
    Rows(Reply<Vec<Claimed>>, Result<Vec<Claimed>>),
    Count(Reply<u64>, Result<u64>),
}

impl Pending {
    fn fail(self, message: &str) -> Pending {
        let err = || Error::transport("sqlite", message);
        match self {
            Pending::Unit(r, Ok(_)) => Pending::Unit(r, Err(err())),
            Pending::Rows(r, Ok(_)) => Pending::Rows(r, Err(err())),
            Pending::Count(r, Ok(_)) => Pending::Count(r, Err(err())),
            other => other,
        }
    }
    fn send(self) {
        // A caller that stopped waiting (cancelled future) is not an error.
        match self {
            Pending::Unit(r, v) => drop(r.send(v)),
            Pending::Rows(r, v) => drop(r.send(v)),
            Pending::Count(r, v) => drop(r.send(v)),
        }
    }
}

/// The thread body: serve commands until every sender is gone.
pub(crate) fn run(mut store: Store, rx: Receiver<Cmd>, notify: Arc<Notify>) {
    let mut group: Vec<Cmd> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        let mut weight = first.weight();
        group.push(first);
        while group.len() < MAX_GROUP && weight < MAX_WEIGHT {
            match rx.try_recv() {
                Ok(cmd) => {
                    weight += cmd.weight();
                    group.push(cmd);
                }
                Err(_) => break,
            }
        }
        linger_for_acks(&rx, &mut group, &mut weight);
        let size = group.len();
        let wake = run_group(&mut store, &mut group);
        if wake {
            notify.notify_waiters();
        }
        if size >= BUSY_GROUP {
            // Under load, leave the write lock free for a moment before the next group so a
            // process waiting for it (polling every 50 µs) gets its turn; the next group just
            // grows a little.
            std::thread::sleep(LOCK_GAP);
        }
    }
    tracing::debug!(path = %store.path().display(), "sqlite connection thread stopped");
}

/// A group of nothing but acks is not urgent (nobody awaits them): wait up to [`ACK_LINGER`]
/// for more acks, or for any other command, so one transaction carries many acks and the next
/// claim rides along instead of queueing behind another round for the write lock.
fn linger_for_acks(rx: &Receiver<Cmd>, group: &mut Vec<Cmd>, weight: &mut usize) {
    let only_acks = |g: &[Cmd]| g.iter().all(Cmd::is_ack);
    if !only_acks(group) {
        return;
    }
    let deadline = std::time::Instant::now() + ACK_LINGER;
    while group.len() < ACK_BATCH && *weight < MAX_WEIGHT {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(cmd) => {
                let urgent = !cmd.is_ack();
                *weight += cmd.weight();
                group.push(cmd);
                if urgent {
                    // Take whatever else is queued and go.
                    while group.len() < MAX_GROUP && *weight < MAX_WEIGHT {
                        match rx.try_recv() {
                            Ok(cmd) => {
                                *weight += cmd.weight();
                                group.push(cmd);
                            }
                            Err(_) => break,
                        }
                    }
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Run one group; true when consumers should look for new messages.
fn run_group(store: &mut Store, group: &mut Vec<Cmd>) -> bool {
    let now = super::now_ms();
    let mut writes = Vec::with_capacity(group.len());
    let mut reads = Vec::new();
    for cmd in group.drain(..) {
        match cmd {
            // A claim on a queue with nothing visible needs no write lock: answer it now.
            Cmd::Claim {
                queue,
                owner,
                max,
                reply,
            } => match store.has_visible(&queue, now) {
                Ok(false) => drop(reply.send(Ok(Vec::new()))),
                Ok(true) => writes.push(Cmd::Claim {
                    queue,
                    owner,
                    max,
                    reply,
                }),
                Err(e) => drop(reply.send(Err(e))),
            },
            cmd if cmd.is_read() => reads.push(cmd),
            cmd => writes.push(cmd),
        }
    }
    let mut wake = false;
    if !writes.is_empty() {
        wake = run_writes(store, writes);
    }
    for cmd in reads {
        match cmd {
            Cmd::DeadLetters {
                queue,
                limit,
                reply,
            } => drop(reply.send(store.dead_letters(&queue, limit))),
            Cmd::Stats(reply) => drop(reply.send(store.stats(super::now_ms()))),
            Cmd::Bindings { exchange, reply } => drop(reply.send(store.bindings(&exchange))),
            Cmd::Flush(reply) => drop(reply.send(Ok(()))),
            _ => {}
        }
    }
    wake
}

fn run_writes(store: &mut Store, writes: Vec<Cmd>) -> bool {
    if let Err(e) = store.begin() {
        let message = e.to_string();
        for cmd in writes {
            fail_unstarted(cmd, &message);
        }
        return false;
    }
    let now = super::now_ms();
    let mut pending = Vec::with_capacity(writes.len());
    let mut wake = false;
    // Acks are gathered and deleted many per statement; they are flushed before any other
    // command so that, e.g., a consumer's release never overtakes its earlier acks.
    let mut acks: HashMap<Arc<str>, Vec<i64>> = HashMap::new();
    for cmd in writes {
        if !matches!(
            cmd,
            Cmd::Settle {
                op: SettleOp::Ack,
                reply: None,
                ..
            }
        ) {
            flush_acks(store, &mut acks);
        }
        match cmd {
            Cmd::Topology(topology, reply) => {
                pending.push(Pending::Unit(
                    reply,
                    store.atomically(|s| s.apply_topology(&topology)),
                ));
            }
            Cmd::Publish {
                exchange,
                batch,
                require_route,
                reply,
            } => {
                let r = store.atomically(|s| s.publish(&exchange, &batch, require_route, now));
                wake |= r.is_ok();
                pending.push(Pending::Unit(reply, r));
            }
            Cmd::Claim {
                queue,
                owner,
                max,
                reply,
            } => {
                pending.push(Pending::Rows(
                    reply,
                    store.atomically(|s| s.claim(&queue, &owner, max, now)),
                ));
            }
            Cmd::Settle {
                id,
                owner,
                op: SettleOp::Ack,
                reply: None,
            } => {
                acks.entry(owner).or_default().push(id);
                continue;
            }
            Cmd::Settle {
                id,
                owner,
                op,
                reply,
            } => {
                flush_acks(store, &mut acks);
                wake |= matches!(op, SettleOp::Reschedule { delay_ms: 0, .. });
                let r = store.atomically(|s| s.settle(id, &owner, op, now));
                match reply {
                    Some(reply) => pending.push(Pending::Unit(reply, r)),
                    None => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, id, "sqlite: could not settle a delivery; it will be redelivered after its lease");
                        }
                    }
                }
            }
            Cmd::Renew { owner, queue } => {
                if let Err(e) = store.renew(&owner, &queue, now) {
                    tracing::warn!(error = %e, "sqlite: could not renew leases; long handlers may see redeliveries");
                }
            }
            Cmd::Register {
                owner,
                queue,
                reply,
            } => {
                pending.push(Pending::Unit(
                    reply,
                    store.atomically(|s| s.register(&owner, &queue, now)),
                ));
            }
            Cmd::ConsumerGone {
                owner,
                queue,
                auto_delete,
            } => {
                wake = true;
                if let Err(e) =
                    store.atomically(|s| s.consumer_gone(&owner, &queue, auto_delete, now))
                {
                    tracing::warn!(error = %e, queue, "sqlite: could not release a stopped consumer's messages; they come back when their lease ends");
                }
            }
            Cmd::Replay { queue, ids, reply } => {
                wake = true;
                pending.push(Pending::Count(
                    reply,
                    store.atomically(|s| s.replay(&queue, ids.as_deref(), now)),
                ));
            }
            Cmd::Purge { queue, ids, reply } => {
                pending.push(Pending::Count(
                    reply,
                    store.atomically(|s| s.purge(&queue, ids.as_deref())),
                ));
            }
            Cmd::DeadLetters { reply, .. } => drop(reply.send(Err(Error::transport(
                "sqlite",
                "internal: read in a write group",
            )))),
            Cmd::Stats(reply) => drop(reply.send(Err(Error::transport(
                "sqlite",
                "internal: read in a write group",
            )))),
            Cmd::Bindings { reply, .. } => drop(reply.send(Err(Error::transport(
                "sqlite",
                "internal: read in a write group",
            )))),
            Cmd::Flush(reply) => drop(reply.send(Ok(()))),
        }
    }
    flush_acks(store, &mut acks);
    if let Err(e) = store.commit() {
        let message = e.to_string();
        tracing::error!(error = %message, "sqlite: commit failed; the whole group was rolled back");
        for p in pending {
            p.fail(&message).send();
        }
        return false;
    }
    for p in pending {
        p.send();
    }
    wake
}

fn flush_acks(store: &mut Store, acks: &mut HashMap<Arc<str>, Vec<i64>>) {
    for (owner, ids) in acks.drain() {
        match store.ack_many(&owner, &ids) {
            Ok(0) => {}
            Ok(lost) => tracing::warn!(
                lost,
                "sqlite: deliveries were acked after their lease expired; they have been or will be redelivered \
                 (raise SqliteOptions::lease if the process stalls for that long)"
            ),
            Err(e) => tracing::warn!(error = %e, "sqlite: could not record acks; those messages will be redelivered"),
        }
    }
}

fn fail_unstarted(cmd: Cmd, message: &str) {
    let err = || Error::transport("sqlite", message);
    match cmd {
        Cmd::Topology(_, reply)
        | Cmd::Publish { reply, .. }
        | Cmd::Register { reply, .. }
        | Cmd::Flush(reply) => drop(reply.send(Err(err()))),
        Cmd::Claim { reply, .. } => drop(reply.send(Err(err()))),
        Cmd::Settle {
            reply: Some(reply), ..
        } => drop(reply.send(Err(err()))),
        Cmd::Replay { reply, .. } | Cmd::Purge { reply, .. } => drop(reply.send(Err(err()))),
        Cmd::DeadLetters { reply, .. } => drop(reply.send(Err(err()))),
        Cmd::Stats(reply) => drop(reply.send(Err(err()))),
        Cmd::Bindings { reply, .. } => drop(reply.send(Err(err()))),
        Cmd::Settle { reply: None, .. } | Cmd::Renew { .. } | Cmd::ConsumerGone { .. } => {
            tracing::warn!(error = message, "sqlite: background write failed; affected messages come back when their lease ends");
        }
    }
}
