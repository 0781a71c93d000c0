//! The SQL: every operation on the database, run on the connection thread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::schema::sql_error;
use super::writer::{Claimed, NewMessage, SettleOp};
use crate::envelope::{format_time, header, Envelope};
use crate::error::{Error, Result};
use crate::pattern::topic_matches;
use crate::topology::Topology;
use crate::transport::{reset_for_replay, DeadLetter, Failure, QueueStats};

/// A queue's settings, as stored.
#[derive(Debug, Clone, Default)]
struct QueueMeta {
    max_priority: Option<u8>,
    message_ttl_ms: Option<i64>,
    max_length: Option<u64>,
}

impl QueueMeta {
    fn rank(&self, priority: u8) -> i64 {
        i64::from(priority.min(self.max_priority.unwrap_or(0)))
    }
    fn effective_ttl(&self, ttl_ms: Option<i64>) -> Option<i64> {
        match (ttl_ms, self.message_ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Queues and bindings as last read, reloaded when `topology_version` moves.
#[derive(Default)]
struct Routes {
    version: Option<i64>,
    bindings: HashMap<String, Vec<(String, String)>>,
    queues: HashMap<String, QueueMeta>,
}

/// The connection and what it caches.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
    lease_ms: i64,
    routes: Routes,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn ttl_ms(envelope: &Envelope) -> Option<i64> {
    envelope.ttl.map(ms)
}

fn encode_headers(envelope: &Envelope) -> Result<String> {
    serde_json::to_string(&envelope.header_map())
        .map_err(|e| Error::transport("sqlite", format!("cannot encode headers as JSON: {e}")))
}

/// Rebuild an envelope from a stored row.
pub(crate) fn decode(
    routing_key: &str,
    headers: &str,
    body: Bytes,
    priority: i64,
    ttl_ms: Option<i64>,
) -> Envelope {
    let map: BTreeMap<String, String> = serde_json::from_str(headers).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "sqlite: a stored message has unreadable headers; delivering it with defaults");
        BTreeMap::new()
    });
    let mut envelope = Envelope::from_headers(map, routing_key, body);
    envelope.priority = u8::try_from(priority.clamp(0, 255)).unwrap_or(0);
    envelope.ttl = ttl_ms.map(|t| std::time::Duration::from_millis(u64::try_from(t).unwrap_or(0)));
    envelope
}

/// A stored message or dead letter as read back.
struct StoredRow {
    id: i64,
    msg_id: String,
    routing_key: String,
    headers: String,
    body: Vec<u8>,
    priority: i64,
    ttl_ms: Option<i64>,
}

impl StoredRow {
    /// Read `id, msg_id, routing_key, headers, body, priority, ttl_ms`.
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredRow {
            id: r.get(0)?,
            msg_id: r.get(1)?,
            routing_key: r.get(2)?,
            headers: r.get(3)?,
            body: r.get(4)?,
            priority: r.get(5)?,
            ttl_ms: r.get(6)?,
        })
    }

    fn envelope(self) -> Envelope {
        decode(
            &self.routing_key,
            &self.headers,
            Bytes::from(self.body),
            self.priority,
            self.ttl_ms,
        )
    }
}

