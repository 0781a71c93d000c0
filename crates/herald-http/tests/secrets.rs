//! Broker passwords never leak: passwords holding `/ ? , # @ %` (raw, as people type them, and
//! percent-encoded, as URLs want them) go through every path that prints a broker URL (URL
//! checks, connection errors from a closed port and from a broker that refuses the login, the
//! bus builder, `herald.toml` validation, the logs of all of it, `/api/info` (what the
//! dashboard shows), and `/metrics`), and no part of any password comes out.
//! The `herald` binary's own errors are tested in `herald-cli/tests/secrets.rs`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_rabbitmq::{RabbitConfig, RabbitTransport};

/// The two halves of every password: each must stay hidden, whichever side of a special
/// character a broken parser would cut at.
const LEFT: &str = "Lf7kqz";
const RIGHT: &str = "Rg9wvx";

/// Passwords with each character that broke redaction, and all of them at once.
fn passwords() -> Vec<String> {
    ["/", "?", ",", "#", "@", "%", "%40", "/?,#@%", ":"]
        .iter()
        .map(|c| format!("{LEFT}{c}{RIGHT}"))
        .collect()
}

fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Broker URLs naming `password` in every shape: single, cluster list, TLS, no scheme, an
/// unknown scheme, raw and encoded. `port` is where they point.
fn urls(password: &str, port: u16) -> Vec<String> {
    let enc = percent_encoded(password);
    let mut urls = vec![
        format!("amqp://alice:{password}@127.0.0.1:{port}/%2f"),
        format!("amqp://alice:{enc}@127.0.0.1:{port}/%2f"),
        format!(
            "amqp://alice:{password}@127.0.0.1:{port}/%2f,amqp://bob:{password}@127.0.0.1:{port}"
        ),
        format!("amqps://alice:{password}@127.0.0.1:{port}/%2f?cacertfile=/nonexistent"),
        format!("alice:{password}@127.0.0.1:{port}"),
        format!("kafka://alice:{password}@127.0.0.1:{port}"),
    ];
    // A lone token (no user name); with a `:` it would read as `user:password`.
    if !password.contains(':') {
        urls.push(format!("amqp://{password}@127.0.0.1:{port}/%2f"));
    }
    urls
}

fn assert_hidden(what: &str, text: &str) {
    assert!(
        !text.contains(LEFT) && !text.contains(RIGHT),
        "a password leaked through {what}: {text}"
    );
}

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

#[tokio::test]
async fn no_path_prints_a_password() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let prometheus = herald_http::metrics::install_prometheus().unwrap();
    herald_rabbitmq::register();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut checked = 0;
    for password in passwords() {
        for url in urls(&password, closed)
            .into_iter()
            .chain(urls(&password, 5672))
        {
            // The URL check (what `herald.toml`, `--broker` and the builder run first).
            if let Err(e) = herald::transport::check_url(&url) {
                assert_hidden("check_url", &format!("{e} {e:?}"));
            }
            let toml = format!("broker = {:?}\n", url);
            match herald::Config::from_toml(&toml) {
                Ok(c) => {
                    assert_hidden("broker_redacted", &c.broker_redacted());
                    if let Err(e) = c.validate() {
                        assert_hidden("Config::validate", &format!("{e} {e:?}"));
                    }
                }
                Err(e) => assert_hidden("Config::from_toml", &format!("{e} {e:?}")),
            }
            // Connecting: a closed port, or the shared broker refusing an unknown user.
            if url.starts_with("amqp") {
                if let Ok(mut config) = RabbitConfig::from_url(&url, "secrets") {
                    config.outage_timeout = Duration::from_millis(300);
                    match RabbitTransport::connect(config).await {
                        Ok(_) => panic!("alice has no account on the broker"),
                        Err(e) => assert_hidden("RabbitTransport::connect", &format!("{e} {e:?}")),
                    }
                    checked += 1;
                }
            }
            // The builder, for URLs it refuses before connecting (connecting is the transport's
            // path above, which would wait out the default 30 s outage timeout here).
            if herald::transport::check_url(&url).is_err() {
                let built = herald::Bus::builder()
                    .service("secrets")
                    .broker(url.clone())
                    .build()
                    .await;
                let e = built.err().expect("refused");
                assert_hidden("Bus::build", &format!("{e} {e:?}"));
            }
        }
    }
    assert!(checked >= 20, "the connection paths ran ({checked})");

    // `/api/info` (the dashboard's header shows its `broker`) and `/metrics`, for a bus whose
    // URL holds a password (the memory transport takes any name).
    for password in passwords() {
        let url = format!(
            "memory://alice:{password}@secrets-{}",
            rand::random::<u32>()
        );
        let bus = herald::Bus::builder()
            .service("secrets")
            .broker(url)
            .build()
            .await
            .unwrap();
        let mut config = herald_http::serve::ServeConfig::new("127.0.0.1:0".parse().unwrap());
        config.extra = herald_http::metrics::router(prometheus.clone());
        let server = herald_http::serve::Server::new(bus.clone(), config)
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let token = server.token().to_string();
        let cancel = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn(server.serve(cancel.clone()));
        let http = reqwest::Client::new();
        for path in ["/api/info", "/metrics", "/api/topology", "/health/ready"] {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            let body = r.text().await.unwrap();
            assert_hidden(path, &body);
            if path == "/api/info" {
                assert!(body.contains("memory://alice:***@"), "{body}");
            }
        }
        cancel.cancel();
        serving.await.unwrap().unwrap();
        bus.shutdown().await.unwrap();
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("***@127.0.0.1"),
        "the connection attempts were logged: {logged}"
    );
    assert_hidden("the logs", &logged);
}
