//! The connection supervisor: amqprs has no recovery of its own, so each [`Link`] keeps one
//! connection alive. It tries the configured URLs in turn, backs off exponentially with jitter,
//! re-declares the known topology on every new connection before handing it out, and tracks
//! `connection.blocked` (broker memory or disk alarm) so publishers wait instead of buffering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::callbacks::ConnectionCallback;
use amqprs::connection::Connection;
use amqprs::Close;
type AmqpResult<T> = std::result::Result<T, amqprs::error::Error>;
use async_trait::async_trait;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::RabbitConfig;
use super::topology;
use herald::error::{Error, Result};
use herald::topology::Topology;
use herald::transport::redact_url;

/// One live connection and its number (it grows on every reconnect).
#[derive(Clone)]
pub(crate) struct Session {
    pub conn: Connection,
    pub generation: u64,
}

/// A supervised connection for one role (`publisher` or `consumer`).
#[derive(Clone)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    role: &'static str,
    cfg: Arc<RabbitConfig>,
    current: watch::Sender<Option<Session>>,
    blocked: watch::Sender<bool>,
    last_error: Mutex<String>,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Callback {
    role: &'static str,
    blocked: watch::Sender<bool>,
}

#[async_trait]
impl ConnectionCallback for Callback {
    async fn close(&mut self, connection: &Connection, close: Close) -> AmqpResult<()> {
        tracing::warn!(
            role = self.role,
            connection = connection.connection_name(),
            code = close.reply_code(),
            reason = %close.reply_text(),
            "the broker closed the connection; reconnecting"
        );
        Ok(())
    }
    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        tracing::warn!(role = self.role, %reason, "the broker blocked publishing (resource alarm); publishers wait");
        self.blocked.send_replace(true);
    }
    async fn unblocked(&mut self, _connection: &Connection) {
        tracing::info!(role = self.role, "the broker unblocked publishing");
        self.blocked.send_replace(false);
    }
    async fn secret_updated(&mut self, _connection: &Connection) {}
}

impl Link {
    /// Start supervising a connection. `topologies` is re-declared on each new connection
    /// (pass `None` for links that declare nothing).
    pub fn start(
        cfg: Arc<RabbitConfig>,
        role: &'static str,
        topologies: Option<Arc<Mutex<Vec<Topology>>>>,
    ) -> Link {
        let (current, _) = watch::channel(None);
        let (blocked, _) = watch::channel(false);
        let inner = Arc::new(LinkInner {
            role,
            cfg,
            current,
            blocked,
            last_error: Mutex::new("not connected yet".into()),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(supervise(inner.clone(), topologies));
        Link { inner }
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.inner
            .current
            .borrow()
            .as_ref()
            .is_some_and(|s| s.conn.is_open())
    }

    /// The current connection if it is up now, without waiting (the publish fast path).
    pub fn current(&self) -> Option<Session> {
        if self.inner.shutdown.is_cancelled() {
            return None;
        }
        self.inner
            .current
            .borrow()
            .as_ref()
            .filter(|s| s.conn.is_open())
            .cloned()
    }

    /// Whether the broker blocks publishing now (a resource alarm).
    pub fn is_blocked(&self) -> bool {
        *self.inner.blocked.borrow()
    }

    /// The current connection, waiting until `deadline` through an outage.
    pub async fn session(&self, deadline: Instant) -> Result<Session> {
        let mut rx = self.inner.current.subscribe();
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(Error::Closed);
            }
            if let Some(s) = rx.borrow_and_update().clone() {
                if s.conn.is_open() {
                    return Ok(s);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.unavailable(deadline));
            }
            // Wake on a change, or poll: a connection can die without the watch changing yet.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), rx.changed()).await;
        }
    }

    /// The current connection, waiting for as long as it takes (until `cancel` or shutdown).
    pub async fn session_or_cancel(&self, cancel: &CancellationToken) -> Option<Session> {
        loop {
            let deadline = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                r = self.session(deadline) => match r {
                    Ok(s) => return Some(s),
                    Err(Error::Closed) => return None,
                    Err(_) => continue,
                }
            }
        }
    }

    /// Wait while the broker blocks publishing, until `deadline`.
    pub async fn wait_unblocked(&self, deadline: Instant) -> Result<()> {
        let mut rx = self.inner.blocked.subscribe();
        while *rx.borrow_and_update() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable {
                    waited: self.inner.cfg.outage_timeout,
                    reason: "the broker has blocked publishing (memory or disk alarm); free broker resources or slow down".into(),
                });
            }
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
        Ok(())
    }

    fn unavailable(&self, _deadline: Instant) -> Error {
        Error::Unavailable {
            waited: self.inner.cfg.outage_timeout,
            reason: format!(
                "{} connection: {}; check that RabbitMQ is running and the URL is right",
                self.inner.role,
                lock(&self.inner.last_error)
            ),
        }
    }

    /// Stop supervising; the supervisor closes the connection.
    pub fn abort(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stop supervising and close the connection.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let current = self.inner.current.send_replace(None);
        if let Some(s) = current {
            if s.conn.is_open() {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.conn.close()).await;
            }
        }
    }
}

