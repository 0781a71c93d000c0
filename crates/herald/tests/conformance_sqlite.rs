//! The conformance suite on the embedded SQLite transport. Every `open()` opens a new
//! `SqliteTransport` (its own connection thread) on the same file, as another process would.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald::conformance::Harness;
use herald::transport::sqlite::{SqliteOptions, SqliteTransport};
use herald::Transport;

const LEASE: Duration = Duration::from_millis(1500);

struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Sqlite {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broker").join("herald.db");
        Sqlite { _dir: dir, path }
    }
}

#[async_trait::async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn Transport> {
        let options = SqliteOptions {
            lease: LEASE,
            ..SqliteOptions::default()
        };
        Arc::new(
            SqliteTransport::open_with(&self.path, options)
                .await
                .expect("open sqlite"),
        )
    }

    fn redelivery_after(&self) -> Duration {
        // The lease, plus the longest idle poll interval.
        LEASE + SqliteOptions::default().poll_max
    }
}

herald::conformance_tests!(Sqlite::new());
