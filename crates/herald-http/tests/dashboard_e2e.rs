//! The dashboard in headless Chromium (Debian's `chromium` + `chromium-driver`, installed by
//! `scripts/services.sh`), driven over WebDriver: the printed login link signs the browser in
//! (and leaves the address bar), live events arrive on the page, a correlation id click follows
//! one flow, a dead letter is replayed by clicking its Replay button, Purge and Replay all ask
//! first, a server with a configured token makes the page ask for it; and the attacks of the
//! security review, made from real pages in the same browser (a DNS-rebinding name, a form and
//! a `fetch` on another site and on another port of this host), all fail.

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
        // Names an attacker controls, resolved to this machine: the state after a DNS rebinding.
        "--host-resolver-rules=MAP evil.example 127.0.0.1, MAP attacker.example 127.0.0.1",
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
    // The test answers confirm() dialogs itself.
    caps.insert("unhandledPromptBehavior".into(), json!("ignore"));
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
        .json(&json!({"order": order, "poison": poison}))
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
    let http = shop.http();
    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, profile.path()).await;
    login_link(&client, &shop).await;
    scenario(&client, &shop, &http).await;
    confirmations(&client, &shop, &http).await;
    attacks(&client, &shop, &http).await;
    shop.stop().await;
    // Same browser, a server with a token: the page asks for it.
    let guarded = Shop::start(Some("open-sesame")).await;
    token_prompt(&client, &guarded).await;
    guarded.stop().await;
    // A broker URL with a password: the page's header shows it redacted.
    let secret = Shop::start_on(
        "memory://alice:Lf7k/?,#@%Rg9w@e2e-secret",
        "billing",
        None,
        None,
        tempfile::tempdir().unwrap(),
    )
    .await;
    client
        .goto(&format!("{}/#token={}", secret.base, secret.token))
        .await
        .unwrap();
    let info = page_until(
        &client,
        "the header with the broker",
        "(t => t.includes('memory') && t)(document.getElementById('info').textContent)",
    )
    .await;
    let info = info.as_str().unwrap();
    assert!(info.contains("memory://alice:***@e2e-secret"), "{info}");
    assert!(!info.contains("Lf7k") && !info.contains("Rg9w"), "{info}");
    client.close().await.unwrap();
    secret.stop().await;
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
        .send_keys("open-sesam")
        .await
        .unwrap();
    click(client, "#token-save").await;
    page_until(
        client,
        "a wrong token refused",
        "document.getElementById('token-error').textContent.includes('refused')",
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
    page_until(
        client,
        "the stream, on the session cookie",
        "document.getElementById('stream-status').textContent === 'live'",
    )
    .await;
    assert_no_token_in_page(client, "open-sesame").await;
}

/// The page's scripts cannot read the token or the cookie, and the address bar shows neither.
async fn assert_no_token_in_page(client: &Client, token: &str) {
    let seen = js(
        client,
        "[document.cookie, window.location.href, JSON.stringify(Object.assign({}, localStorage))].join(' ')",
    )
    .await;
    let seen = seen.as_str().unwrap();
    assert!(!seen.contains(token), "{seen}");
    assert!(!seen.contains("herald_session"), "HttpOnly: {seen}");
}

/// `herald serve` prints `http://ADDR/#token=...`: opening it signs the browser in.
async fn login_link(client: &Client, shop: &Shop) {
    client
        .goto(&format!("{}/#token={}", shop.base, shop.token))
        .await
        .unwrap();
    page_until(
        client,
        "the API answering after the login link",
        "(t => t.includes('sqlite') && t)(document.getElementById('info').textContent)",
    )
    .await;
    assert_eq!(
        js(client, "window.location.hash").await,
        "",
        "the token left the address bar"
    );
    assert!(js(client, "document.getElementById('token-prompt').hidden").await == json!(true));
    assert_no_token_in_page(client, &shop.token).await;
}

