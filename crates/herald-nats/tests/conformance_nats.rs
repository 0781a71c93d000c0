//! The conformance kit against the machine's NATS server (127.0.0.1:4222, or
//! `HERALD_TEST_NATS_URL`). Each `open()` is a new "process" with its own connection; a short
//! `ack_wait` makes JetStream redeliver what a "crashed" handle held within the kit's patience.
//! What a case declared (its exchange's streams) is deleted when it ends.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::conformance::Harness;
use herald::{Topology, Transport};
use herald_nats::{NatsConfig, NatsTransport};

fn url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Nats;

#[async_trait]
impl Harness for Nats {
    async fn open(&self) -> Arc<dyn Transport> {
        let cfg = NatsConfig::from_url(&format!("{}?ack_wait=2s", url()), "conformance")
            .expect("NATS URL");
        Arc::new(NatsTransport::connect(cfg).await.expect("connect to NATS"))
    }

    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(3)
    }

    async fn clean_up(&self, topology: &Topology) {
        let Ok(client) = async_nats::connect(url()).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        let stream = herald_nats::stream_name(&topology.exchange);
        let _ = js.delete_stream(format!("{stream}_dlq")).await;
        let _ = js.delete_stream(stream).await;
    }
}

herald::conformance_tests!(Nats);
