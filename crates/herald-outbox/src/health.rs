//! The outbox relay's health: how many events wait to be published and how long the oldest has
//! waited, against a lag threshold. A [`RelayHealth`] is a [`HealthCheck`] (component `outbox`)
//! and also reads the full [`OutboxStatus`] for dashboards.
//!
//! - oldest pending younger than the threshold (or nothing pending): `up`;
//! - older than the threshold: `degraded` (the relay is behind);
//! - older than [`DOWN_FACTOR`] × the threshold, or the table cannot be read: `down`.

use std::time::Duration;

use async_trait::async_trait;
use herald::health::{ComponentHealth, HealthCheck, HealthStatus};

use crate::error::Result;
use crate::status::OutboxStatus;

/// How many thresholds of lag make the outbox `down` rather than `degraded`.
pub const DOWN_FACTOR: u32 = 4;

/// The default lag threshold.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(30);

/// Where the outbox table lives.
#[derive(Debug, Clone)]
enum Source {
    #[cfg(feature = "postgres")]
    Postgres {
        conninfo: String,
        outbox: crate::postgres::PgOutbox,
    },
    #[cfg(feature = "sqlite")]
    Sqlite {
        path: std::path::PathBuf,
        outbox: crate::sqlite::SqliteOutbox,
    },
}

/// Health of an outbox table and its relay. Each check opens a short connection, reads
/// [`OutboxStatus`], and closes it.
///
/// ```no_run
/// # async fn f() -> herald_outbox::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use herald::health::Health;
/// use herald_outbox::{health::RelayHealth, postgres::PgOutbox};
///
/// let outbox = RelayHealth::postgres("host=127.0.0.1 user=postgres dbname=app", PgOutbox::new("listing-service")?)
///     .threshold(Duration::from_secs(10));
/// let health = Health::new().with(Arc::new(outbox));
/// println!("{:?}", health.report().await.status);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RelayHealth {
    source: Source,
    threshold: Duration,
}

impl RelayHealth {
    /// An outbox table in PostgreSQL (`conninfo` as for `tokio_postgres`, or a URL).
    #[cfg(feature = "postgres")]
    pub fn postgres(conninfo: impl Into<String>, outbox: crate::postgres::PgOutbox) -> Self {
        Self::from_source(Source::Postgres {
            conninfo: conninfo.into(),
            outbox,
        })
    }

    /// An outbox table in a SQLite file.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(
        path: impl Into<std::path::PathBuf>,
        outbox: crate::sqlite::SqliteOutbox,
    ) -> Self {
        Self::from_source(Source::Sqlite {
            path: path.into(),
            outbox,
        })
    }

    fn from_source(source: Source) -> Self {
        RelayHealth {
            source,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// Lag above which the outbox is `degraded` (default 30 s).
    pub fn threshold(mut self, threshold: Duration) -> Self {
        self.threshold = threshold;
        self
    }

    /// Read the outbox table's status now.
    pub async fn status(&self) -> Result<OutboxStatus> {
        match &self.source {
            #[cfg(feature = "postgres")]
            Source::Postgres { conninfo, outbox } => {
                crate::postgres::status(conninfo, outbox).await
            }
            #[cfg(feature = "sqlite")]
            Source::Sqlite { path, outbox } => {
                let (path, outbox) = (path.clone(), outbox.clone());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .map_err(crate::error::sql("opening the outbox database"))?;
                    outbox.status(&conn)
                })
                .await
                .map_err(|e| crate::Error::Task(format!("reading the outbox status: {e}")))?
            }
        }
    }

    /// The health of a status already read.
    pub fn evaluate(&self, status: &OutboxStatus) -> ComponentHealth {
        let pending = status.backlog();
        let threshold = self.threshold.as_secs_f64();
        let Some(age) = status.oldest_pending_age_secs else {
            return ComponentHealth::new(
                "outbox",
                HealthStatus::Up,
                format!("{pending} pending (threshold {threshold}s)"),
            );
        };
        let health = if age > threshold * f64::from(DOWN_FACTOR) {
            HealthStatus::Down
        } else if age > threshold {
            HealthStatus::Degraded
        } else {
            HealthStatus::Up
        };
        ComponentHealth::new(
            "outbox",
            health,
            format!("{pending} pending, oldest {age:.1}s (threshold {threshold}s)"),
        )
    }
}

#[async_trait]
impl HealthCheck for RelayHealth {
    async fn check(&self) -> Vec<ComponentHealth> {
        let component = match self.status().await {
            Ok(status) => self.evaluate(&status),
            Err(e) => ComponentHealth::new(
                "outbox",
                HealthStatus::Down,
                format!("cannot read the outbox table: {e}"),
            ),
        };
        vec![component]
    }
}
