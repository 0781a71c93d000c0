//! The inbox in PostgreSQL: a store for [`InboxLayer`](super::InboxLayer), and
//! [`PgInbox::record`] to record an id inside the handler's own transaction (exactly-once
//! effects).
//!
//! ```no_run
//! use herald_outbox::inbox::postgres::{PgInbox, Recorded};
//!
//! # async fn handle(client: &mut tokio_postgres::Client, event_id: &str) -> herald_outbox::Result<()> {
//! let inbox = PgInbox::new("public")?;
//! let tx = client.transaction().await.map_err(|e| herald_outbox::Error::Postgres { context: "begin", source: e })?;
//! if inbox.record(&tx, "search-sync", event_id).await? == Recorded::Duplicate {
//!     return Ok(()); // already applied: commit nothing
//! }
//! // ... the handler's writes on `tx` ...
//! tx.commit().await.map_err(|e| herald_outbox::Error::Postgres { context: "commit", source: e })?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::{Client, GenericClient};

pub use super::Recorded;
use super::{Claim, InboxStore};
use crate::error::{ident, pg, Result};
use crate::postgres::{schema, PgConn};

/// The inbox table `<schema>.herald_inbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInbox {
    schema: String,
    table: String,
    keep: Duration,
}

impl PgInbox {
    /// The inbox in `schema`, records kept 7 days.
    pub fn new(schema: &str) -> Result<Self> {
        Ok(PgInbox {
            schema: ident(schema)?.to_string(),
            table: "herald_inbox".into(),
            keep: Duration::from_secs(7 * 24 * 3600),
        })
    }

    /// Keep records for this long.
    pub fn keep_for(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    fn t(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Create the table (idempotent).
    pub async fn migrate(&self, client: &mut Client) -> Result<usize> {
        schema::migrate(client, &self.schema, &self.table, schema::INBOX).await
    }

    /// Record `event_id` as processed by `consumer` inside the caller's transaction. A concurrent
    /// duplicate blocks on the row until this transaction ends, then sees `Duplicate`; if the
    /// transaction rolls back, nothing was recorded and the redelivery runs again.
    pub async fn record<C: GenericClient + Sync>(
        &self,
        tx: &C,
        consumer: &str,
        event_id: &str,
    ) -> Result<Recorded> {
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO {t} AS i (consumer, event_id, state, expires_at) \
                     VALUES ($1, $2, 'done', now() + $3 * interval '1 millisecond') \
                     ON CONFLICT (consumer, event_id) DO UPDATE \
                         SET state = 'done', expires_at = EXCLUDED.expires_at, recorded_at = now() \
                         WHERE i.expires_at < now() \
                     RETURNING 1",
                    t = self.t()
                ),
                &[&consumer, &event_id, &(self.keep.as_millis() as f64)],
            )
            .await
            .map_err(pg("recording an inbox id"))?;
        Ok(if row.is_some() {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    /// Delete expired records.
    pub async fn purge_expired<C: GenericClient + Sync>(&self, client: &C) -> Result<u64> {
        client
            .execute(
                &format!("DELETE FROM {} WHERE expires_at < now()", self.t()),
                &[],
            )
            .await
            .map_err(pg("purging the inbox"))
    }
}

/// [`PgInbox`] behind its own connection, for [`InboxLayer`](super::InboxLayer).
pub struct PgInboxStore {
    inbox: PgInbox,
    conn: PgConn,
}

impl PgInboxStore {
    /// Connect now (to fail early) and create the table if needed.
    pub async fn connect(conninfo: &str, inbox: PgInbox) -> Result<Self> {
        let (mut client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .map_err(pg("connecting to PostgreSQL"))?;
        let task = tokio::spawn(conn);
        inbox.migrate(&mut client).await?;
        drop(client);
        let _ = task.await;
        Ok(PgInboxStore {
            inbox,
            conn: PgConn::new(conninfo),
        })
    }
}

#[async_trait]
impl InboxStore for PgInboxStore {
    async fn begin(&self, consumer: &str, event_id: &str, lease: Duration) -> Result<Claim> {
        let t = self.inbox.t();
        self.conn
            .with(|c| async move {
                let won = c
                    .query_opt(
                        &format!(
                            "INSERT INTO {t} AS i (consumer, event_id, state, expires_at) \
                             VALUES ($1, $2, 'processing', now() + $3 * interval '1 millisecond') \
                             ON CONFLICT (consumer, event_id) DO UPDATE \
                                 SET state = 'processing', expires_at = EXCLUDED.expires_at, recorded_at = now() \
                                 WHERE i.expires_at < now() \
                             RETURNING 1"
                        ),
                        &[&consumer, &event_id, &(lease.as_millis() as f64)],
                    )
                    .await
                    .map_err(pg("claiming an inbox id"))?;
                if won.is_some() {
                    return Ok(Claim::New);
                }
                let state = c
                    .query_opt(
                        &format!("SELECT state FROM {t} WHERE consumer = $1 AND event_id = $2"),
                        &[&consumer, &event_id],
                    )
                    .await
                    .map_err(pg("reading an inbox id"))?;
                Ok(match state.map(|r| r.get::<_, String>(0)).as_deref() {
                    Some("done") => Claim::Duplicate,
                    _ => Claim::InProgress,
                })
            })
            .await
    }

    async fn finish(&self, consumer: &str, event_id: &str, keep: Duration) -> Result<()> {
        let t = self.inbox.t();
        self.conn
            .with(|c| async move {
                c.execute(
                    &format!(
                        "INSERT INTO {t} (consumer, event_id, state, expires_at) \
                         VALUES ($1, $2, 'done', now() + $3 * interval '1 millisecond') \
                         ON CONFLICT (consumer, event_id) DO UPDATE \
                             SET state = 'done', expires_at = EXCLUDED.expires_at, recorded_at = now()"
                    ),
                    &[&consumer, &event_id, &(keep.as_millis() as f64)],
                )
                .await
                .map_err(pg("recording an inbox id"))?;
                Ok(())
            })
            .await
    }

    async fn abandon(&self, consumer: &str, event_id: &str) -> Result<()> {
        let t = self.inbox.t();
        self.conn
            .with(|c| async move {
                c.execute(
                    &format!("DELETE FROM {t} WHERE consumer = $1 AND event_id = $2 AND state = 'processing'"),
                    &[&consumer, &event_id],
                )
                .await
                .map_err(pg("dropping an inbox claim"))?;
                Ok(())
            })
            .await
    }

    async fn purge_expired(&self) -> Result<u64> {
        let inbox = &self.inbox;
        self.conn
            .with(|c| async move { inbox.purge_expired(&*c).await })
            .await
    }
}
