//! Opening the database file: pragmas, the busy handler and the schema.
//!
//! Schema (version 1):
//!
//! - `herald_meta(key, value)`: `schema_version`, and `topology_version`, bumped whenever queues
//!   or bindings change so every process reloads its routing cache.
//! - `herald_queues(name, max_priority, message_ttl_ms, max_length, auto_delete)`.
//! - `herald_bindings(exchange, pattern, queue)`: evaluated at publish time with `topic_matches`.
//! - `herald_messages(id, queue, rank, priority, ttl_ms, visible_at, expires_at, lease_owner,
//!   deliveries, routing_key, headers, body)`: one row per message per queue. `id` is the arrival
//!   order and the delivery tag (`AUTOINCREMENT`: never reused, so a stale settle cannot hit a
//!   newer message); a rescheduled row takes a fresh id, going to the back as it would on a
//!   broker; `rank` the effective priority (0 on queues without `max_priority`). A row may be
//!   claimed when `visible_at <= now`; claiming sets `lease_owner` and moves `visible_at` to the
//!   lease end, so a vanished consumer's rows become claimable again by themselves. A delayed row
//!   (retry, release) has no owner and a future `visible_at`.
//! - `herald_dead_letters(id, queue, msg_id, routing_key, headers, body, priority, ttl_ms,
//!   dead_at)`.
//! - `herald_consumers(id, queue, expires_at)`: live consumers, kept alive by the lease renewer.
//!
//! Times are milliseconds since the Unix epoch; all processes share one host clock.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{Durability, SqliteOptions};
use crate::error::{Error, Result};

/// The schema this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = 1;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS herald_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO herald_meta (key, value) VALUES ('schema_version', 1), ('topology_version', 0);
CREATE TABLE IF NOT EXISTS herald_queues (
    name           TEXT PRIMARY KEY,
    max_priority   INTEGER,
    message_ttl_ms INTEGER,
    max_length     INTEGER,
    auto_delete    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_bindings (
    exchange TEXT NOT NULL,
    pattern  TEXT NOT NULL,
    queue    TEXT NOT NULL,
    PRIMARY KEY (exchange, pattern, queue)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT NOT NULL,
    rank        INTEGER NOT NULL DEFAULT 0,
    priority    INTEGER NOT NULL DEFAULT 0,
    ttl_ms      INTEGER,
    visible_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    lease_owner TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    routing_key TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS herald_messages_next ON herald_messages (queue, rank DESC, id);
CREATE INDEX IF NOT EXISTS herald_messages_expiry ON herald_messages (queue, expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS herald_messages_owner ON herald_messages (lease_owner)
    WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS herald_dead_letters (
    id          INTEGER PRIMARY KEY,
    queue       TEXT NOT NULL,
    msg_id      TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    ttl_ms      INTEGER,
    dead_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS herald_dead_letters_queue ON herald_dead_letters (queue, id);
CREATE TABLE IF NOT EXISTS herald_consumers (
    id         TEXT PRIMARY KEY,
    queue      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
";

thread_local! {
    /// The busy timeout of the connection owned by this thread (each connection lives on one
    /// dedicated thread), read by [`busy_handler`].
    static BUSY_TIMEOUT: Cell<Duration> = const { Cell::new(Duration::from_secs(5)) };
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Wait for another process's write lock with short sleeps (SQLite's own handler sleeps whole
/// milliseconds, which halves throughput when two processes take turns writing).
fn busy_handler(attempt: i32) -> bool {
    let now = Instant::now();
    let since = if attempt == 0 {
        BUSY_SINCE.with(|s| s.set(Some(now)));
        now
    } else {
        BUSY_SINCE.with(|s| s.get()).unwrap_or(now)
    };
    if now.duration_since(since) >= BUSY_TIMEOUT.with(|t| t.get()) {
        return false;
    }
    let pause = match attempt {
        0..=199 => Duration::from_micros(50),
        200..=999 => Duration::from_micros(200),
        _ => Duration::from_millis(1),
    };
    std::thread::sleep(pause);
    true
}

pub(crate) fn sql_error(what: &str, path: &Path, e: rusqlite::Error) -> Error {
    Error::transport(
        "sqlite",
        format!(
            "{what} failed on `{}`: {e}; check that the file is a Herald database on a local disk and is writable",
            path.display()
        ),
    )
}

/// Open (and create, with parent directories) the database and bring its schema up to date.
/// Must be called on the thread that will own the connection.
pub(crate) fn open(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::transport(
                "sqlite",
                format!(
                    "cannot create directory `{}` for the database: {e}",
                    parent.display()
                ),
            )
        })?;
    }
    let conn = Connection::open(path).map_err(|e| sql_error("opening the database", path, e))?;
    BUSY_TIMEOUT.with(|t| t.set(options.busy_timeout));
    conn.busy_handler(Some(busy_handler))
        .map_err(|e| sql_error("setting the busy handler", path, e))?;
    let synchronous = match options.durability {
        Durability::ProcessCrash => "NORMAL",
        Durability::PowerLoss => "FULL",
    };
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| sql_error("switching to WAL", path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::transport(
            "sqlite",
            format!(
                "`{}` could not be put in WAL mode (got `{mode}`); put the database on a local file system",
                path.display()
            ),
        ));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;"
    ))
    .map_err(|e| sql_error("setting pragmas", path, e))?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {DDL} COMMIT;"))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            sql_error("creating the schema", path, e)
        })?;
    let version: i64 = conn
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_error("reading the schema version", path, e))?;
    if version > SCHEMA_VERSION {
        return Err(Error::transport(
            "sqlite",
            format!(
                "`{}` has schema version {version}, newer than this Herald understands ({SCHEMA_VERSION}); upgrade Herald",
                path.display()
            ),
        ));
    }
    Ok(conn)
}
