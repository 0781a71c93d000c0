//! A Python client (pika + cryptography's AESGCM, `tests/interop/aes_peer.py`, the example of
//! `docs/wire-format.md`) decrypts what Herald encrypted on RabbitMQ, and Herald decrypts what
//! it encrypted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::middleware::RetryPolicy;
use herald::{Bus, Context, SubscribeOptions};
use herald_crypto::{EncryptingTransport, Keyring};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, herald::Event)]
#[event(name = "card.charged")]
struct CardCharged {
    n: u64,
    card: String,
}

fn peer() -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aes_peer.py");
    let mut c = Command::new("python3");
    c.arg(script);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_herald_read_each_others_encrypted_events() {
    herald_rabbitmq::register();
    let service = format!(
        "crypto-py-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let exchange = format!("{service}.ex");
    let hex = "5e".repeat(32);
    let key_spec = format!("py-k1={hex}");
    let keys = Keyring::parse(&key_spec).unwrap();
    let raw = herald::transport::connect("amqp://guest:guest@127.0.0.1:5672/%2f", &service)
        .await
        .unwrap();
    let bus = Bus::builder()
        .service(&service)
        .exchange(&exchange)
        .transport(Arc::new(EncryptingTransport::new(raw, keys)))
        .build()
        .await
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    bus.subscribe_with(
        move |e: CardCharged, _ctx: Context| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(e);
                Ok::<(), herald::HandlerError>(())
            }
        },
        SubscribeOptions::new().retry(RetryPolicy::none()),
    )
    .unwrap();
    bus.start().await.unwrap();

    // Herald → Python.
    let mut consumer = peer()
        .args(["consume", &exchange, "card.charged", &key_spec])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/services.sh installs pika and cryptography)");
    let mut lines = BufReader::new(consumer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    let sent = CardCharged {
        n: 1,
        card: "4111".into(),
    };
    bus.publish(&sent).await.unwrap();
    let decrypted = lines.next().expect("a decrypted line").unwrap();
    let parsed: CardCharged = serde_json::from_str(&decrypted).unwrap();
    assert_eq!(parsed, sent);
    assert!(consumer.wait().unwrap().success());

    // Python → Herald.
    let out = peer()
        .args([
            "publish",
            &exchange,
            "card.charged",
            &key_spec,
            r#"{"n": 2, "card": "5500"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while !got.lock().unwrap().iter().any(|e| e.n == 2) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Herald did not get Python's event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.lock().unwrap()[1].card, "5500");
    bus.shutdown().await.unwrap();
    let listed = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "--no-table-headers", "name"])
        .output()
        .unwrap();
    for q in String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|q| q.starts_with(&service))
    {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", q])
            .output();
    }
}
