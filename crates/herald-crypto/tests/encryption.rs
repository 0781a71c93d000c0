//! Payload encryption end to end: bodies at rest are ciphertext, keys rotate, and a delivery
//! that cannot be decrypted (a key the consumer lacks, a wrong key, a plaintext body) ends in
//! the dead letters with the reason, and is replayed once the key is there. On SQLite and on
//! RabbitMQ (the retry queue round trip keeps the encryption headers).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::middleware::RetryPolicy;
use herald::transport::{dead_letter_admin, ConsumeOptions, PublishOptions};
use herald::{Bus, Context, Envelope, HandlerError, SubscribeOptions, Transport};
use herald_crypto::{EncryptingTransport, Key, Keyring, ENCRYPTION_HEADER, KEY_ID_HEADER};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "card.charged")]
struct CardCharged {
    n: u64,
    card: String,
}

const CARD: &str = "4111-1111-1111-1111";
const WAIT: Duration = Duration::from_secs(15);

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn encrypted(inner: &Arc<dyn Transport>, keys: &Keyring) -> Arc<dyn Transport> {
    Arc::new(EncryptingTransport::new(inner.clone(), keys.clone()))
}

/// A handle of its own on the broker (a bus closes its transport when it shuts down).
async fn open(url: &str) -> Arc<dyn Transport> {
    herald::transport::connect(url, "test").await.unwrap()
}

/// A `payments` consumer of `card.charged` on `transport`, recording the `n` it handled;
/// orders in `fail` fail permanently.
async fn consumer(
    transport: Arc<dyn Transport>,
    handled: Arc<Mutex<Vec<u64>>>,
    fail: &'static [u64],
) -> Bus {
    let bus = Bus::builder()
        .service("payments")
        .transport(transport)
        .build()
        .await
        .unwrap();
    bus.subscribe_with(
        move |e: CardCharged, _ctx: Context| {
            let handled = handled.clone();
            async move {
                assert_eq!(e.card, CARD);
                if fail.contains(&e.n) {
                    return Err(HandlerError::permanent(format!("charge {} declined", e.n)));
                }
                handled.lock().unwrap().push(e.n);
                Ok(())
            }
        },
        SubscribeOptions::new().retry(RetryPolicy::none()),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus
}

async fn publisher(transport: Arc<dyn Transport>) -> Bus {
    Bus::builder()
        .service("checkout")
        .transport(transport)
        .build()
        .await
        .unwrap()
}

fn charge(n: u64) -> CardCharged {
    CardCharged {
        n,
        card: CARD.into(),
    }
}

async fn dead_letters(t: &dyn Transport, queue: &str) -> Vec<Envelope> {
    dead_letter_admin(t)
        .unwrap()
        .dead_letters(queue, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.envelope)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_at_rest_rotation_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let url = format!("sqlite://{}", db.display());
    let raw = herald::transport::connect(&url, "test").await.unwrap();
    let queue = "payments.card.charged";
    let k1 = Key::generate();
    let old = Keyring::new("k1", k1.clone()).unwrap();
    let rotated = Keyring::new("k2", Key::generate())
        .unwrap()
        .with_old("k1", k1.clone())
        .unwrap();

    // The consumer has rotated to k2 and keeps k1; a publisher still on k1 and one on k2.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let payments = consumer(
        encrypted(&open(&url).await, &rotated),
        handled.clone(),
        &[3],
    )
    .await;
    let on_k1 = publisher(encrypted(&open(&url).await, &old)).await;
    let on_k2 = publisher(encrypted(&open(&url).await, &rotated)).await;
    on_k1.publish(&charge(1)).await.unwrap();
    on_k2.publish(&charge(2)).await.unwrap();
    // A declined charge: dead-lettered after decryption, stored encrypted.
    on_k2.publish(&charge(3)).await.unwrap();
    eventually("1 and 2 handled, 3 dead-lettered", || async {
        let done = handled.lock().unwrap().len() == 2;
        (done && dead_letters(&*raw, queue).await.len() == 1).then_some(())
    })
    .await;
    let stored = &dead_letters(&*raw, queue).await[0];
    assert_eq!(stored.headers[KEY_ID_HEADER], "k2");
    assert!(!String::from_utf8_lossy(&stored.body).contains(CARD));
    assert_eq!(stored.headers["herald_error_kind"], "permanent");
    // Listed through the encrypting transport, the dead letter reads in clear.
    let listed = dead_letters(&*encrypted(&raw, &rotated), queue).await;
    assert!(String::from_utf8_lossy(&listed[0].body).contains(CARD));
    // Only encrypted bodies were written so far: the database file, WAL included, never held
    // the card number in clear.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(CARD.len()).any(|w| w == CARD.as_bytes()),
            "{} holds the card number in clear",
            path.display()
        );
    }

    // A consumer left on k1 only: a k2 message is dead-lettered, kind `decrypt`, with the key
    // it lacks, and never reaches the handler.
    payments.shutdown().await.unwrap();
    let stale = Arc::new(Mutex::new(Vec::new()));
    let behind = consumer(encrypted(&open(&url).await, &old), stale.clone(), &[]).await;
    let purged = dead_letter_admin(&*raw)
        .unwrap()
        .purge_dead_letters(queue, None)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    on_k2.publish(&charge(4)).await.unwrap();
    on_k1.publish(&charge(5)).await.unwrap();
    let dead = eventually("4 dead-lettered", || async {
        let d = dead_letters(&*raw, queue).await;
        (d.len() == 1).then_some(d)
    })
    .await;
    let reason = &dead[0].headers["herald_error"];
    assert_eq!(dead[0].headers["herald_error_kind"], "decrypt");
    assert!(
        reason.contains("key `k2`") && reason.contains("does not have (it has k1)"),
        "{reason}"
    );
    eventually("5 handled", || async {
        stale.lock().unwrap().contains(&5).then_some(())
    })
    .await;
    assert_eq!(
        *stale.lock().unwrap(),
        vec![5],
        "4 never reached the handler"
    );
    behind.shutdown().await.unwrap();

    // With the key added, replaying the dead letter delivers it.
    let fixed = Arc::new(Mutex::new(Vec::new()));
    let payments = consumer(encrypted(&open(&url).await, &rotated), fixed.clone(), &[]).await;
    let replayed = dead_letter_admin(&*encrypted(&raw, &rotated))
        .unwrap()
        .replay_dead_letters(queue, None)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    eventually("4 handled after the replay", || async {
        fixed.lock().unwrap().contains(&4).then_some(())
    })
    .await;

    // A wrong key under the right id, and a plaintext publisher: both dead-lettered.
    let impostor = Keyring::new("k2", Key::generate()).unwrap();
    publisher(encrypted(&open(&url).await, &impostor))
        .await
        .publish(&charge(6))
        .await
        .unwrap();
    publisher(open(&url).await)
        .await
        .publish(&charge(7))
        .await
        .unwrap();
    let dead = eventually("6 and 7 dead-lettered", || async {
        let d = dead_letters(&*raw, queue).await;
        (d.len() == 2).then_some(d)
    })
    .await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|e| e.headers["herald_error"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("authentication failed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not encrypted")),
        "{reasons:?}"
    );
    assert!(!fixed.lock().unwrap().contains(&6) && !fixed.lock().unwrap().contains(&7));
    payments.shutdown().await.unwrap();

    // accept_plaintext() takes unencrypted bodies (a rollout).
    let lenient = Arc::new(Mutex::new(Vec::new()));
    let t: Arc<dyn Transport> =
        Arc::new(EncryptingTransport::new(open(&url).await, rotated.clone()).accept_plaintext());
    let bus = consumer(t, lenient.clone(), &[]).await;
    publisher(open(&url).await)
        .await
        .publish(&charge(8))
        .await
        .unwrap();
    eventually("8 handled in clear", || async {
        lenient.lock().unwrap().contains(&8).then_some(())
    })
    .await;
    bus.shutdown().await.unwrap();

    raw.close().await.unwrap();
}

