//! A shop for the server tests: a bus on a temporary SQLite broker whose `billing` service
//! handles `order.placed`, failing orders marked poison (they dead-letter) until told to accept
//! them; the server in-process on 127.0.0.1:0.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::middleware::RetryPolicy;
use herald::{Bus, Context, HandlerError, SubscribeOptions};
use herald_http::serve::{ServeConfig, Server};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, herald::Event)]
#[event(name = "order.placed")]
pub struct OrderPlaced {
    pub order: u64,
    #[serde(default)]
    pub poison: bool,
}

pub const QUEUE: &str = "billing.order.placed";

pub fn catalog() -> serde_json::Value {
    serde_json::json!({"exchange": "herald.events", "events": [{
        "name": "order.placed", "version": 1, "routing_key": "order.placed",
        "type_name": "OrderPlaced", "description": "An order was placed.",
        "publishers": ["shop"],
        "consumers": [{"service": "billing", "queue": QUEUE}],
        "schema": {"type": "object", "required": ["order"],
                   "properties": {"order": {"type": "integer"}, "poison": {"type": "boolean"}}},
        "example": {"order": 1}
    }]})
}

pub struct Shop {
    pub bus: Bus,
    /// The billing service's work queue.
    pub queue: String,
    pub base: String,
    pub addr: std::net::SocketAddr,
    /// The server's token (the one given, or the one it generated).
    pub token: String,
    /// Order numbers the handler accepted.
    pub handled: Arc<Mutex<Vec<u64>>>,
    /// When set, poison orders are accepted too.
    pub cure: Arc<AtomicBool>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Shop {
    /// On a fresh SQLite broker, with the catalog.
    pub async fn start(token: Option<&str>) -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let broker = format!("sqlite://{}", dir.path().join("broker.db").display());
        Shop::start_on(&broker, "billing", token, Some(catalog()), dir).await
    }

    /// On any broker, as `service`.
    pub async fn start_on(
        broker: &str,
        service: &str,
        token: Option<&str>,
        catalog: Option<serde_json::Value>,
        dir: tempfile::TempDir,
    ) -> Shop {
        let bus = Bus::builder()
            .service(service)
            .broker(broker)
            .max_message_bytes(16 * 1024)
            .build()
            .await
            .unwrap();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let cure = Arc::new(AtomicBool::new(false));
        let (h, c) = (handled.clone(), cure.clone());
        bus.subscribe_with(
            move |e: OrderPlaced, _ctx: Context| {
                let (h, c) = (h.clone(), c.clone());
                async move {
                    if e.poison && !c.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent(format!(
                            "order {} is poison",
                            e.order
                        )));
                    }
                    h.lock().unwrap().push(e.order);
                    Ok(())
                }
            },
            SubscribeOptions::new().retry(RetryPolicy::none()),
        )
        .unwrap();
        bus.start().await.unwrap();
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap());
        config.token = token.map(String::from);
        config.catalog = catalog;
        let server = Server::new(bus.clone(), config).await.unwrap();
        let addr = server.local_addr();
        let token = server.token().to_string();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tokio::spawn(async move { server.serve(stop).await.unwrap() });
        Shop {
            bus,
            queue: format!("{service}.order.placed"),
            base: format!("http://{addr}"),
            addr,
            token,
            handled,
            cure,
            cancel,
            server,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A client that sends the token with every request, as a program would.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    pub fn handled(&self) -> Vec<u64> {
        self.handled.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stops within 10 s")
            .unwrap();
        self.bus.shutdown().await.unwrap();
    }
}

/// Poll `f` until it returns Some, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dead letters on the shop's queue, via the API.
pub async fn dead_letter_count(http: &reqwest::Client, shop: &Shop) -> u64 {
    let list: serde_json::Value = http
        .get(shop.url("/api/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == shop.queue.as_str())
        .and_then(|q| q["dead_letters"].as_u64())
        .unwrap_or(0)
}
