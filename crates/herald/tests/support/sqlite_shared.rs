//! What `tests/sqlite_processes.rs` and its child process (`sqlite_child.rs`) agree on: the
//! database, the queue, the messages and how the child is told its role.
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use herald::transport::sqlite::{SqliteOptions, SqliteTransport};
use herald::{Envelope, QueueSpec};

pub const EXCHANGE: &str = "procs";
/// The child's role: `publish`, `publish_forever` or `consume_no_ack`.
pub const ROLE: &str = "HERALD_SQLITE_CHILD";
/// The path of the SQLite file the child opens.
pub const DB: &str = "HERALD_SQLITE_DB";
pub const LEASE: Duration = Duration::from_millis(1000);

pub fn queue() -> QueueSpec {
    QueueSpec::new("procs.work", "work.#")
}

pub fn msg(n: u64) -> Envelope {
    Envelope::new(
        "work.item",
        1,
        "work.item",
        "child",
        Bytes::from(format!("{{\"n\":{n}}}")),
    )
}

pub fn n_of(e: &Envelope) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&e.body)
        .ok()
        .and_then(|v| v["n"].as_u64())
        .unwrap_or(u64::MAX)
}

pub async fn open(path: &Path) -> SqliteTransport {
    let options = SqliteOptions {
        lease: LEASE,
        ..SqliteOptions::default()
    };
    SqliteTransport::open_with(path, options)
        .await
        .expect("open sqlite")
}