/// Wire level: what the encrypting transport hands the broker, read back by a plain consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_sees_ciphertext_and_headers() {
    let raw = herald::transport::connect("memory://crypto-wire", "t")
        .await
        .unwrap();
    let keys = Keyring::new("k9", Key::generate()).unwrap();
    let topology = herald::Topology {
        exchange: "ex".into(),
        queues: vec![herald::QueueSpec::new("q", "card.charged")],
    };
    raw.apply_topology(&topology).await.unwrap();
    let e = Envelope::for_event(&charge(1), "checkout").unwrap();
    let id = e.id.clone();
    encrypted(&raw, &keys)
        .publish("ex", &[e], PublishOptions::default())
        .await
        .unwrap();
    let spec = &topology.queues[0];
    let mut plain = raw
        .consume(spec, ConsumeOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    let d = plain.recv().await.unwrap();
    assert_eq!(d.envelope.id, id);
    assert_eq!(
        d.envelope.event_type, "card.charged",
        "attributes stay readable"
    );
    assert_eq!(d.envelope.headers[ENCRYPTION_HEADER], "aes-256-gcm");
    assert_eq!(d.envelope.headers[KEY_ID_HEADER], "k9");
    assert!(!String::from_utf8_lossy(&d.envelope.body).contains(CARD));
    assert_eq!(
        d.envelope.body.len(),
        12 + serde_json::to_vec(&charge(1)).unwrap().len() + 16
    );
    d.ack().await.unwrap();
}

/// On RabbitMQ: a failed first attempt goes through the retry queue (a copy published by the
/// transport) and comes back still decryptable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_retry_keeps_the_encryption() {
    herald_rabbitmq::register();
    let service = format!("crypto-{}-{:08x}", std::process::id(), rand_suffix());
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let raw = herald::transport::connect(url, &service).await.unwrap();
    let keys = Keyring::new("k1", Key::generate()).unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .service(&service)
        .exchange(format!("{service}.ex"))
        .transport(encrypted(&raw, &keys))
        .build()
        .await
        .unwrap();
    let a = attempts.clone();
    bus.subscribe_with(
        move |e: CardCharged, ctx: Context| {
            let a = a.clone();
            async move {
                assert_eq!(e.card, CARD);
                a.lock().unwrap().push(ctx.attempt());
                if ctx.attempt() == 1 {
                    return Err(HandlerError::transient("try again"));
                }
                Ok(())
            }
        },
        SubscribeOptions::new().retry(RetryPolicy::exponential(3, Duration::from_millis(100))),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus.publish(&charge(1)).await.unwrap();
    eventually("the second attempt", || async {
        attempts.lock().unwrap().contains(&2).then_some(())
    })
    .await;
    bus.shutdown().await.unwrap();
    // Remove this run's queues (work, dead letters, retry levels) from the shared broker.
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "--no-table-headers", "name"])
        .output()
        .unwrap();
    for q in String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|q| q.starts_with(&service))
    {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", q])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