async fn connect_any(inner: &LinkInner) -> std::result::Result<Connection, String> {
    let mut errors = Vec::new();
    for url in &inner.cfg.urls {
        let args = match inner.cfg.open_args(url, inner.role) {
            Ok(a) => a,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let opened = tokio::time::timeout(Duration::from_secs(10), Connection::open(&args)).await;
        match opened {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => {
                let e = e.to_string();
                errors.push(format!("{}: {e}{}", redact_url(url), tls_hint(url, &e)));
            }
            Err(_) => errors.push(format!("{}: connect timed out", redact_url(url))),
        }
    }
    Err(errors.join("; "))
}

/// What a failed `amqps://` connection most likely means, in words: the TLS library and the
/// broker say little more than "unknown issuer" or a reset connection.
fn tls_hint(url: &str, error: &str) -> &'static str {
    if !url.trim_start().starts_with("amqps://") {
        return "";
    }
    let has_client_cert =
        url::Url::parse(url.trim()).is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "certfile"));
    let ended = [
        "reset",
        "eof",
        "EOF",
        "broken pipe",
        "CertificateRequired",
        "HandshakeFailure",
    ]
    .iter()
    .any(|s| error.contains(s));
    if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        " (the broker's certificate is not signed by a CA this client trusts: give that CA with cacertfile=)"
    } else if !has_client_cert && ended {
        " (the broker ended the TLS handshake: it probably requires a client certificate; add certfile= and keyfile=)"
    } else if has_client_cert
        && (ended || error.contains("UnknownCA") || error.contains("BadCertificate"))
    {
        " (the broker ended the TLS handshake: it probably does not trust this client certificate; it must be signed by a CA in the broker's ssl_options.cacertfile)"
    } else {
        ""
    }
}

async fn wait_closed(conn: &Connection, shutdown: &CancellationToken) {
    loop {
        if !conn.is_open() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = conn.listen_network_io_failure() => {
                if !conn.is_open() { return; }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn backoff(cfg: &RabbitConfig, attempt: u32) -> Duration {
    let base = cfg.min_backoff.as_millis() as u64;
    let max = cfg.max_backoff.as_millis().max(1) as u64;
    let exp = base.saturating_mul(1u64 << attempt.min(16)).min(max);
    // Full jitter on the upper half: between exp/2 and exp.
    let low = exp / 2;
    Duration::from_millis(rand::thread_rng().gen_range(low..=exp.max(low)))
}

async fn supervise(inner: Arc<LinkInner>, topologies: Option<Arc<Mutex<Vec<Topology>>>>) {
    let mut attempt: u32 = 0;
    let mut generation: u64 = 0;
    loop {
        if inner.shutdown.is_cancelled() {
            break;
        }
        let connected = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            r = connect_any(&inner) => r,
        };
        match connected {
            Ok(conn) => {
                inner.blocked.send_replace(false);
                let cb = Callback {
                    role: inner.role,
                    blocked: inner.blocked.clone(),
                };
                if let Err(e) = conn.register_callback(cb).await {
                    tracing::warn!(role = inner.role, error = %e, "could not register connection callback");
                }
                if let Some(t) = &topologies {
                    let known: Vec<Topology> = lock(t).clone();
                    for topo in &known {
                        if let Err(e) = topology::declare(&conn, topo, &inner.cfg).await {
                            tracing::warn!(role = inner.role, error = %e, "re-declaring topology after reconnect failed");
                        }
                    }
                }
                if !conn.is_open() {
                    *lock(&inner.last_error) = "connection closed right after opening".into();
                    continue;
                }
                generation += 1;
                if attempt > 0 {
                    tracing::info!(role = inner.role, generation, "reconnected to RabbitMQ");
                }
                record_connected(inner.role, generation);
                attempt = 0;
                inner.current.send_replace(Some(Session {
                    conn: conn.clone(),
                    generation,
                }));
                wait_closed(&conn, &inner.shutdown).await;
                inner.current.send_replace(None);
                herald::telemetry::connection_state(TRANSPORT, inner.role, false);
                if inner.shutdown.is_cancelled() {
                    if conn.is_open() {
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
                    }
                    break;
                }
                *lock(&inner.last_error) = "connection lost".into();
                tracing::warn!(
                    role = inner.role,
                    "lost the RabbitMQ connection; reconnecting"
                );
            }
            Err(e) => {
                tracing::warn!(role = inner.role, error = %e, attempt, "could not connect to RabbitMQ");
                herald::telemetry::connection_state(TRANSPORT, inner.role, false);
                *lock(&inner.last_error) = e;
            }
        }
        let delay = backoff(&inner.cfg, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

const TRANSPORT: &str = "rabbitmq";

/// Metrics for a new session: the connection is up, and from the second one on it is a reconnect.
fn record_connected(role: &'static str, generation: u64) {
    herald::telemetry::connection_state(TRANSPORT, role, true);
    if generation > 1 {
        herald::telemetry::reconnected(TRANSPORT, role);
    }
}
