//! Reference 001's listing sync, built on Herald, on reference 001's topology: exchanges
//! `benalsam.listings` and `benalsam.system`; queues `elasticsearch.sync` (`listing.#`),
//! `listing.status.changes` (`listing.status.#`) and `system.health` (`health.#`).
//!
//! A `listings` table with the outbox trigger; a relay publishing `listing.insert|update|delete`
//! and `listing.status.<status>`; a search-sync consumer maintaining a PostgreSQL full-text
//! index (exactly once, through the inbox in its own transaction; each listing's events in
//! order, listings in parallel) that marks each job `completed`, or `failed` with the error
//! when it cannot index it (retried, or dead-lettered when retrying cannot help); a
//! status-change consumer; and health reports published to `benalsam.system` and logged by the
//! `system.health` consumer. Used by `main.rs` and by the end-to-end tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::health::Health;
use herald::middleware::RetryPolicy;
use herald::{
    Bus, ConsumerOptions, Context, Event, HandlerError, MessageOptions, QueueOptions,
    SubscribeOptions,
};
use herald_outbox::inbox::postgres::PgInbox;
use herald_outbox::inbox::Recorded;
use herald_outbox::postgres::{PgOutbox, PgStore, TriggerSpec};
use herald_outbox::{Relay, RelayConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

/// Reference 001's exchanges and queues. Exactly those names in the example; a test on a shared
/// broker gives each a prefix of its own.
#[derive(Debug, Clone)]
pub struct Names {
    pub listings: String,
    pub system: String,
    pub search_queue: String,
    pub status_queue: String,
    pub health_queue: String,
}

impl Names {
    /// Reference 001's names.
    pub fn reference() -> Self {
        Self::prefixed("")
    }

    /// The same with `prefix` in front of each.
    pub fn prefixed(prefix: &str) -> Self {
        Names {
            listings: format!("{prefix}benalsam.listings"),
            system: format!("{prefix}benalsam.system"),
            search_queue: format!("{prefix}elasticsearch.sync"),
            status_queue: format!("{prefix}listing.status.changes"),
            health_queue: format!("{prefix}system.health"),
        }
    }
}

/// A component's health, published to `benalsam.system` as `health.reported`.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "health.reported", exchange = "benalsam.system")]
pub struct HealthReported {
    pub component: String,
    pub status: String,
    pub detail: String,
}

/// How many database connections the search sync uses (its handler calls run in parallel,
/// one listing's events after each other).
const SEARCH_CONNECTIONS: usize = 4;

/// Everything the example needs to know: the database, the schema it lives in, the names.
#[derive(Clone)]
pub struct App {
    pub conninfo: String,
    pub schema: String,
    pub names: Names,
    pub outbox: PgOutbox,
    pub inbox: PgInbox,
    /// The search sync's retry policy.
    pub retry: RetryPolicy,
    /// Fault injection: while set, the search index is unavailable.
    pub index_down: Arc<AtomicBool>,
}

pub async fn connect(conninfo: &str) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl App {
    pub fn new(conninfo: &str, schema: &str, names: Names) -> Result<Self, BoxError> {
        Ok(App {
            conninfo: conninfo.to_string(),
            schema: schema.to_string(),
            names,
            outbox: PgOutbox::new("listings-admin")?.schema(schema)?,
            inbox: PgInbox::new(schema)?,
            retry: RetryPolicy::default(),
            index_down: Arc::default(),
        })
    }

    /// A bus for `service` on `broker` whose own exchange is the listings exchange.
    pub async fn bus(&self, service: &str, broker: &str) -> Result<Bus, BoxError> {
        Ok(Bus::builder()
            .service(service)
            .broker(broker)
            .exchange(&self.names.listings)
            .build()
            .await?)
    }

    /// Tables, the outbox migration, the trigger, the search index, the inbox.
    pub async fn setup(&self) -> Result<(), BoxError> {
        let s = &self.schema;
        let mut c = connect(&self.conninfo).await?;
        self.outbox.migrate(&mut c).await?;
        self.inbox.migrate(&mut c).await?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {s}.listings (
                 id bigserial PRIMARY KEY,
                 title text NOT NULL,
                 description text NOT NULL DEFAULT '',
                 status text NOT NULL DEFAULT 'pending',
                 version bigint NOT NULL DEFAULT 1);
             CREATE TABLE IF NOT EXISTS {s}.search_index (
                 listing_id bigint PRIMARY KEY,
                 title text NOT NULL,
                 description text NOT NULL,
                 status text NOT NULL,
                 version bigint NOT NULL,
                 document tsvector GENERATED ALWAYS AS
                     (to_tsvector('english', title || ' ' || description)) STORED);
             CREATE INDEX IF NOT EXISTS search_index_document ON {s}.search_index USING gin (document);
             CREATE TABLE IF NOT EXISTS {s}.status_log (
                 event_id text PRIMARY KEY, listing_id bigint NOT NULL, status text NOT NULL,
                 routing_key text NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.health_log (
                 event_id text PRIMARY KEY, component text NOT NULL, status text NOT NULL,
                 detail text NOT NULL);"
        ))
        .await?;
        TriggerSpec::new("listings")?
            .schema(s)?
            .prefix("listing")?
            .status_column("status")?
            .install(&c, &self.outbox)
            .await?;
        Ok(())
    }

    // ---- admin operations: plain SQL, the trigger stages the events ----

    pub async fn create(
        &self,
        c: &Client,
        title: &str,
        description: &str,
    ) -> Result<i64, BoxError> {
        let row = c
            .query_one(
                &format!(
                    "INSERT INTO {}.listings (title, description) VALUES ($1, $2) RETURNING id",
                    self.schema
                ),
                &[&title, &description],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn rename(&self, c: &Client, id: i64, title: &str) -> Result<(), BoxError> {
        c.execute(
            &format!(
                "UPDATE {}.listings SET title = $2, version = version + 1 WHERE id = $1",
                self.schema
            ),
            &[&id, &title],
        )
        .await?;
        Ok(())
    }

    pub async fn set_status(&self, c: &Client, id: i64, status: &str) -> Result<(), BoxError> {
        c.execute(
            &format!(
                "UPDATE {}.listings SET status = $2, version = version + 1 WHERE id = $1",
                self.schema
            ),
            &[&id, &status],
        )
        .await?;
        Ok(())
    }

    pub async fn delete(&self, c: &Client, id: i64) -> Result<(), BoxError> {
        c.execute(
            &format!("DELETE FROM {}.listings WHERE id = $1", self.schema),
            &[&id],
        )
        .await?;
        Ok(())
    }

    // ---- the relay ----

    pub async fn relay(&self, bus: &Bus, config: RelayConfig) -> Result<Relay<PgStore>, BoxError> {
        let conninfo = format!("{} application_name=listing_relay", self.conninfo);
        let store = Arc::new(PgStore::connect(&conninfo, self.outbox.clone()).await?);
        Ok(Relay::new(store, bus.publisher().clone(), config))
    }

    // ---- the consumers ----

    /// Subscribe reference 001's three consumers on `bus`: search sync on `elasticsearch.sync`
    /// (`listing.#`), status changes on `listing.status.changes` (`listing.status.#`), health
    /// reports on `system.health` (`health.#` on the system exchange).
    pub async fn subscribe(&self, bus: &Bus) -> Result<(), BoxError> {
        let app = Arc::new(self.clone());
        let mut pool = Vec::with_capacity(SEARCH_CONNECTIONS);
        for _ in 0..SEARCH_CONNECTIONS {
            pool.push(tokio::sync::Mutex::new(connect(&self.conninfo).await?));
        }
        let pool = Arc::new((pool, AtomicUsize::new(0)));
        let a = app.clone();
        bus.subscribe_pattern(
            "search-sync",
            "listing.#",
            move |event: Value, ctx: Context| {
                let (a, pool) = (a.clone(), pool.clone());
                async move {
                    let turn = pool.1.fetch_add(1, Ordering::Relaxed) % pool.0.len();
                    a.search_sync(&pool.0[turn], event, &ctx).await
                }
            },
            SubscribeOptions::new()
                .queue(QueueOptions::named(&self.names.search_queue))
                // Each listing's events (the trigger's subject `listings:<id>`) in order,
                // different listings in parallel.
                .consumer(ConsumerOptions::new().concurrency(8).ordered_by_subject())
                .retry(self.retry),
        )?;
        let db = Arc::new(tokio::sync::Mutex::new(connect(&self.conninfo).await?));
        let a = app.clone();
        bus.subscribe_pattern(
            "status-changes",
            "listing.status.#",
            move |event: Value, ctx: Context| {
                let (a, d) = (a.clone(), db.clone());
                async move { a.status_changed(&d, event, &ctx).await }
            },
            SubscribeOptions::new()
                .queue(QueueOptions::named(&self.names.status_queue))
                .concurrency(1),
        )?;
        let db = Arc::new(tokio::sync::Mutex::new(connect(&self.conninfo).await?));
        bus.subscribe_pattern(
            "health",
            "health.#",
            move |report: HealthReported, ctx: Context| {
                let (a, d) = (app.clone(), db.clone());
                async move { a.health_logged(&d, report, &ctx).await }
            },
            SubscribeOptions::new()
                .queue(QueueOptions::named(&self.names.health_queue).exchange(&self.names.system)),
        )?;
        Ok(())
    }

    /// Publish each component of `health` as a `health.reported` event on the system exchange.
    pub async fn report_health(&self, bus: &Bus, health: &Health) -> Result<(), BoxError> {
        for c in health.report().await.components {
            let status = serde_json::to_value(c.status)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            bus.publish_with(
                &HealthReported {
                    component: c.name,
                    status,
                    detail: c.detail,
                },
                MessageOptions::default().exchange(&self.names.system),
            )
            .await?;
        }
        Ok(())
    }

    async fn health_logged(
        &self,
        db: &tokio::sync::Mutex<Client>,
        report: HealthReported,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let c = self.reconnect(db).await?;
        c.execute(
            &format!(
                "INSERT INTO {}.health_log (event_id, component, status, detail) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (event_id) DO NOTHING",
                self.schema
            ),
            &[&ctx.id(), &report.component, &report.status, &report.detail],
        )
        .await?;
        Ok(())
    }

    /// The connection behind `db`, opened again when the server closed it.
    async fn reconnect<'a>(
        &self,
        db: &'a tokio::sync::Mutex<Client>,
    ) -> Result<tokio::sync::MutexGuard<'a, Client>, HandlerError> {
        let mut c = db.lock().await;
        if c.is_closed() {
            *c = connect(&self.conninfo)
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(c)
    }

    /// Index one listing event. When that fails, the job is marked `failed` with the reason
    /// (reference 001's "ES Service -> DB: mark job failed") and the error goes back to Herald,
    /// which retries it (a later success marks it `completed`) or dead-letters it.
    async fn search_sync(
        &self,
        db: &tokio::sync::Mutex<Client>,
        event: Value,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let mut c = self.reconnect(db).await?;
        let indexed = self.index(&mut c, &event, ctx).await;
        if let Err(e) = &indexed {
            if let Err(mark) = self.outbox.fail(&*c, ctx.id(), &e.message).await {
                tracing::warn!(id = ctx.id(), error = %mark, "could not mark the job failed");
            }
        }
        indexed
    }

    async fn index(
        &self,
        c: &mut Client,
        event: &Value,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let s = &self.schema;
        let tx = c.transaction().await?;
        if self
            .inbox
            .record(&tx, "search-sync", ctx.id())
            .await
            .map_err(HandlerError::transient)?
            == Recorded::Duplicate
        {
            return Ok(());
        }
        if self.index_down.load(Ordering::SeqCst) {
            return Err(HandlerError::transient("search index unavailable"));
        }
        let op = event["operation"].as_str().unwrap_or("");
        let id = event["id"]
            .as_i64()
            .ok_or_else(|| HandlerError::permanent("listing event without an id"))?;
        if op == "delete" {
            tx.execute(
                &format!("DELETE FROM {s}.search_index WHERE listing_id = $1"),
                &[&id],
            )
            .await?;
        } else {
            let new = &event["new"];
            let (title, description, status) = (
                new["title"].as_str().unwrap_or_default(),
                new["description"].as_str().unwrap_or_default(),
                new["status"].as_str().unwrap_or_default(),
            );
            if title.trim().is_empty() {
                return Err(HandlerError::permanent(format!(
                    "listing {id} has no title; the search index refuses it"
                )));
            }
            let version = new["version"].as_i64().unwrap_or(0);
            tx.execute(
                &format!(
                    "INSERT INTO {s}.search_index (listing_id, title, description, status, version)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (listing_id) DO UPDATE SET title = EXCLUDED.title,
                         description = EXCLUDED.description, status = EXCLUDED.status, version = EXCLUDED.version
                     WHERE {s}.search_index.version <= EXCLUDED.version"
                ),
                &[&id, &title, &description, &status, &version],
            )
            .await?;
        }
        // Reference 001's last status: the consumer confirms, in the same transaction.
        self.outbox
            .complete(&tx, ctx.id())
            .await
            .map_err(HandlerError::transient)?;
        tx.commit().await?;
        Ok(())
    }

    async fn status_changed(
        &self,
        db: &tokio::sync::Mutex<Client>,
        event: Value,
        ctx: &Context,
    ) -> Result<(), HandlerError> {
        let c = self.reconnect(db).await?;
        let id = event["id"].as_i64().unwrap_or(0);
        let status = event["status"].as_str().unwrap_or("").to_string();
        // Idempotent by the event id's primary key.
        c.execute(
            &format!(
                "INSERT INTO {}.status_log (event_id, listing_id, status, routing_key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (event_id) DO NOTHING",
                self.schema
            ),
            &[&ctx.id(), &id, &status, &ctx.envelope().routing_key],
        )
        .await?;
        Ok(())
    }

    // ---- queries ----

    /// Listing ids whose title or description match a web-style search query.
    pub async fn search(&self, c: &Client, query: &str) -> Result<Vec<i64>, BoxError> {
        let rows = c
            .query(
                &format!(
                    "SELECT listing_id FROM {}.search_index WHERE document @@ websearch_to_tsquery('english', $1) ORDER BY listing_id",
                    self.schema
                ),
                &[&query],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Rows that differ between the table and the index (empty when in sync).
    pub async fn index_diff(&self, c: &Client) -> Result<Vec<String>, BoxError> {
        let s = &self.schema;
        let rows = c
            .query(
                &format!(
                    "SELECT coalesce(l.id, i.listing_id)::text || ': table=' || coalesce(l.title || '/' || l.status, '-')
                            || ' index=' || coalesce(i.title || '/' || i.status, '-')
                     FROM {s}.listings l FULL JOIN {s}.search_index i ON i.listing_id = l.id
                     WHERE l.id IS NULL OR i.listing_id IS NULL OR l.title <> i.title
                        OR l.description <> i.description OR l.status <> i.status"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Wait until the outbox is drained and the index matches the table.
    pub async fn wait_in_sync(&self, c: &Client, limit: Duration) -> Result<(), BoxError> {
        let start = std::time::Instant::now();
        loop {
            let status = self.outbox.status(c).await?;
            let diff = self.index_diff(c).await?;
            if status.backlog() == 0 && diff.is_empty() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("not in sync after {limit:?}: {status}\n{diff:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
