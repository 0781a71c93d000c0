//! Publishing through a socket that stops draining: the broker stops reading (a congested
//! network, a broker too busy to read), the kernel's buffers fill, then amqprs's writer queue.
//! Publish calls that find that queue full hand their messages to the channel's sender task;
//! every one must still be numbered in wire order, so that each caller hears its own message's
//! confirm.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use herald::transport::{ConsumeOptions, PublishOptions};
use herald::{Envelope, Error, QueueSpec, Topology, Transport};
use herald_rabbitmq::{RabbitConfig, RabbitTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod common;

/// A TCP relay to the broker whose client-to-broker direction can be paused.
struct StallableRelay {
    port: u16,
    paused: Arc<AtomicBool>,
}

impl StallableRelay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let paused = Arc::new(AtomicBool::new(false));
        let p = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut broker_read, mut broker_write) = broker.into_split();
                let paused = p.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        // Paused: nothing is read, so the client's socket fills up.
                        while paused.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if broker_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
                });
            }
        });
        StallableRelay { port, paused }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

fn event(key: &str, n: u32) -> Envelope {
    let body =
        serde_json::to_vec(&serde_json::json!({ "n": n, "pad": "x".repeat(150) })).expect("json");
    Envelope::new(key, 1, key, "stall", Bytes::from(body))
}

/// Publish events `range` one per call, all at once; returns which were confirmed and which
/// rejected (any other error fails the test).
fn publish_range(
    publisher: &Arc<RabbitTransport>,
    exchange: &str,
    range: std::ops::Range<u32>,
) -> tokio::task::JoinHandle<(HashSet<u32>, HashSet<u32>)> {
    let publisher = publisher.clone();
    let exchange = exchange.to_string();
    tokio::spawn(async move {
        let mut calls: FuturesUnordered<_> = range
            .map(|n| {
                let publisher = publisher.clone();
                let exchange = exchange.clone();
                async move {
                    let r = publisher
                        .publish(&exchange, &[event("s.event", n)], PublishOptions::default())
                        .await;
                    (n, r)
                }
            })
            .collect();
        let (mut confirmed, mut rejected) = (HashSet::new(), HashSet::new());
        while let Some((n, r)) = calls.next().await {
            match r {
                Ok(()) => confirmed.insert(n),
                Err(Error::Rejected(_)) => rejected.insert(n),
                Err(e) => panic!("event {n}: {e}"),
            };
        }
        (confirmed, rejected)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_behind_a_stalled_socket_get_their_own_confirms() {
    common::wait_for_broker(Duration::from_secs(60)).await;
    let relay = StallableRelay::start().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("stall.{}", &id[..8]);
    // A full queue rejects what comes after (negative confirms), so which publish is told what
    // shows whether confirms reach the right callers: a message reported confirmed must be in
    // the queue, one reported rejected must not.
    let mut queue = QueueSpec::new(format!("stall-{}", &id[..8]), "s.#");
    queue.max_length = Some(ACCEPTED);
    let mut topo = Topology::new(&exchange);
    topo.add_queue(queue.clone());
    let consumer = RabbitTransport::connect(RabbitConfig::new(vec![common::amqp_url()], "stall"))
        .await
        .expect("connect");
    consumer.apply_topology(&topo).await.expect("topology");
    // A window wider than amqprs's writer queue (8,192 frames), so that queue can fill.
    let mut cfg = RabbitConfig::new(vec![relay.url()], "stall-publisher");
    cfg.confirm_window = 40_000;
    let publisher = Arc::new(RabbitTransport::connect(cfg).await.expect("connect"));

    const EVENTS: u32 = 30_000;
    const ACCEPTED: u64 = 20_000;
    relay.pause(true);
    let first_wave = publish_range(&publisher, &exchange, 0..20_000);
    // Unroutable messages among them: their returns must still reach their own callers.
    let mut unroutable = Vec::new();
    for n in 0..5 {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        unroutable.push(tokio::spawn(async move {
            publisher
                .publish(
                    &exchange,
                    &[event("nobody.listens", n)],
                    PublishOptions::default(),
                )
                .await
        }));
    }
    // Long enough for the kernel's buffers and amqprs's writer queue to fill; well inside the
    // heartbeat timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.pause(false);
    // More publish calls while the sender task still works through the backlog: they must
    // queue behind it, not overtake it.
    let second_wave = publish_range(&publisher, &exchange, 20_000..EVENTS);
    let (mut confirmed, mut rejected) = (HashSet::new(), HashSet::new());
    for wave in [first_wave, second_wave] {
        let (c, r) = tokio::time::timeout(Duration::from_secs(90), wave)
            .await
            .expect("every publish settled")
            .expect("task");
        confirmed.extend(c);
        rejected.extend(r);
    }
    assert_eq!(confirmed.len() + rejected.len(), EVENTS as usize);
    assert_eq!(
        confirmed.len() as u64,
        ACCEPTED,
        "the queue took {ACCEPTED}"
    );
    for u in unroutable {
        let r = u.await.expect("task");
        assert!(
            matches!(r, Err(Error::Unroutable { .. })),
            "an unroutable message is reported to its caller, got {r:?}"
        );
    }

    let cancel = CancellationToken::new();
    let mut rx = consumer
        .consume(&queue, ConsumeOptions { prefetch: 500 }, cancel.clone())
        .await
        .expect("consume");
    let mut delivered = HashSet::new();
    loop {
        let wait = if delivered.len() < confirmed.len() {
            30_000
        } else {
            500
        };
        let Ok(next) = tokio::time::timeout(Duration::from_millis(wait), rx.recv()).await else {
            break;
        };
        let d = next.expect("stream open");
        let v: serde_json::Value = serde_json::from_slice(&d.envelope.body).expect("json");
        let n = v["n"].as_u64().expect("n") as u32;
        assert!(delivered.insert(n), "event {n} delivered twice");
        d.ack().await.expect("ack");
    }
    assert_eq!(
        delivered, confirmed,
        "exactly the confirmed events are in the queue"
    );
    cancel.cancel();
    let _ = publisher.close().await;
    let _ = consumer.close().await;
    common::delete_queue_set(&exchange, &queue).await;
}
