//! `herald serve` and the dashboard of `herald demo`, run as the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn herald(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.current_dir(dir)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_BROKER")
        .arg("--broker")
        .arg(format!("sqlite://{}", dir.join("broker.db").display()));
    c
}

/// `GET path` over plain HTTP/1.1, without a token; returns (status, body).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, "", None)
}

/// One HTTP/1.1 request with a JSON body and, if given, the bearer token; returns (status, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("--token"),
        "{err}"
    );
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = herald(dir.path())
        .args(["serve", "--listen", &addr, "--token", "tok"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let ready = loop {
        if let Ok(r) = get(&addr, "/health/ready") {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "herald serve did not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(ready.1.contains("\"status\":\"up\""), "{}", ready.1);
    assert_eq!(
        get(&addr, "/api/info").unwrap().0,
        401,
        "the token guards the API"
    );
    let (code, page) = get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("data-tab=\"dlq\""));

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "herald serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains(&format!("dashboard: http://{addr}/")), "{err}");
}

#[test]
fn demo_serves_the_dashboard_and_falls_back_when_the_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = herald(dir.path())
        .args(["demo", "--rate", "20", "--quiet", "--listen", &addr])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    let url = loop {
        let line = lines
            .next()
            .expect("the demo prints the dashboard URL")
            .unwrap();
        warned |= line.contains("is in use");
        if let Some(u) = line.strip_prefix("dashboard: ") {
            break u.to_string();
        }
    };
    assert!(warned, "a warning about the taken port");
    // The demo prints a login link: `http://ADDR/#token=<generated token>`.
    let (base, token) = url.split_once("/#token=").expect("a login link");
    assert_eq!(token.len(), 48, "{url}");
    assert_eq!(
        get(base.trim_start_matches("http://"), "/api/catalog")
            .unwrap()
            .0,
        401
    );
    let served = base.trim_start_matches("http://").to_string();
    let get = |addr: &str, path: &str| request(addr, "GET", path, "", Some(token));
    assert_ne!(served, addr);
    let start = Instant::now();
    let catalog = loop {
        let (code, body) = get(&served, "/api/catalog").unwrap();
        assert_eq!(code, 200);
        if body.contains("course.enrolled") {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
    };
    assert!(
        catalog.contains("analytics-service.course.enrolled"),
        "{catalog}"
    );
    // The demo's catalog has schemas: a body that breaks one is refused with the violations.
    let (code, body) = request(
        &served,
        "POST",
        "/api/events/user.registered",
        r#"{"user_id": "not a number"}"#,
        Some(token),
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("/user_id"), "{body}");
    // The security review's finding: `registered` reached no queue but was accepted, because
    // `notification-service.user.registered` ends in `.registered`. Binding patterns decide now.
    let (code, body) =
        request(&served, "POST", "/api/events/registered", "{}", Some(token)).unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("no queue is bound"), "{body}");
    let (_, topo) = get(&served, "/api/topology").unwrap();
    assert!(
        topo.contains("notification-service.user.registered"),
        "{topo}"
    );
    // Live data flows: the sampler counts the demo's events (it is publishing, so it also
    // handles Ctrl-C by now).
    let start = Instant::now();
    loop {
        let (_, history) = get(&served, "/api/stats/history").unwrap();
        if history.contains("\"user.registered\":") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no events counted: {history}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The demo's own buses report to the server's `/metrics` (the recorder is installed before
    // they are built): acks by the consuming services' queues, handler durations.
    let start = Instant::now();
    loop {
        let (code, metrics) = get(&served, "/metrics").unwrap();
        assert_eq!(code, 200);
        if metrics.contains("herald_acked_total{queue=\"notification-service.user.registered\"")
            && metrics.contains("herald_handler_duration_seconds_bucket")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no demo series in /metrics: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    drop(taken);
}

#[test]
fn serve_without_a_token_makes_one_and_prints_a_login_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = herald(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-host",
            "herald.internal",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("the dashboard URL").unwrap();
        if let Some(u) = line.strip_prefix("dashboard: ") {
            break u.split_whitespace().next().unwrap().to_string();
        }
    };
    let (base, token) = url.split_once("/#token=").expect("a login link");
    let addr = base.trim_start_matches("http://");
    assert_eq!(token.len(), 48, "{url}");
    assert_eq!(
        get(addr, "/api/info").unwrap().0,
        401,
        "a token on loopback too"
    );
    let (code, info) = request(addr, "GET", "/api/info", "", Some(token)).unwrap();
    assert_eq!(code, 200, "{info}");
    // A host name it was not told about (a DNS-rebinding page) is refused; the configured one
    // is answered.
    for (host, expected) in [("evil.example", 421), ("herald.internal", 200)] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /api/info HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(&text[9..12], expected.to_string(), "{host}: {text}");
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{status}: {}", rest.join("\n"));
}
