//! The dashboard in headless Chromium (Debian's `chromium` + `chromium-driver`, installed by
//! `scripts/services.sh`), driven over WebDriver: live events arrive on the page, a correlation
//! id click follows one flow, a dead letter is replayed by clicking its Replay button, and a
//! server with a token makes the page ask for it.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> &'static str {
    // Debian's /usr/bin/chromium is a wrapper script; the real binary is beside its libraries.
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium is not installed: run `bash scripts/services.sh` (apt-get install chromium chromium-driver)")
}

async fn start_driver() -> Driver {
    assert!(
        Path::new("/usr/bin/chromedriver").exists(),
        "chromedriver is not installed: run `bash scripts/services.sh` (apt-get install chromium-driver)"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    eventually(WAIT, "chromedriver listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    driver
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium_binary(), "args": args}),
    );
    // Two rustls providers are compiled in (reqwest's and amqprs's); pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

/// Evaluate a JS expression on the page.
async fn js(client: &Client, expr: &str) -> Value {
    client
        .execute(&format!("return {expr};"), vec![])
        .await
        .unwrap()
}

async fn page_until(client: &Client, what: &str, expr: &str) -> Value {
    eventually(WAIT, what, || async {
        let v = js(client, expr).await;
        (!v.is_null() && v != json!(false)).then_some(v)
    })
    .await
}

/// Click the element, retrying while the page re-renders it (it refreshes every 2 s).
async fn click(client: &Client, css: &str) {
    eventually(WAIT, &format!("a clickable {css}"), || async {
        match client.find(Locator::Css(css)).await {
            Ok(e) => e.click().await.ok(),
            Err(_) => None,
        }
    })
    .await
}

async fn publish(
    http: &reqwest::Client,
    shop: &Shop,
    order: u64,
    flow: &str,
    poison: bool,
) -> String {
    let r = http
        .post(shop.url(&format!("/api/events/order.placed?correlation_id={flow}")))
        .body(json!({"order": order, "poison": poison}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn row_ids_expr() -> &'static str {
    "Array.from(document.querySelectorAll('[data-testid=event-row]')).map(r => r.dataset.id)"
}

#[tokio::test]
async fn dashboard_shows_live_events_and_replays_a_dead_letter_by_click() {
    let shop = Shop::start(None).await;
    let http = reqwest::Client::new();
    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, profile.path()).await;
    scenario(&client, &shop, &http).await;
    shop.stop().await;
    // Same browser, a server with a token: the page asks for it.
    let guarded = Shop::start(Some("open-sesame")).await;
    token_prompt(&client, &guarded).await;
    client.close().await.unwrap();
    guarded.stop().await;
}

async fn token_prompt(client: &Client, shop: &Shop) {
    client.goto(&shop.base).await.unwrap();
    page_until(
        client,
        "the token prompt",
        "!document.getElementById('token-prompt').hidden",
    )
    .await;
    client
        .find(Locator::Id("token-input"))
        .await
        .unwrap()
        .send_keys("open-sesame")
        .await
        .unwrap();
    click(client, "#token-save").await;
    let info = page_until(
        client,
        "the API answering with the token",
        "(t => t.includes('sqlite') && t)(document.getElementById('info').textContent)",
    )
    .await;
    assert!(info.as_str().unwrap().contains("herald.events"), "{info}");
    assert_eq!(
        js(client, "localStorage.getItem('herald-token')").await,
        "open-sesame"
    );
    page_until(
        client,
        "the stream with ?token=",
        "document.getElementById('stream-status').textContent === 'live'",
    )
    .await;
}

async fn scenario(client: &Client, shop: &Shop, http: &reqwest::Client) {
    client
        .goto(&format!("{}/#events", shop.base))
        .await
        .unwrap();
    page_until(
        client,
        "the stream to connect",
        "document.getElementById('stream-status').textContent === 'live'",
    )
    .await;

    // Live events arrive, newest first.
    let a = publish(http, shop, 1, "flow-a", false).await;
    let b = publish(http, shop, 2, "flow-b", false).await;
    let ids = page_until(
        client,
        "both events on the page",
        &format!(
            "(ids => ids.includes('{a}') && ids.includes('{b}') && ids)({})",
            row_ids_expr()
        ),
    )
    .await;
    let ids: Vec<String> = serde_json::from_value(ids).unwrap();
    assert!(
        ids.iter().position(|i| *i == b) < ids.iter().position(|i| *i == a),
        "newest first: {ids:?}"
    );

    // Clicking a correlation id follows that flow only.
    click(client, &format!("tr[data-id='{b}'] a.corr")).await;
    assert_eq!(
        js(
            client,
            "document.getElementById('filter-correlation').value"
        )
        .await,
        "flow-b"
    );
    page_until(
        client,
        "the filtered stream to connect",
        "document.getElementById('stream-status').textContent === 'live'",
    )
    .await;
    let other = publish(http, shop, 3, "flow-a", false).await;
    let same = publish(http, shop, 4, "flow-b", false).await;
    page_until(
        client,
        "the flow-b event",
        &format!("{}.includes('{same}')", row_ids_expr()),
    )
    .await;
    let ids: Vec<String> = serde_json::from_value(js(client, row_ids_expr()).await).unwrap();
    assert!(!ids.contains(&other), "flow-a filtered out: {ids:?}");
    click(client, "#filter-clear").await;

    // A poison order dead-letters; the dead-letter browser shows it; Replay by click.
    let poison = publish(http, shop, 99, "flow-p", true).await;
    eventually(WAIT, "the dead letter", || async {
        (dead_letter_count(http, shop).await == 1).then_some(())
    })
    .await;
    click(client, "#tab-dlq").await;
    click(
        client,
        &format!("tr[data-testid=dlq-queue][data-queue='{QUEUE}']"),
    )
    .await;
    let error = page_until(
        client,
        "the dead letter's row",
        &format!("(r => r && r.querySelector('[data-testid=dlq-error]').textContent)(document.querySelector(\"tr[data-testid=dlq-row][data-id='{poison}']\"))"),
    )
    .await;
    assert!(
        error.as_str().unwrap().contains("order 99 is poison"),
        "{error}"
    );

    shop.cure.store(true, Ordering::SeqCst);
    click(
        client,
        &format!("button[data-testid=replay][data-id='{poison}']"),
    )
    .await;
    page_until(
        client,
        "the replay confirmation",
        "document.getElementById('dlq-message').textContent === 'replayed 1'",
    )
    .await;
    page_until(
        client,
        "the row to disappear",
        &format!(
            "document.querySelector(\"tr[data-testid=dlq-row][data-id='{poison}']\") === null"
        ),
    )
    .await;
    assert_eq!(
        dead_letter_count(http, shop).await,
        0,
        "gone from the API too"
    );
    eventually(WAIT, "the handler to get the replayed order", || async {
        shop.handled().contains(&99).then_some(())
    })
    .await;
}
