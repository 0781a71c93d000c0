//! The conformance suite on the in-memory transport wrapped in `EncryptingTransport`: the
//! decorator keeps every promise of the transport underneath (retries and dead letters too).
use std::sync::Arc;

use herald::conformance::Harness;
use herald::transport::memory::MemoryTransport;
use herald::Transport;
use herald_crypto::{EncryptingTransport, Key, Keyring};

struct Encrypted(MemoryTransport, Keyring);

#[async_trait::async_trait]
impl Harness for Encrypted {
    async fn open(&self) -> Arc<dyn Transport> {
        Arc::new(EncryptingTransport::new(
            Arc::new(self.0.handle()),
            self.1.clone(),
        ))
    }
}

herald::conformance_tests!(Encrypted(
    MemoryTransport::new(),
    Keyring::new("k1", Key::generate()).unwrap()
));
