//! [`SqliteStore`]: the relay's side of a SQLite outbox, one connection on a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;

use crate::error::{sql, Error, Result};
use crate::row::ClaimedEvent;
use crate::sqlite::SqliteOutbox;
use crate::status::OutboxStatus;
use crate::store::{OutboxStore, Retention};

/// Open a SQLite file the way Herald uses it: WAL, a busy timeout, `synchronous = NORMAL`.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(sql("setting the busy timeout"))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .map_err(sql("configuring the database"))?;
    Ok(conn)
}

/// Run a closure on a connection on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// An outbox table in a SQLite file, with its own connection.
pub struct SqliteStore {
    outbox: Arc<SqliteOutbox>,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Open the database file (creating the outbox table if needed).
    pub fn open(path: impl AsRef<Path>, outbox: SqliteOutbox) -> Result<Self> {
        let conn = open(path.as_ref())?;
        outbox.migrate(&conn)?;
        Ok(SqliteStore {
            outbox: Arc::new(outbox),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The outbox table.
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim(&self, limit: usize, token: &str, lease: Duration) -> Result<Vec<ClaimedEvent>> {
        let (o, token) = (self.outbox.clone(), token.to_string());
        blocking(&self.conn, move |c| o.claim(c, limit, &token, lease)).await
    }

    async fn mark_sent(&self, seqs: &[i64], token: &str) -> Result<u64> {
        let (o, seqs, token) = (self.outbox.clone(), seqs.to_vec(), token.to_string());
        blocking(&self.conn, move |c| o.mark_sent(c, &seqs, &token)).await
    }

    async fn mark_failed(
        &self,
        seq: i64,
        token: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<()> {
        let (o, token, error) = (self.outbox.clone(), token.to_string(), error.to_string());
        blocking(&self.conn, move |c| {
            o.mark_failed(c, seq, &token, &error, retry_in)
        })
        .await
    }

    async fn release(&self, seqs: &[i64], token: &str) -> Result<()> {
        let (o, seqs, token) = (self.outbox.clone(), seqs.to_vec(), token.to_string());
        blocking(&self.conn, move |c| o.release(c, &seqs, &token)).await
    }

    async fn prune(&self, retention: Retention) -> Result<u64> {
        let o = self.outbox.clone();
        blocking(&self.conn, move |c| o.prune(c, retention)).await
    }

    async fn status(&self) -> Result<OutboxStatus> {
        let o = self.outbox.clone();
        blocking(&self.conn, move |c| o.status(c)).await
    }
}