async fn scenario(client: &Client, shop: &Shop, http: &reqwest::Client) {
    client
        .goto(&format!("{}/#events", shop.base))
        .await
        .unwrap();
    // Under the Content-Security-Policy (no inline styles), the charts still draw their legend.
    click(client, "#tab-rates").await;
    page_until(
        client,
        "a legend colour set through the CSSOM",
        "(i => i && i.style.background !== '')(document.querySelector('#chart-rates .legend i'))",
    )
    .await;
    click(client, "#tab-events").await;
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

/// The open alert's text, once it is there.
async fn alert_text(client: &Client) -> String {
    eventually(WAIT, "a confirm() dialog", || async {
        client.get_alert_text().await.ok()
    })
    .await
}

/// Per-row Purge and "Replay all" ask first; cancelling leaves the dead letter alone.
async fn confirmations(client: &Client, shop: &Shop, http: &reqwest::Client) {
    shop.cure.store(false, Ordering::SeqCst);
    let poison = publish(http, shop, 98, "flow-q", true).await;
    eventually(WAIT, "the dead letter", || async {
        (dead_letter_count(http, shop).await == 1).then_some(())
    })
    .await;
    shop.cure.store(true, Ordering::SeqCst);
    client.refresh().await.unwrap();
    click(client, "#tab-dlq").await;
    click(
        client,
        &format!("tr[data-testid=dlq-queue][data-queue='{QUEUE}']"),
    )
    .await;
    let purge = format!("button[data-testid=purge][data-id='{poison}']");
    click(client, &purge).await;
    let question = alert_text(client).await;
    assert!(
        question.contains("Delete dead letter") && question.contains(&poison),
        "{question}"
    );
    client.dismiss_alert().await.unwrap();
    page_until(
        client,
        "the cancelled purge",
        "document.getElementById('dlq-message').textContent === 'purge cancelled'",
    )
    .await;
    click(client, "#dlq-replay-all").await;
    let question = alert_text(client).await;
    assert!(question.contains("Replay every dead letter"), "{question}");
    client.dismiss_alert().await.unwrap();
    page_until(
        client,
        "the cancelled replay",
        "document.getElementById('dlq-message').textContent === 'replay cancelled'",
    )
    .await;
    assert_eq!(dead_letter_count(http, shop).await, 1, "nothing happened");

    click(client, &purge).await;
    alert_text(client).await;
    client.accept_alert().await.unwrap();
    page_until(
        client,
        "the purge",
        "document.getElementById('dlq-message').textContent === 'purged 1'",
    )
    .await;
    assert_eq!(dead_letter_count(http, shop).await, 0);
    assert!(!shop.handled().contains(&98), "purged, never handled");
}

/// A page of the attacker's, served from this machine.
async fn attacker_site() -> (u16, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>attacker</title><p>attacker</p>")
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    (port, stop)
}

/// The review's attacks, from real pages in the browser that is signed in to the dashboard.
async fn attacks(client: &Client, shop: &Shop, http: &reqwest::Client) {
    shop.cure.store(false, Ordering::SeqCst);
    publish(http, shop, 201, "flow-x", true).await;
    publish(http, shop, 202, "flow-x", true).await;
    eventually(WAIT, "two dead letters", || async {
        (dead_letter_count(http, shop).await == 2).then_some(())
    })
    .await;
    let port = shop.addr.port();
    let purge = |base: &str| {
        format!(
            "fetch('{base}/api/dlq/{QUEUE}/purge', {{method: 'POST', credentials: 'include', \
             headers: {{'Content-Type': 'application/json'}}, body: '{{\"all\": true}}'}})\
             .then(r => 'status ' + r.status, e => 'blocked')"
        )
    };

    // DNS rebinding: the attacker's name now resolves to 127.0.0.1, so its page is same-origin
    // with the dashboard's port.
    client
        .goto(&format!("http://evil.example:{port}/"))
        .await
        .unwrap();
    let body = js(client, "document.body.innerText").await;
    assert!(body.as_str().unwrap().contains("--allow-host"), "{body}");
    assert_eq!(js(client, &purge("")).await, "status 421");
    assert_eq!(
        js(
            client,
            &format!("fetch('/api/dlq/{QUEUE}').then(r => r.status)")
        )
        .await,
        421,
        "dead letters unreadable"
    );

    let (attacker_port, stop) = attacker_site().await;
    let dashboard = format!("http://127.0.0.1:{port}");
    // Another port of this host: same site, so the SameSite cookie goes along; the Origin
    // check and the JSON-only rule stop it.
    client
        .goto(&format!("http://127.0.0.1:{attacker_port}/"))
        .await
        .unwrap();
    assert_eq!(
        js(client, &purge(&dashboard)).await,
        "blocked",
        "no CORS preflight is granted"
    );
    let simple = format!(
        "Promise.all([\
           fetch('{dashboard}/api/dlq/{QUEUE}/purge', {{method: 'POST', mode: 'no-cors', credentials: 'include', headers: {{'Content-Type': 'text/plain'}}, body: '{{\"all\": true}}'}}),\
           fetch('{dashboard}/api/events/order.placed', {{method: 'POST', mode: 'no-cors', credentials: 'include', headers: {{'Content-Type': 'text/plain'}}, body: '{{\"order\": 302}}'}})\
         ]).then(() => 'answered', e => 'response withheld')"
    );
    // The requests go out (Cross-Origin-Resource-Policy withholds the answers from the page);
    // what the server did is checked below.
    let outcome = js(client, &simple).await;
    assert!(
        outcome == "answered" || outcome == "response withheld",
        "{outcome}"
    );

    // Another site: a plain HTML form posting JSON-looking text/plain.
    client
        .goto(&format!("http://attacker.example:{attacker_port}/"))
        .await
        .unwrap();
    let form = format!(
        "(() => {{ const f = document.createElement('form'); f.method = 'POST'; \
           f.action = '{dashboard}/api/events/order.placed'; f.enctype = 'text/plain'; \
           const i = document.createElement('input'); i.name = '{{\"order\": 301, \"x\": \"'; i.value = '\"}}'; \
           f.append(i); document.body.append(f); f.submit(); return true; }})()"
    );
    js(client, &form).await;
    let refused = page_until(
        client,
        "the form's answer",
        "(t => t.includes('error') && t)(document.body.innerText)",
    )
    .await;
    assert!(
        refused.as_str().unwrap().contains("cross-origin"),
        "{refused}"
    );
    stop.cancel();

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dead_letter_count(http, shop).await,
        2,
        "no attack purged or replayed a dead letter"
    );
    let handled = shop.handled();
    assert!(
        !handled.contains(&301) && !handled.contains(&302),
        "no attack published: {handled:?}"
    );
}
