//! Each finding of the "secure by default" review, reproduced against a real server as the
//! attack was made (raw HTTP with the attacker's headers), and now refused.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request with exactly these headers (the test picks `Host` and `Origin`, as a
/// browser on an attacker's page would send them). Returns (status, head, body).
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = Vec::new();
    // An SSE stream that was let through never ends: read what comes within a second.
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut text)).await;
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn poison(shop: &Shop, orders: &[u64]) {
    let http = shop.http();
    for order in orders {
        let r = http
            .post(shop.url("/api/events/order.placed"))
            .json(&json!({"order": order, "poison": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    eventually(WAIT, "the dead letters", || async {
        (dead_letter_count(&http, shop).await == orders.len() as u64).then_some(())
    })
    .await;
}

/// Finding: with `Host: evil.example:PORT` and a matching `Origin` (a DNS-rebinding page),
/// purge and replay answered 200 and dead letters and the stream were readable.
#[tokio::test]
async fn dns_rebinding_is_refused_by_host() {
    let shop = Shop::start(None).await;
    poison(&shop, &[1, 2]).await;
    let evil_host = format!("evil.example:{}", shop.addr.port());
    let evil_origin = format!("http://{evil_host}");
    let bearer = format!("Bearer {}", shop.token);
    let dlq = format!("/api/dlq/{QUEUE}");
    for auth in [None, Some(bearer.as_str())] {
        let mut headers = vec![
            ("Host", evil_host.as_str()),
            ("Origin", evil_origin.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        for (method, path, body) in [
            ("POST", format!("{dlq}/purge"), r#"{"all": true}"#),
            ("POST", format!("{dlq}/replay"), r#"{"all": true}"#),
            ("GET", dlq.clone(), ""),
            ("GET", "/api/stream".to_string(), ""),
            ("GET", "/".to_string(), ""),
            (
                "POST",
                "/api/events/order.placed".to_string(),
                r#"{"order": 9}"#,
            ),
        ] {
            let (status, _, body) = raw(shop.addr, method, &path, &headers, body).await;
            assert_eq!(status, 421, "{method} {path} with {auth:?}: {body}");
            assert!(body.contains("--allow-host"), "{body}");
        }
    }
    assert_eq!(
        dead_letter_count(&shop.http(), &shop).await,
        2,
        "nothing purged or replayed"
    );
    assert!(!shop.handled().contains(&9));
    // The same requests naming the server by address or `localhost` pass the host check (and
    // then need the token).
    for host in [
        format!("127.0.0.1:{}", shop.addr.port()),
        format!("localhost:{}", shop.addr.port()),
    ] {
        let (status, _, _) = raw(shop.addr, "GET", &dlq, &[("Host", &host)], "").await;
        assert_eq!(status, 401, "{host}");
    }
    shop.stop().await;
}

#[tokio::test]
async fn configured_host_names_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = herald::Bus::builder()
        .service("svc")
        .broker(format!("sqlite://{}", dir.path().join("b.db").display()))
        .build()
        .await
        .unwrap();
    let mut config = herald_http::serve::ServeConfig::new("127.0.0.1:0".parse().unwrap());
    config.allowed_hosts = vec!["dash.example.com".into()];
    let server = herald_http::serve::Server::new(bus.clone(), config)
        .await
        .unwrap();
    let addr = server.local_addr();
    let bearer = format!("Bearer {}", server.token());
    let cancel = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server.serve(cancel.clone()));
    let (status, _, body) = raw(
        addr,
        "GET",
        "/api/info",
        &[("Host", "dash.example.com"), ("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Behind a proxy that rewrites Host, the browser's Origin is the configured name.
    let (status, _, body) = raw(
        addr,
        "POST",
        "/api/dlq/svc.x/purge",
        &[
            ("Host", &addr.to_string()),
            ("Origin", "https://dash.example.com"),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"all": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = raw(addr, "GET", "/", &[("Host", "other.example.com")], "").await;
    assert_eq!(status, 421);
    cancel.cancel();
    serving.await.unwrap().unwrap();
    bus.shutdown().await.unwrap();
}

/// Finding: `POST /api/events/<type>` ignored `Content-Type`, so an HTML form or a `text/plain`
/// fetch from any site published (201).
#[tokio::test]
async fn cross_site_publish_is_refused() {
    let shop = Shop::start(None).await;
    let port = shop.addr.port();
    let host = format!("127.0.0.1:{port}");
    let bearer = format!("Bearer {}", shop.token);
    let path = "/api/events/order.placed";
    // What a form or a "simple" fetch can send, even with the credential attached.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut headers = vec![("Host", host.as_str()), ("Authorization", bearer.as_str())];
        if let Some(c) = content_type {
            headers.push(("Content-Type", c));
        }
        let (status, _, body) = raw(shop.addr, "POST", path, &headers, r#"{"order": 31}"#).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
    }
    // Another site, or another port on this host (same site, so SameSite cookies would go).
    for origin in [
        "http://attacker.example".to_string(),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://localhost:{port}"),
        "null".to_string(),
    ] {
        let (status, _, body) = raw(
            shop.addr,
            "POST",
            path,
            &[
                ("Host", &host),
                ("Origin", &origin),
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            r#"{"order": 32}"#,
        )
        .await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains("cross-origin"), "{body}");
    }
    // The dashboard's own origin, JSON: accepted.
    let own = format!("http://{host}");
    let (status, _, body) = raw(
        shop.addr,
        "POST",
        path,
        &[
            ("Host", &host),
            ("Origin", &own),
            ("Authorization", &bearer),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        r#"{"order": 33}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eventually(WAIT, "order 33 handled", || async {
        shop.handled().contains(&33).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shop.handled(),
        vec![33],
        "only the JSON, same-origin publish"
    );
    shop.stop().await;
}

/// Finding: `POST /api/events/registered` was accepted because queue names were matched by
/// suffix (`...user.registered` ends in `.registered`); only the dashboard's observer got it.
#[tokio::test]
async fn routing_is_decided_by_binding_patterns() {
    let shop = Shop::start(None).await;
    let http = shop.http();
    let publish = |event: &str| {
        http.post(shop.url(&format!("/api/events/{event}")))
            .json(&json!({"x": 1}))
            .send()
    };
    // `billing.order.placed` ends in `.placed` and in `.order.placed`.
    for unbound in ["placed", "order.placed.v2", "billing"] {
        let r = publish(unbound).await.unwrap();
        assert_eq!(r.status().as_u16(), 409, "{unbound}");
    }
    // A wildcard subscriber in another process receives `order.cancelled`, whose name no queue
    // carries.
    let audit = herald::Bus::builder()
        .service("audit")
        .broker(shop.bus.config().broker.clone())
        .build()
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    audit
        .subscribe_pattern(
            "orders",
            "order.#",
            move |v: Value, ctx: herald::Context| {
                s.lock().unwrap().push(ctx.envelope().event_type.clone());
                let _ = v;
                async { Ok::<(), herald::HandlerError>(()) }
            },
            herald::SubscribeOptions::new(),
        )
        .unwrap();
    audit.start().await.unwrap();
    let r = publish("order.cancelled").await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    eventually(WAIT, "the audit queue got order.cancelled", || async {
        seen.lock()
            .unwrap()
            .contains(&"order.cancelled".to_string())
            .then_some(())
    })
    .await;
    audit.shutdown().await.unwrap();
    shop.stop().await;
}

/// Findings: no token on loopback; the token travelled in the SSE URL (and was not URL-decoded,
/// so `+ / =` broke the stream); the browser kept it in `localStorage`.
#[tokio::test]
async fn a_token_always_and_never_in_urls() {
    // No token configured: one is generated, and the API needs it.
    let shop = Shop::start(None).await;
    assert_eq!(shop.token.len(), 48);
    let plain = reqwest::Client::new();
    for path in ["/api/info", "/api/stream", "/api/dlq", "/metrics"] {
        let r = plain.get(shop.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = plain
        .get(shop.url(&format!("/api/stream?token={}", shop.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the URL does not carry the token");
    shop.stop().await;

    // A configured token with the characters that broke the stream, traded for a cookie.
    let token = "a+b/c=d%20e";
    let shop = Shop::start(Some(token)).await;
    let host = format!("127.0.0.1:{}", shop.addr.port());
    let own = format!("http://{host}");
    let login = |token: &str, content_type: &'static str, origin: String| {
        let body = json!({ "token": token }).to_string();
        let host = host.clone();
        async move {
            raw(
                shop.addr,
                "POST",
                "/api/session",
                &[
                    ("Host", &host),
                    ("Origin", &origin),
                    ("Content-Type", content_type),
                ],
                &body,
            )
            .await
        }
    };
    let (status, _, _) = login("a+b/c=d", "application/json", own.clone()).await;
    assert_eq!(status, 401, "a prefix of the token");
    let (status, _, _) = login(token, "text/plain", own.clone()).await;
    assert_eq!(status, 415, "a form cannot log in");
    let (status, _, _) = login(token, "application/json", "http://attacker.example".into()).await;
    assert_eq!(status, 403, "another site cannot log in");
    let (status, head, _) = login(token, "application/json", own.clone()).await;
    assert_eq!(status, 204, "{head}");
    let cookie_line = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(cookie_line.contains("httponly"), "{cookie_line}");
    assert!(cookie_line.contains("samesite=strict"), "{cookie_line}");
    assert!(!cookie_line.contains("a+b"), "the cookie is not the token");
    // The set-cookie line was lower-cased with the head; read the exact value again.
    let cookie = {
        let r = reqwest::Client::new()
            .post(shop.url("/api/session"))
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap();
        let v = r.headers()["set-cookie"].to_str().unwrap().to_string();
        v.split(';').next().unwrap().to_string()
    };
    let with_cookie = |path: &str| {
        reqwest::Client::new()
            .get(shop.url(path))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(with_cookie("/api/info").await.unwrap().status(), 200);
    let r = with_cookie("/api/stream").await.unwrap();
    assert_eq!(r.status(), 200, "EventSource sends the cookie");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(r);
    let r = reqwest::Client::new()
        .get(shop.url("/api/info"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the bearer token with + / = %");
    shop.stop().await;
}

/// Finding: no Content-Security-Policy, `X-Content-Type-Options` or frame protection.
#[tokio::test]
async fn security_headers_on_every_response() {
    let shop = Shop::start(None).await;
    let plain = reqwest::Client::new();
    let authed = shop.http();
    for (client, path, status) in [
        (&plain, "/", 200),
        (&plain, "/app.js", 200),
        (&plain, "/health/ready", 200),
        (&plain, "/api/info", 401),
        (&authed, "/api/info", 200),
        (&authed, "/api/nothing", 404),
    ] {
        let r = client.get(shop.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["cross-origin-resource-policy"], "same-origin", "{path}");
        if path.starts_with("/api") {
            assert_eq!(h["cache-control"], "no-store", "{path}");
        }
    }
    // The page itself has no inline script or style for the policy to refuse.
    let page = plain
        .get(shop.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    shop.stop().await;
}

/// A writer that keeps every log line the server writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// Finding: queue names from the URL path were logged raw: `%0d%0a` forged a log line.
#[tokio::test]
async fn queue_names_from_the_path_are_logged_escaped() {
    let logs = captured_logs();
    let shop = Shop::start(None).await;
    let http = shop.http();
    let forged = "billing.x%0d%0aFORGED%20level=ERROR%20admin%20logged%20in";
    for action in ["purge", "replay"] {
        let r = http
            .post(shop.url(&format!("/api/dlq/{forged}/{action}")))
            .json(&json!({"all": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{action}");
    }
    shop.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .filter(
                |l| l.contains("dead letters purged over HTTP") || l.contains("replayed over HTTP")
            )
            .all(|l| l.contains("billing.x\\r\\nFORGED")),
        "{text}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("FORGED")),
        "a forged line: {text}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("over HTTP") && l.contains("FORGED"))
            .count(),
        2,
        "{text}"
    );
}
