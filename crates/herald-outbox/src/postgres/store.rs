//! [`PgStore`]: the relay's side of a PostgreSQL outbox. Owns its connections, reconnects after
//! failures, and listens for the outbox's NOTIFY channel as a wake-up hint.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::conn::PgConn;

use crate::error::{pg, Result};
use crate::postgres::PgOutbox;
use crate::row::ClaimedEvent;
use crate::status::OutboxStatus;
use crate::store::{OutboxStore, Retention};

/// An outbox table reached through its own connections (a connection string in libpq key/value
/// or URL form). Cheap to share behind an `Arc`; one per relay.
pub struct PgStore {
    outbox: PgOutbox,
    conn: PgConn,
    wake: Arc<Notify>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PgStore {
    /// Connect to the database holding `outbox` (the connection is made now, to fail early).
    pub async fn connect(conninfo: &str, outbox: PgOutbox) -> Result<Self> {
        let store = PgStore {
            outbox,
            conn: PgConn::new(conninfo),
            wake: Arc::new(Notify::new()),
            listener: std::sync::Mutex::new(None),
        };
        let client = store.client().await?;
        // Fresh statistics keep the claim on its per-aggregate index probes; autovacuum keeps
        // them fresh afterwards. Best effort.
        if let Err(e) = client
            .batch_execute(&format!("ANALYZE {}", store.outbox.qualified()))
            .await
        {
            tracing::debug!(error = %e, "could not analyze the outbox table");
        }
        Ok(store)
    }

    /// The outbox table.
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    /// A live client, reconnecting when the last one closed.
    pub async fn client(&self) -> Result<Arc<Client>> {
        self.conn.client().await
    }

    async fn with<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.conn.with(f).await
    }

    fn ensure_listener(&self) {
        let mut slot = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let conninfo = self.conn.conninfo().to_string();
        let channel = self.outbox.channel();
        let wake = self.wake.clone();
        *slot = Some(tokio::spawn(async move {
            if let Err(e) = listen(&conninfo, &channel, &wake).await {
                tracing::debug!(error = %e, "outbox LISTEN connection ended; polling continues");
            }
        }));
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(h) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

async fn listen(conninfo: &str, channel: &str, wake: &Notify) -> Result<()> {
    let (client, mut conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(pg("connecting the LISTEN connection"))?;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let sql = format!("LISTEN {channel}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    // Drive the connection while the LISTEN runs, then keep reading notifications.
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(pg("subscribing to outbox notifications"))?;
                listening = true;
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg("reading outbox notifications")(e)),
                None => return Ok(()),
            },
        }
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim(&self, limit: usize, token: &str, lease: Duration) -> Result<Vec<ClaimedEvent>> {
        self.with(|c| async move { self.outbox.claim(&*c, limit, token, lease).await })
            .await
    }

    async fn mark_sent(&self, seqs: &[i64], token: &str) -> Result<u64> {
        self.with(|c| async move { self.outbox.mark_sent(&*c, seqs, token).await })
            .await
    }

    async fn mark_failed(
        &self,
        seq: i64,
        token: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<()> {
        self.with(|c| async move {
            self.outbox
                .mark_failed(&*c, seq, token, error, retry_in)
                .await
        })
        .await
    }

    async fn release(&self, seqs: &[i64], token: &str) -> Result<()> {
        self.with(|c| async move { self.outbox.release(&*c, seqs, token).await })
            .await
    }

    async fn prune(&self, retention: Retention) -> Result<u64> {
        self.with(|c| async move { self.outbox.prune(&*c, retention).await })
            .await
    }

    async fn status(&self) -> Result<OutboxStatus> {
        self.with(|c| async move { self.outbox.status(&*c).await })
            .await
    }

    async fn wait_for_work(&self, max: Duration) {
        self.ensure_listener();
        let _ = tokio::time::timeout(max, self.wake.notified()).await;
    }
}
