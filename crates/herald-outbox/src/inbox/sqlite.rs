//! The inbox in SQLite: a store for [`InboxLayer`](super::InboxLayer), and
//! [`SqliteInbox::record`] to record an id inside the handler's own transaction.
//!
//! ```
//! use herald_outbox::inbox::{sqlite::SqliteInbox, Recorded};
//! let mut db = rusqlite::Connection::open_in_memory().unwrap();
//! let inbox = SqliteInbox::new();
//! inbox.migrate(&db).unwrap();
//! let tx = db.transaction().unwrap();
//! assert_eq!(inbox.record(&tx, "search-sync", "event-1").unwrap(), Recorded::New);
//! // ... the handler's writes on `tx` ...
//! tx.commit().unwrap();
//! assert_eq!(inbox.record(&db, "search-sync", "event-1").unwrap(), Recorded::Duplicate);
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{Claim, InboxStore, Recorded};
use crate::error::{ident, sql, Result};
use crate::sqlite::store::{blocking, open};
use crate::sqlite::{migrate, now_ms, INBOX_SQL};

/// The inbox table `herald_inbox` in a SQLite database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteInbox {
    table: String,
    keep: Duration,
}

impl Default for SqliteInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteInbox {
    /// The table `herald_inbox`, records kept 7 days.
    pub fn new() -> Self {
        SqliteInbox {
            table: "herald_inbox".into(),
            keep: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Use this table name.
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = ident(table)?.to_string();
        Ok(self)
    }

    /// Keep records for this long.
    pub fn keep_for(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    /// Create the table (idempotent).
    pub fn migrate(&self, conn: &Connection) -> Result<bool> {
        migrate(
            conn,
            &format!("{}:0001_inbox", self.table),
            &INBOX_SQL.replace("{table}", &self.table),
        )
    }

    /// Record `event_id` as processed by `consumer` in the caller's transaction.
    pub fn record(&self, tx: &Connection, consumer: &str, event_id: &str) -> Result<Recorded> {
        let now = now_ms();
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO {t} (consumer, event_id, state, expires_at, recorded_at) VALUES (?1, ?2, 'done', ?3, ?4) \
                     ON CONFLICT (consumer, event_id) DO UPDATE \
                         SET state = 'done', expires_at = excluded.expires_at, recorded_at = excluded.recorded_at \
                         WHERE {t}.expires_at < ?4",
                    t = self.table
                ),
                params![consumer, event_id, now + self.keep.as_millis() as i64, now],
            )
            .map_err(sql("recording an inbox id"))?;
        Ok(if n > 0 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    fn begin(
        &self,
        conn: &Connection,
        consumer: &str,
        event_id: &str,
        lease: Duration,
    ) -> Result<Claim> {
        let now = now_ms();
        let t = &self.table;
        let n = conn
            .execute(
                &format!(
                    "INSERT INTO {t} (consumer, event_id, state, expires_at, recorded_at) VALUES (?1, ?2, 'processing', ?3, ?4) \
                     ON CONFLICT (consumer, event_id) DO UPDATE \
                         SET state = 'processing', expires_at = excluded.expires_at, recorded_at = excluded.recorded_at \
                         WHERE {t}.expires_at < ?4"
                ),
                params![consumer, event_id, now + lease.as_millis() as i64, now],
            )
            .map_err(sql("claiming an inbox id"))?;
        if n > 0 {
            return Ok(Claim::New);
        }
        let state: Option<String> = conn
            .query_row(
                &format!("SELECT state FROM {t} WHERE consumer = ?1 AND event_id = ?2"),
                params![consumer, event_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading an inbox id"))?;
        Ok(match state.as_deref() {
            Some("done") => Claim::Duplicate,
            _ => Claim::InProgress,
        })
    }

    /// Delete expired records.
    pub fn purge_expired(&self, conn: &Connection) -> Result<u64> {
        let n = conn
            .execute(
                &format!("DELETE FROM {} WHERE expires_at < ?1", self.table),
                [now_ms()],
            )
            .map_err(sql("purging the inbox"))?;
        Ok(n as u64)
    }
}

/// [`SqliteInbox`] on its own connection, for [`InboxLayer`](super::InboxLayer).
pub struct SqliteInboxStore {
    inbox: Arc<SqliteInbox>,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteInboxStore {
    /// Open the file and create the table if needed.
    pub fn open(path: impl AsRef<Path>, inbox: SqliteInbox) -> Result<Self> {
        let conn = open(path.as_ref())?;
        inbox.migrate(&conn)?;
        Ok(SqliteInboxStore {
            inbox: Arc::new(inbox),
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

#[async_trait]
impl InboxStore for SqliteInboxStore {
    async fn begin(&self, consumer: &str, event_id: &str, lease: Duration) -> Result<Claim> {
        let (i, c, e) = (
            self.inbox.clone(),
            consumer.to_string(),
            event_id.to_string(),
        );
        blocking(&self.conn, move |conn| i.begin(conn, &c, &e, lease)).await
    }

    async fn finish(&self, consumer: &str, event_id: &str, keep: Duration) -> Result<()> {
        let (t, c, e) = (
            self.inbox.table.clone(),
            consumer.to_string(),
            event_id.to_string(),
        );
        blocking(&self.conn, move |conn| {
            let now = now_ms();
            conn.execute(
                &format!(
                    "INSERT INTO {t} (consumer, event_id, state, expires_at, recorded_at) VALUES (?1, ?2, 'done', ?3, ?4) \
                     ON CONFLICT (consumer, event_id) DO UPDATE \
                         SET state = 'done', expires_at = excluded.expires_at, recorded_at = excluded.recorded_at"
                ),
                params![c, e, now + keep.as_millis() as i64, now],
            )
            .map_err(sql("recording an inbox id"))?;
            Ok(())
        })
        .await
    }

    async fn abandon(&self, consumer: &str, event_id: &str) -> Result<()> {
        let (t, c, e) = (
            self.inbox.table.clone(),
            consumer.to_string(),
            event_id.to_string(),
        );
        blocking(&self.conn, move |conn| {
            conn.execute(
                &format!("DELETE FROM {t} WHERE consumer = ?1 AND event_id = ?2 AND state = 'processing'"),
                params![c, e],
            )
            .map_err(sql("dropping an inbox claim"))?;
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64> {
        let i = self.inbox.clone();
        blocking(&self.conn, move |conn| i.purge_expired(conn)).await
    }
}