impl Store {
    pub(crate) fn new(conn: Connection, path: PathBuf, lease: std::time::Duration) -> Self {
        Store {
            conn,
            path,
            lease_ms: ms(lease).max(1),
            routes: Routes::default(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> Error {
        sql_error(what, &self.path, e)
    }

    pub(crate) fn begin(&mut self) -> Result<()> {
        self.run("BEGIN IMMEDIATE")
            .map_err(|e| self.err("starting a write transaction (another process may hold the lock longer than busy_timeout)", e))?;
        if let Err(e) = self.refresh_routes() {
            let _ = self.run("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn commit(&mut self) -> Result<()> {
        match self.run("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.run("ROLLBACK");
                // The cache may hold uncommitted topology: force a reload.
                self.routes.version = None;
                Err(self.err("committing", e))
            }
        }
    }

    /// Run a one-statement command through the statement cache (no re-parsing per call).
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// Run `f` under a savepoint: on error, undo just its changes.
    pub(crate) fn atomically<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.run("SAVEPOINT herald_cmd")
            .map_err(|e| self.err("opening a savepoint", e))?;
        match f(self) {
            Ok(v) => {
                self.run("RELEASE herald_cmd")
                    .map_err(|e| self.err("releasing a savepoint", e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.run("ROLLBACK TO herald_cmd");
                let _ = self.run("RELEASE herald_cmd");
                self.routes.version = None;
                Err(e)
            }
        }
    }

    /// Delete acknowledged rows still leased by `owner`, many per statement; returns how many
    /// were no longer leased to it (expired and possibly redelivered).
    pub(crate) fn ack_many(&mut self, owner: &str, ids: &[i64]) -> Result<usize> {
        let list = serde_json::to_string(ids)
            .map_err(|e| Error::transport("sqlite", format!("cannot encode ack ids: {e}")))?;
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM herald_messages WHERE id IN (SELECT value FROM json_each(?2))
                 AND lease_owner = ?1",
            )
            .and_then(|mut s| s.execute(params![owner, list]))
            .map_err(|e| self.err("acknowledging", e))?;
        Ok(ids.len().saturating_sub(n))
    }

    fn topology_version(&self) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT value FROM herald_meta WHERE key = 'topology_version'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.err("reading the topology version", e))
    }

    fn bump_topology(&self) -> Result<()> {
        self.conn
            .execute(
                "UPDATE herald_meta SET value = value + 1 WHERE key = 'topology_version'",
                [],
            )
            .map_err(|e| self.err("bumping the topology version", e))?;
        Ok(())
    }

    fn refresh_routes(&mut self) -> Result<()> {
        let version = self.topology_version()?;
        if self.routes.version == Some(version) {
            return Ok(());
        }
        let mut routes = Routes {
            version: Some(version),
            ..Routes::default()
        };
        let load = |conn: &Connection, routes: &mut Routes| -> rusqlite::Result<()> {
            let mut s = conn.prepare(
                "SELECT name, max_priority, message_ttl_ms, max_length FROM herald_queues",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let max_priority: Option<i64> = r.get(1)?;
                let max_length: Option<i64> = r.get(3)?;
                routes.queues.insert(
                    r.get(0)?,
                    QueueMeta {
                        max_priority: max_priority
                            .map(|p| u8::try_from(p.clamp(0, 255)).unwrap_or(0)),
                        message_ttl_ms: r.get(2)?,
                        max_length: max_length.map(|l| u64::try_from(l).unwrap_or(0)),
                    },
                );
            }
            let mut s = conn.prepare("SELECT exchange, pattern, queue FROM herald_bindings")?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                routes
                    .bindings
                    .entry(r.get(0)?)
                    .or_default()
                    .push((r.get(1)?, r.get(2)?));
            }
            Ok(())
        };
        load(&self.conn, &mut routes).map_err(|e| self.err("loading queues and bindings", e))?;
        self.routes = routes;
        Ok(())
    }

    pub(crate) fn apply_topology(&mut self, topology: &Topology) -> Result<()> {
        for q in &topology.queues {
            self.conn
                .prepare_cached(
                    "INSERT INTO herald_queues (name, max_priority, message_ttl_ms, max_length, auto_delete)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (name) DO UPDATE SET max_priority = ?2, message_ttl_ms = ?3,
                         max_length = ?4, auto_delete = ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        q.name,
                        q.max_priority.map(i64::from),
                        q.message_ttl.map(ms),
                        q.max_length.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
                        q.auto_delete
                    ])
                })
                .map_err(|e| self.err("declaring a queue", e))?;
            for pattern in &q.bindings {
                self.conn
                    .prepare_cached("INSERT OR IGNORE INTO herald_bindings (exchange, pattern, queue) VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute(params![topology.exchange, pattern, q.name]))
                    .map_err(|e| self.err("declaring a binding", e))?;
            }
        }
        self.bump_topology()?;
        self.routes.version = None;
        self.refresh_routes()
    }

    fn ready_count(&self, queue: &str, now: i64) -> Result<u64> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*) FROM herald_messages WHERE queue = ?1 AND visible_at <= ?2",
            )
            .and_then(|mut s| s.query_row(params![queue, now], |r| r.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.err("counting ready messages", e))
    }

    pub(crate) fn publish(
        &mut self,
        exchange: &str,
        batch: &[NewMessage],
        require_route: bool,
        now: i64,
    ) -> Result<()> {
        // Route and check everything before writing anything: a batch is all-or-nothing.
        let no_bindings = Vec::new();
        let bindings = self.routes.bindings.get(exchange).unwrap_or(&no_bindings);
        let mut routed: Vec<Vec<&str>> = Vec::with_capacity(batch.len());
        let mut added: HashMap<&str, u64> = HashMap::new();
        for m in batch {
            let mut targets: Vec<&str> = Vec::new();
            for (pattern, queue) in bindings {
                if topic_matches(pattern, &m.routing_key) && !targets.contains(&queue.as_str()) {
                    targets.push(queue);
                }
            }
            if targets.is_empty() && require_route {
                return Err(Error::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: m.routing_key.clone(),
                });
            }
            for t in &targets {
                *added.entry(t).or_default() += 1;
            }
            routed.push(targets);
        }
        for (queue, n) in &added {
            if let Some(max) = self.routes.queues.get(*queue).and_then(|q| q.max_length) {
                let ready = self.ready_count(queue, now)?;
                if ready + n > max {
                    return Err(Error::Rejected(format!(
                        "queue `{queue}` is full ({max} messages); consume it or raise its max_length"
                    )));
                }
            }
        }
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT INTO herald_messages (queue, rank, priority, ttl_ms, visible_at, expires_at,
                     routing_key, headers, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(|e| sql_error("preparing an insert", &self.path, e))?;
        for (m, targets) in batch.iter().zip(routed) {
            for queue in targets {
                let meta = self.routes.queues.get(queue).cloned().unwrap_or_default();
                let expires_at = meta.effective_ttl(m.ttl_ms).map(|t| now.saturating_add(t));
                insert
                    .execute(params![
                        queue,
                        meta.rank(m.priority),
                        i64::from(m.priority),
                        m.ttl_ms,
                        now,
                        expires_at,
                        m.routing_key,
                        m.headers,
                        &m.body[..]
                    ])
                    .map_err(|e| sql_error("storing a message", &self.path, e))?;
            }
        }
        Ok(())
    }

    pub(crate) fn has_visible(&self, queue: &str, now: i64) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM herald_messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
            )
            .and_then(|mut s| s.exists(params![queue, now]))
            .map_err(|e| self.err("looking for messages", e))
    }

    fn insert_dead(
        &self,
        queue: &str,
        envelope: &Envelope,
        ttl_ms: Option<i64>,
        now: i64,
    ) -> Result<()> {
        let headers = encode_headers(envelope)?;
        self.conn
            .prepare_cached(
                "INSERT INTO herald_dead_letters (queue, msg_id, routing_key, headers, body, priority, ttl_ms, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    queue,
                    envelope.id,
                    envelope.routing_key,
                    headers,
                    &envelope.body[..],
                    i64::from(envelope.priority),
                    ttl_ms,
                    now
                ])
            })
            .map_err(|e| self.err("storing a dead letter", e))?;
        Ok(())
    }

    /// Dead-letter the visible messages of `queue` whose TTL has passed.
    fn expire(&self, queue: &str, now: i64) -> Result<()> {
        let expired: Vec<StoredRow> = self
            .conn
            .prepare_cached(
                "SELECT id, '', routing_key, headers, body, priority, ttl_ms FROM herald_messages
                 WHERE queue = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2 AND visible_at <= ?2",
            )
            .and_then(|mut s| s.query_map(params![queue, now], StoredRow::read)?.collect())
            .map_err(|e| self.err("looking for expired messages", e))?;
        for row in expired {
            let (id, ttl) = (row.id, row.ttl_ms);
            let mut envelope = row.envelope();
            let failure = Failure::now(
                &envelope,
                queue,
                "expired",
                "message TTL expired before delivery",
            );
            failure.record(&mut envelope);
            envelope
                .headers
                .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
            self.insert_dead(queue, &envelope, ttl, now)?;
            self.conn
                .prepare_cached("DELETE FROM herald_messages WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(|e| self.err("removing an expired message", e))?;
        }
        Ok(())
    }

    pub(crate) fn claim(
        &mut self,
        queue: &str,
        owner: &str,
        max: usize,
        now: i64,
    ) -> Result<Vec<Claimed>> {
        self.expire(queue, now)?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let mut rows: Vec<(i64, Claimed)> = self
            .conn
            .prepare_cached(
                "UPDATE herald_messages
                 SET lease_owner = ?1, visible_at = ?2, deliveries = deliveries + 1
                 WHERE id IN (SELECT id FROM herald_messages WHERE queue = ?3 AND visible_at <= ?4
                              ORDER BY rank DESC, id LIMIT ?5)
                 RETURNING id, rank, routing_key, headers, body, priority, ttl_ms, deliveries",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![owner, now.saturating_add(self.lease_ms), queue, now, max],
                    |r| {
                        Ok((
                            r.get::<_, i64>(1)?,
                            Claimed {
                                id: r.get(0)?,
                                routing_key: r.get(2)?,
                                headers: r.get(3)?,
                                body: r.get(4)?,
                                priority: r.get(5)?,
                                ttl_ms: r.get(6)?,
                                deliveries: r.get(7)?,
                            },
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err("claiming messages", e))?;
        // RETURNING does not promise an order: deliver by priority, then arrival.
        rows.sort_by_key(|(rank, c)| (std::cmp::Reverse(*rank), c.id));
        Ok(rows.into_iter().map(|(_, c)| c).collect())
    }

    pub(crate) fn settle(&mut self, id: i64, owner: &str, op: SettleOp, now: i64) -> Result<()> {
        let changed = match op {
            SettleOp::Ack => self
                .conn
                .prepare_cached("DELETE FROM herald_messages WHERE id = ?1 AND lease_owner = ?2")
                .and_then(|mut s| s.execute(params![id, owner]))
                .map_err(|e| self.err("acknowledging", e))?,
            SettleOp::Reschedule { headers, delay_ms } => {
                let at = now.saturating_add(delay_ms.max(0));
                let queue: Option<String> = self
                    .conn
                    .prepare_cached(
                        "SELECT queue FROM herald_messages WHERE id = ?1 AND lease_owner = ?2",
                    )
                    .and_then(|mut s| s.query_row(params![id, owner], |r| r.get(0)).optional())
                    .map_err(|e| self.err("finding a delivery", e))?;
                let queue_ttl = queue
                    .and_then(|q| self.routes.queues.get(&q).cloned())
                    .unwrap_or_default()
                    .message_ttl_ms;
                // A fresh id from the AUTOINCREMENT sequence: to the back of the queue, and the
                // old id (a delivery tag) is never reused.
                let fresh: i64 = self
                    .conn
                    .prepare_cached(
                        "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'herald_messages'
                         RETURNING seq",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                    .map_err(|e| self.err("allocating a message id", e))?
                    .unwrap_or(id);
                self.conn
                    .prepare_cached(
                        "UPDATE herald_messages
                         SET headers = ?3, visible_at = ?4, lease_owner = NULL,
                             id = ?6,
                             expires_at = CASE
                                 WHEN ttl_ms IS NULL AND ?5 IS NULL THEN NULL
                                 ELSE ?4 + min(coalesce(ttl_ms, ?5), coalesce(?5, ttl_ms)) END
                         WHERE id = ?1 AND lease_owner = ?2",
                    )
                    .and_then(|mut s| s.execute(params![id, owner, headers, at, queue_ttl, fresh]))
                    .map_err(|e| self.err("rescheduling a delivery", e))?
            }
            SettleOp::DeadLetter {
                msg_id,
                routing_key,
                headers,
                body,
            } => {
                let row: Option<(String, i64, Option<i64>)> = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM herald_messages WHERE id = ?1 AND lease_owner = ?2
                         RETURNING queue, priority, ttl_ms",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![id, owner], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()
                    })
                    .map_err(|e| self.err("dead-lettering", e))?;
                match row {
                    Some((queue, priority, ttl)) => {
                        self.conn
                            .prepare_cached(
                                "INSERT INTO herald_dead_letters (queue, msg_id, routing_key, headers, body, priority, ttl_ms, dead_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                            )
                            .and_then(|mut s| {
                                s.execute(params![queue, msg_id, routing_key, headers, &body[..], priority, ttl, now])
                            })
                            .map_err(|e| self.err("storing a dead letter", e))?;
                        1
                    }
                    None => 0,
                }
            }
        };
        if changed == 0 {
            tracing::warn!(
                id,
                "sqlite: a delivery was settled after its lease expired; it has been or will be redelivered \
                 (raise SqliteOptions::lease if handlers run long without the process renewing leases)"
            );
        }
        Ok(())
    }

    pub(crate) fn renew(&mut self, owner: &str, queue: &str, now: i64) -> Result<()> {
        let until = now.saturating_add(self.lease_ms);
        self.conn
            .prepare_cached("UPDATE herald_messages SET visible_at = ?2 WHERE lease_owner = ?1")
            .and_then(|mut s| s.execute(params![owner, until]))
            .map_err(|e| self.err("renewing leases", e))?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO herald_consumers (id, queue, expires_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![owner, queue, until]))
            .map_err(|e| self.err("renewing a consumer", e))?;
        Ok(())
    }

    pub(crate) fn register(&mut self, owner: &str, queue: &str, now: i64) -> Result<()> {
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM herald_queues WHERE name = ?1")
            .and_then(|mut s| s.exists([queue]))
            .map_err(|e| self.err("looking up a queue", e))?;
        if !exists {
            return Err(Error::transport(
                "sqlite",
                format!("queue `{queue}` is not declared; apply the topology first"),
            ));
        }
        // Forget consumers of crashed processes whose heartbeat ended long ago.
        self.conn
            .prepare_cached("DELETE FROM herald_consumers WHERE expires_at < ?1")
            .and_then(|mut s| s.execute([now.saturating_sub(self.lease_ms.saturating_mul(10))]))
            .map_err(|e| self.err("removing stale consumers", e))?;
        self.renew(owner, queue, now)
    }

    pub(crate) fn consumer_gone(
        &mut self,
        owner: &str,
        queue: &str,
        auto_delete: bool,
        now: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE herald_messages SET lease_owner = NULL, visible_at = ?2 WHERE lease_owner = ?1")
            .and_then(|mut s| s.execute(params![owner, now]))
            .map_err(|e| self.err("releasing a consumer's messages", e))?;
        self.conn
            .prepare_cached("DELETE FROM herald_consumers WHERE id = ?1")
            .and_then(|mut s| s.execute([owner]))
            .map_err(|e| self.err("removing a consumer", e))?;
        if !auto_delete {
            return Ok(());
        }
        let others = self
            .conn
            .prepare_cached("SELECT 1 FROM herald_consumers WHERE queue = ?1 AND expires_at > ?2")
            .and_then(|mut s| s.exists(params![queue, now]))
            .map_err(|e| self.err("counting consumers", e))?;
        if !others {
            for sql in [
                "DELETE FROM herald_messages WHERE queue = ?1",
                "DELETE FROM herald_dead_letters WHERE queue = ?1",
                "DELETE FROM herald_bindings WHERE queue = ?1",
                "DELETE FROM herald_queues WHERE name = ?1",
                "DELETE FROM herald_consumers WHERE queue = ?1",
            ] {
                self.conn
                    .execute(sql, [queue])
                    .map_err(|e| self.err("deleting an auto-delete queue", e))?;
            }
            self.bump_topology()?;
            self.routes.version = None;
            tracing::debug!(queue, "sqlite: auto-delete queue removed");
        }
        Ok(())
    }

    fn dead_rows(&self, queue: &str, limit: Option<usize>) -> Result<Vec<StoredRow>> {
        let limit = limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        self.conn
            .prepare_cached(
                "SELECT id, msg_id, routing_key, headers, body, priority, ttl_ms FROM herald_dead_letters
                 WHERE queue = ?1 ORDER BY id LIMIT ?2",
            )
            .and_then(|mut s| s.query_map(params![queue, limit], StoredRow::read)?.collect())
            .map_err(|e| self.err("reading dead letters", e))
    }

    pub(crate) fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self
            .dead_rows(queue, Some(limit))?
            .into_iter()
            .map(|row| DeadLetter {
                queue: queue.to_string(),
                envelope: row.envelope(),
            })
            .collect())
    }

    pub(crate) fn replay(&mut self, queue: &str, ids: Option<&[String]>, now: i64) -> Result<u64> {
        let meta = self.routes.queues.get(queue).cloned();
        let Some(meta) = meta else { return Ok(0) };
        let mut n = 0;
        for stored in self.dead_rows(queue, None)? {
            if ids.is_some_and(|ids| !ids.contains(&stored.msg_id)) {
                continue;
            }
            let (row, priority, ttl, rk) = (
                stored.id,
                stored.priority,
                stored.ttl_ms,
                stored.routing_key.clone(),
            );
            let mut envelope = stored.envelope();
            reset_for_replay(&mut envelope);
            let headers = encode_headers(&envelope)?;
            let p = u8::try_from(priority.clamp(0, 255)).unwrap_or(0);
            let expires_at = meta.effective_ttl(ttl).map(|t| now.saturating_add(t));
            self.conn
                .prepare_cached(
                    "INSERT INTO herald_messages (queue, rank, priority, ttl_ms, visible_at, expires_at,
                         routing_key, headers, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![queue, meta.rank(p), priority, ttl, now, expires_at, rk, headers, &envelope.body[..]])
                })
                .map_err(|e| self.err("replaying a dead letter", e))?;
            self.conn
                .prepare_cached("DELETE FROM herald_dead_letters WHERE id = ?1")
                .and_then(|mut s| s.execute([row]))
                .map_err(|e| self.err("removing a replayed dead letter", e))?;
            n += 1;
        }
        Ok(n)
    }

    pub(crate) fn purge(&mut self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        let n = match ids {
            None => self
                .conn
                .prepare_cached("DELETE FROM herald_dead_letters WHERE queue = ?1")
                .and_then(|mut s| s.execute([queue]))
                .map_err(|e| self.err("purging dead letters", e))?,
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += self
                        .conn
                        .prepare_cached(
                            "DELETE FROM herald_dead_letters WHERE queue = ?1 AND msg_id = ?2",
                        )
                        .and_then(|mut s| s.execute(params![queue, id]))
                        .map_err(|e| self.err("purging dead letters", e))?;
                }
                n
            }
        };
        Ok(n as u64)
    }

    pub(crate) fn stats(&self, now: i64) -> Result<Vec<QueueStats>> {
        let count = |n: i64| Some(u64::try_from(n).unwrap_or(0));
        self.conn
            .prepare_cached(
                "SELECT q.name,
                    (SELECT COUNT(*) FROM herald_messages m WHERE m.queue = q.name AND m.visible_at <= ?1),
                    (SELECT COUNT(*) FROM herald_messages m WHERE m.queue = q.name AND m.visible_at > ?1
                        AND m.lease_owner IS NOT NULL),
                    (SELECT COUNT(*) FROM herald_messages m WHERE m.queue = q.name AND m.visible_at > ?1
                        AND m.lease_owner IS NULL),
                    (SELECT COUNT(*) FROM herald_dead_letters d WHERE d.queue = q.name),
                    (SELECT COUNT(*) FROM herald_consumers c WHERE c.queue = q.name AND c.expires_at > ?1)
                 FROM herald_queues q ORDER BY q.name",
            )
            .and_then(|mut s| {
                s.query_map([now], |r| {
                    Ok(QueueStats {
                        queue: r.get(0)?,
                        ready: count(r.get(1)?),
                        in_flight: count(r.get(2)?),
                        delayed: count(r.get(3)?),
                        dead_letters: count(r.get(4)?),
                        consumers: count(r.get(5)?),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err("reading queue stats", e))
    }

    /// Every `(pattern, queue)` binding on `exchange`, read from the file (other processes
    /// declare queues too).
    pub(crate) fn bindings(&self, exchange: &str) -> Result<Vec<(String, String)>> {
        self.conn
            .prepare_cached(
                "SELECT pattern, queue FROM herald_bindings WHERE exchange = ?1 ORDER BY queue, pattern",
            )
            .and_then(|mut s| {
                s.query_map([exchange], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.err("reading bindings", e))
    }
}
