//! The conformance suite on the embedded SQLite transport wrapped in `EncryptingTransport`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald::conformance::Harness;
use herald::transport::sqlite::{SqliteOptions, SqliteTransport};
use herald::Transport;
use herald_crypto::{EncryptingTransport, Key, Keyring};

const LEASE: Duration = Duration::from_millis(1500);

struct Encrypted {
    _dir: tempfile::TempDir,
    path: PathBuf,
    keys: Keyring,
}

impl Encrypted {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("herald.db");
        let keys = Keyring::new("k1", Key::generate()).unwrap();
        Encrypted {
            _dir: dir,
            path,
            keys,
        }
    }
}

#[async_trait::async_trait]
impl Harness for Encrypted {
    async fn open(&self) -> Arc<dyn Transport> {
        let options = SqliteOptions {
            lease: LEASE,
            ..SqliteOptions::default()
        };
        let inner = SqliteTransport::open_with(&self.path, options)
            .await
            .expect("open sqlite");
        Arc::new(EncryptingTransport::new(Arc::new(inner), self.keys.clone()))
    }

    fn redelivery_after(&self) -> Duration {
        LEASE + SqliteOptions::default().poll_max
    }
}

herald::conformance_tests!(Encrypted::new());
