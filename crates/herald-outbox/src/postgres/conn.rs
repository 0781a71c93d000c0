//! One PostgreSQL connection that comes back after it breaks.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::{pg, Result};

/// A client that reconnects on the next call once its connection closed.
pub(crate) struct PgConn {
    conninfo: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl PgConn {
    pub(crate) fn new(conninfo: &str) -> Self {
        PgConn {
            conninfo: conninfo.to_string(),
            client: Mutex::new(None),
        }
    }

    pub(crate) fn conninfo(&self) -> &str {
        &self.conninfo
    }

    /// A live client, connecting when there is none.
    pub(crate) async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, conn) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .map_err(pg("connecting to PostgreSQL"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run a call on a live client; forget the client when its connection turned out closed.
    pub(crate) async fn with<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let client = self.client().await?;
        let result = f(client.clone()).await;
        if result.is_err() && client.is_closed() {
            let mut slot = self.client.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
        }
        result
    }
}
