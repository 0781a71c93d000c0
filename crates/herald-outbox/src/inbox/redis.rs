//! The inbox in Redis: one key per (consumer, event id), `processing` with the lease as TTL, then
//! `done` with the retention as TTL. Expiry is Redis's own.
//!
//! ```no_run
//! # async fn run() -> herald_outbox::Result<()> {
//! use std::sync::Arc;
//! use herald_outbox::inbox::{redis::RedisInbox, InboxLayer};
//! let store = RedisInbox::connect("redis://127.0.0.1:6379", "herald:inbox").await?;
//! let layer = InboxLayer::new(Arc::new(store));
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{Claim, InboxStore};
use crate::error::{Error, Result};

fn rerr(context: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { context, source }
}

/// A Redis-backed inbox store. The connection reconnects by itself.
#[derive(Clone)]
pub struct RedisInbox {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisInbox {
    /// Connect to `url` (`redis://host:port/db`); keys are `<prefix>:<consumer>:<event id>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(rerr("parsing the Redis URL"))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(rerr("connecting to Redis"))?;
        Ok(RedisInbox {
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, consumer: &str, event_id: &str) -> String {
        format!("{}:{consumer}:{event_id}", self.prefix)
    }
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait]
impl InboxStore for RedisInbox {
    async fn begin(&self, consumer: &str, event_id: &str, lease: Duration) -> Result<Claim> {
        let key = self.key(consumer, event_id);
        let mut c = self.conn.clone();
        // SET NX, or the current value when the key exists, in one round trip.
        let script = redis::Script::new(
            r"if redis.call('SET', KEYS[1], 'processing', 'NX', 'PX', ARGV[1]) then return 'new' end
              return redis.call('GET', KEYS[1]) or 'gone'",
        );
        let answer: String = script
            .key(&key)
            .arg(ms(lease))
            .invoke_async(&mut c)
            .await
            .map_err(rerr("claiming an inbox id"))?;
        Ok(match answer.as_str() {
            "new" => Claim::New,
            "done" => Claim::Duplicate,
            _ => Claim::InProgress,
        })
    }

    async fn finish(&self, consumer: &str, event_id: &str, keep: Duration) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(consumer, event_id))
            .arg("done")
            .arg("PX")
            .arg(ms(keep))
            .query_async::<()>(&mut c)
            .await
            .map_err(rerr("recording an inbox id"))
    }

    async fn abandon(&self, consumer: &str, event_id: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(
            r"if redis.call('GET', KEYS[1]) == 'processing' then return redis.call('DEL', KEYS[1]) end
              return 0",
        );
        script
            .key(self.key(consumer, event_id))
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(rerr("dropping an inbox claim"))?;
        Ok(())
    }
}
