//! A small pool of PostgreSQL connections, each with its prepared statements cached (an append
//! is then one round trip: no parse per call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{pg, Result};

/// One connection and the statements prepared on it.
pub struct PgConnection {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PgConnection {
    /// The client (e.g. to open a transaction with `client_mut().transaction()`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, mutably.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// `sql` prepared once on this connection.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(sql)
            .await
            .map_err(pg("preparing a statement"))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Up to `size` connections to one database, opened on demand and reopened after they break.
pub struct PgPool {
    conninfo: String,
    idle: Mutex<Vec<PgConnection>>,
    permits: Arc<Semaphore>,
    size: usize,
}

/// A connection taken from the pool; it goes back when dropped (unless it broke).
pub struct Pooled<'a> {
    conn: Option<PgConnection>,
    pool: &'a PgPool,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
        }
    }
}

impl PgPool {
    /// A pool of at most `size` connections to `conninfo` (libpq key/value or URL form).
    pub fn new(conninfo: &str, size: usize) -> Self {
        let size = size.max(1);
        PgPool {
            conninfo: conninfo.to_string(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The connection string.
    pub fn conninfo(&self) -> &str {
        &self.conninfo
    }

    /// The most connections open at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A connection: an idle one, or a new one when none is idle and the pool is not full.
    pub async fn get(&self) -> Result<Pooled<'_>> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| crate::Error::Task("the connection pool was closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.client.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let conn = match idle {
            Some(c) => c,
            None => connect(&self.conninfo).await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }
}

/// Open one connection, its driver task spawned.
pub(crate) async fn connect(conninfo: &str) -> Result<PgConnection> {
    Ok(PgConnection {
        client: connect_client(conninfo).await?,
        statements: HashMap::new(),
    })
}

/// Open one bare client, its driver task spawned.
pub async fn connect_client(conninfo: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(pg("connecting to PostgreSQL"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}
