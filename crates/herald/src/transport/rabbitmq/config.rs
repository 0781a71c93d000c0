//! Configuration of the RabbitMQ transport: broker URLs, naming, timeouts and windows.

use std::time::Duration;

use amqprs::connection::OpenConnectionArguments;

use crate::error::{Error, Result};
use crate::transport::redact_url;

/// How [`RabbitTransport`](super::RabbitTransport) connects and behaves.
///
/// Only the URLs and the service name are required; the rest has production defaults.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// Broker URLs (`amqp://user:pass@host:port/vhost?heartbeat=30`), tried in turn: list every
    /// node of a cluster.
    pub urls: Vec<String>,
    /// The service name: part of the client-provided connection names and consumer tags.
    pub service: String,
    /// Heartbeat interval in seconds (overridden by a `heartbeat=` query parameter).
    pub heartbeat: u16,
    /// Confirm channels used for publishing (the channel pool).
    pub publish_channels: usize,
    /// Messages published and not yet confirmed, at most (the confirm window).
    pub confirm_window: usize,
    /// How long a publish (or any call needing the broker) waits through an outage or a
    /// `connection.blocked` alarm before failing with [`Error::Unavailable`].
    pub outage_timeout: Duration,
    /// First reconnect delay; doubled on each failure up to [`max_backoff`](Self::max_backoff),
    /// with jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Retry delay levels used for a queue that declares none.
    pub default_retry_delays: Vec<Duration>,
    /// Acks are sent as one `multiple` ack once this many are waiting ...
    pub ack_batch: usize,
    /// ... or after this long, whichever comes first.
    pub ack_flush_interval: Duration,
}

impl RabbitConfig {
    /// Defaults for `urls` (one URL per cluster node) and the service `service`.
    pub fn new(urls: Vec<String>, service: &str) -> Self {
        RabbitConfig {
            urls,
            service: service.to_string(),
            heartbeat: 30,
            publish_channels: 2,
            confirm_window: 256,
            outage_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            default_retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(600),
            ],
            ack_batch: 64,
            ack_flush_interval: Duration::from_millis(1),
        }
    }

    /// The connection arguments for one URL, named `<service> herald <role>`.
    pub(crate) fn open_args(&self, raw: &str, role: &str) -> Result<OpenConnectionArguments> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact_url(raw),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            _ => return Err(invalid("expected amqp:// or amqps://")),
        };
        let host = url
            .host_str()
            .ok_or_else(|| invalid("missing host, e.g. amqp://guest:guest@127.0.0.1:5672/%2f"))?;
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let decode = |s: &str| -> String {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = if url.username().is_empty() {
            "guest".to_string()
        } else {
            decode(url.username())
        };
        let password = url
            .password()
            .map(decode)
            .unwrap_or_else(|| "guest".to_string());
        let path = url.path().trim_start_matches('/');
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            decode(path)
        };
        let mut heartbeat = self.heartbeat;
        for (k, v) in url.query_pairs() {
            if k == "heartbeat" {
                heartbeat = v
                    .parse()
                    .map_err(|_| invalid("heartbeat must be a number of seconds"))?;
            }
        }
        let mut args = OpenConnectionArguments::new(host, port, &user, &password);
        args.virtual_host(&vhost)
            .heartbeat(heartbeat)
            .connection_name(&format!("{} herald {role}", self.service));
        if tls {
            return Err(invalid(
                "amqps:// is not supported by this build yet; use amqp:// through a TLS-terminating proxy or sidecar",
            ));
        }
        Ok(args.finish())
    }

    /// Check every URL parses, so a typo fails at start-up rather than in the reconnect loop.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            return Err(Error::Config(
                "the RabbitMQ transport needs at least one amqp:// URL".into(),
            ));
        }
        for u in &self.urls {
            self.open_args(u, "check")?;
        }
        Ok(())
    }

    /// The retry levels of a queue: its own, or the defaults, sorted.
    pub(crate) fn retry_levels(&self, declared: &[Duration]) -> Vec<Duration> {
        let mut levels: Vec<Duration> = if declared.is_empty() {
            self.default_retry_delays.clone()
        } else {
            declared.to_vec()
        };
        levels.retain(|d| !d.is_zero());
        levels.sort();
        levels.dedup();
        levels
    }
}

/// The level a retry with `delay` goes through: the smallest level at least `delay`, or the
/// largest level when `delay` exceeds them all.
pub(crate) fn pick_level(levels: &[Duration], delay: Duration) -> Option<Duration> {
    levels
        .iter()
        .copied()
        .find(|l| *l >= delay)
        .or_else(|| levels.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = RabbitConfig::new(vec![], "svc");
        let a = c
            .open_args(
                "amqp://u%40x:p%2Fw@host:5673/v%2Fh?heartbeat=7",
                "publisher",
            )
            .unwrap();
        assert_eq!(a.get_host(), "host");
        assert_eq!(a.get_port(), 5673);
        assert_eq!(a.get_virtual_host(), "v/h");
        assert_eq!(a.get_heartbeat(), 7);
        assert_eq!(a.get_connection_name(), Some("svc herald publisher"));
        let b = c.open_args("amqp://localhost", "x").unwrap();
        assert_eq!(b.get_virtual_host(), "/");
        assert_eq!(b.get_port(), 5672);
    }

    #[test]
    fn picks_levels() {
        let l = [Duration::from_millis(300), Duration::from_secs(1)];
        assert_eq!(pick_level(&l, Duration::from_millis(10)), Some(l[0]));
        assert_eq!(pick_level(&l, Duration::from_millis(300)), Some(l[0]));
        assert_eq!(pick_level(&l, Duration::from_millis(301)), Some(l[1]));
        assert_eq!(pick_level(&l, Duration::from_secs(9)), Some(l[1]));
    }
}
