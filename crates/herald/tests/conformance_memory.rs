//! The conformance suite on the in-memory transport.
use std::sync::Arc;

use herald::conformance::Harness;
use herald::transport::memory::MemoryTransport;
use herald::Transport;

struct Memory(MemoryTransport);

#[async_trait::async_trait]
impl Harness for Memory {
    async fn open(&self) -> Arc<dyn Transport> {
        // A "new process" on the same broker: a new handle sharing its state.
        Arc::new(self.0.handle())
    }
}

herald::conformance_tests!(Memory(MemoryTransport::new()));
