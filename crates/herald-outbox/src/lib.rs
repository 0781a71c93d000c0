//! # herald-outbox
//!
//! The transactional outbox and the idempotent inbox for Herald.
//!
//! - **Outbox.** Stage events in the same database transaction as the data they describe
//!   ([`postgres::PgOutbox::stage`], [`sqlite::SqliteOutbox::stage`]); a [`Relay`] publishes them
//!   through any Herald transport, in order per aggregate, marking rows `pending` → `processing`
//!   → `sent` (→ `completed` when a consumer confirms) or `failed` (retried with backoff). A
//!   service that commits and crashes loses nothing; a relay killed between publishing and
//!   recording publishes again (at-least-once).
//! - **Triggers.** [`postgres::TriggerSpec`] installs a trigger that stages insert / update /
//!   delete / status-change events for a table, for writers in any language.
//! - **Inbox.** [`inbox::InboxLayer`] skips events a consumer already processed (PostgreSQL,
//!   SQLite or Redis, with expiry); [`inbox::postgres::PgInbox::record`] does it inside the
//!   handler's own transaction for exactly-once effects.
//! - **Monitoring.** [`OutboxStatus`]: counts by status, oldest pending age, processing times.
//!
//! ```
//! use herald_outbox::{OutboxStatus, Status};
//! let status = OutboxStatus::default();
//! assert_eq!(status.count(Status::Pending), 0);
//! assert_eq!(status.backlog(), 0);
//! ```
#![warn(missing_docs)]

mod error;
pub mod health;
pub mod inbox;
mod relay;
mod row;
mod status;
mod store;
pub mod telemetry;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use error::{Error, Result};
pub use relay::{AfterPublish, Relay, RelayConfig, RelayMetrics, RetryBackoff, Round};
pub use row::{ClaimedEvent, StagedEvent};
pub use status::{FailedEvent, OutboxStatus, Status};
pub use store::{OutboxStore, Retention};
