//! Configuration of the NATS transport, from a broker URL.
//!
//! `nats://[user:password@|token@]host[:port][,nats://host2...][?options]`, or `tls://` for TLS.
//! Several comma-separated URLs are the servers of one cluster; the client connects to any and
//! follows the cluster. Options (query parameters, on any of the URLs):
//!
//! | option | default | what |
//! |---|---|---|
//! | `ack_wait` | `30s` | how long JetStream waits for a settlement before redelivering (Herald renews it while a handler runs) |
//! | `replicas` | 1, or 3 with several URLs | stream replicas (R3 on a cluster) |
//! | `outage_timeout` | `30s` | how long a publish or connect waits out an outage before failing |
//! | `max_ack_pending` | `10000` | unsettled messages per queue across all its consumers |
//! | `pull_expires` | `30s` | how long one pull request waits on the server before it is renewed (at least 1s) |
//! | `cloudevents` | `compact` | `full`: every CloudEvents attribute as a header, for consumers that read only headers |
//! | `cacertfile`, `certfile`, `keyfile` | | TLS: the CA to trust, and a client certificate |
//!
//! Durations are `250ms`, `2s`, `5m` or a number of milliseconds.

use std::time::Duration;

use herald::error::{Error, Result};
use herald::transport::redact_url;

/// How to reach NATS and how the transport behaves. [`NatsConfig::from_url`] reads it from a
/// broker URL; the fields can be changed before [`NatsTransport::connect`](crate::NatsTransport::connect).
#[derive(Clone)]
pub struct NatsConfig {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// User and password, when the URL has them.
    pub user_password: Option<(String, String)>,
    /// A token (`nats://TOKEN@host`), when the URL has one.
    pub token: Option<String>,
    /// TLS (`tls://` URLs, or any TLS option).
    pub tls: bool,
    /// A CA certificate file to trust.
    pub ca_cert: Option<String>,
    /// A client certificate and its key.
    pub client_cert: Option<(String, String)>,
    /// The service name: the connection's name on the server.
    pub service: String,
    /// JetStream's redelivery timer for unsettled messages.
    pub ack_wait: Duration,
    /// Stream replicas.
    pub replicas: usize,
    /// How long one pull request waits on the server; an idle consumer renews it this often.
    pub pull_expires: Duration,
    /// How long connecting and publishing wait out an outage.
    pub outage_timeout: Duration,
    /// Unsettled messages per queue, across its consumers.
    pub max_ack_pending: i64,
    /// Which CloudEvents attributes go on the wire: those a reader cannot work out (the
    /// default), or all (`cloudevents=full`).
    pub cloudevents_headers: crate::CloudEventsHeaders,
    /// JetStream's de-duplication window for message ids: a publish retried within it (after a
    /// reconnect) is stored once.
    pub duplicate_window: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("service", &self.service)
            .field("ack_wait", &self.ack_wait)
            .field("replicas", &self.replicas)
            .field("pull_expires", &self.pull_expires)
            .field("outage_timeout", &self.outage_timeout)
            .field("max_ack_pending", &self.max_ack_pending)
            .finish()
    }
}

impl NatsConfig {
    /// Read a broker URL (one or several comma-separated `nats://` / `tls://` URLs).
    ///
    /// ```
    /// use herald_nats::NatsConfig;
    /// let c = NatsConfig::from_url("nats://a:4222,nats://b:4223?ack_wait=2s", "svc").unwrap();
    /// assert_eq!(c.servers, vec!["a:4222", "b:4223"]);
    /// assert_eq!(c.ack_wait, std::time::Duration::from_secs(2));
    /// assert_eq!(c.replicas, 3);
    /// assert!(NatsConfig::from_url("nats://", "svc").is_err());
    /// assert!(NatsConfig::from_url("nats://h?ack_wait=soon", "svc").is_err());
    /// ```
    pub fn from_url(raw: &str, service: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(raw),
            reason,
        };
        let mut config = NatsConfig {
            servers: Vec::new(),
            user_password: None,
            token: None,
            tls: false,
            ca_cert: None,
            client_cert: None,
            service: service.to_string(),
            ack_wait: Duration::from_secs(30),
            replicas: 1,
            pull_expires: Duration::from_secs(30),
            outage_timeout: Duration::from_secs(30),
            max_ack_pending: 10_000,
            duplicate_window: Duration::from_secs(120),
            cloudevents_headers: crate::CloudEventsHeaders::Compact,
        };
        let mut replicas = None;
        let (mut cert, mut key) = (None, None);
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let url = url::Url::parse(part).map_err(|e| invalid(e.to_string()))?;
            match url.scheme() {
                "nats" => {}
                "tls" => config.tls = true,
                other => {
                    return Err(invalid(format!(
                        "`{other}://` in a NATS cluster list; every URL must be nats:// or tls://"
                    )))
                }
            }
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| invalid("missing host, e.g. nats://127.0.0.1:4222".into()))?;
            config
                .servers
                .push(format!("{host}:{}", url.port().unwrap_or(4222)));
            let user = decode(url.username());
            match url.password() {
                Some(p) => config.user_password = Some((user, decode(p))),
                None if !user.is_empty() => config.token = Some(user),
                None => {}
            }
            for (k, v) in url.query_pairs() {
                let duration = || {
                    parse_duration(&v).ok_or_else(|| {
                        invalid(format!("{k} must be a duration like 500ms, 2s or 5m"))
                    })
                };
                match k.as_ref() {
                    "ack_wait" => config.ack_wait = duration()?.max(Duration::from_millis(100)),
                    "outage_timeout" => config.outage_timeout = duration()?,
                    // The idle heartbeats run at half of it (at most every 2 s): below a second
                    // they would flood an idle consumer.
                    "pull_expires" => config.pull_expires = duration()?.max(Duration::from_secs(1)),
                    "replicas" => {
                        replicas = Some(v.parse::<usize>().ok().filter(|n| (1..=5).contains(n)).ok_or_else(
                            || invalid("replicas must be a whole number from 1 to 5".into()),
                        )?)
                    }
                    "max_ack_pending" => {
                        config.max_ack_pending = v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(
                            || invalid("max_ack_pending must be a whole number of at least 1".into()),
                        )?
                    }
                    "cloudevents" => {
                        config.cloudevents_headers = match v.as_ref() {
                            "compact" => crate::CloudEventsHeaders::Compact,
                            "full" => crate::CloudEventsHeaders::Full,
                            _ => return Err(invalid("cloudevents must be `compact` or `full`".into())),
                        }
                    }
                    "cacertfile" => {
                        config.ca_cert = Some(v.into_owned());
                        config.tls = true;
                    }
                    "certfile" => cert = Some(v.into_owned()),
                    "keyfile" => key = Some(v.into_owned()),
                    other => {
                        return Err(invalid(format!(
                            "unknown option `{other}`; NATS URLs take ack_wait, replicas, outage_timeout, max_ack_pending, pull_expires, cloudevents, cacertfile, certfile, keyfile"
                        )))
                    }
                }
            }
        }
        if config.servers.is_empty() {
            return Err(invalid("no server, e.g. nats://127.0.0.1:4222".into()));
        }
        match (cert, key) {
            (Some(c), Some(k)) => {
                config.client_cert = Some((c, k));
                config.tls = true;
            }
            (None, None) => {}
            _ => return Err(invalid("certfile and keyfile go together".into())),
        }
        config.replicas = replicas.unwrap_or(if config.servers.len() > 1 { 3 } else { 1 });
        Ok(config)
    }
}

/// `250ms`, `2s`, `5m`, or a number of milliseconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "ms"),
    };
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Percent-decode a URL's user or password.
fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_options() {
        let c = NatsConfig::from_url("nats://al%40ice:p%2Fw@h:5000?replicas=2", "svc").unwrap();
        assert_eq!(c.servers, vec!["h:5000"]);
        assert_eq!(
            c.user_password,
            Some(("al@ice".to_string(), "p/w".to_string()))
        );
        assert_eq!(c.replicas, 2);
        let c = NatsConfig::from_url("nats://s3cret@h", "svc").unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = NatsConfig::from_url("tls://h?cacertfile=/ca.pem", "svc").unwrap();
        assert!(c.tls);
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_secrets() {
        for (url, says) in [
            ("nats://u:pw@h?replicas=9", "replicas"),
            ("nats://u:pw@h?bogus=1", "unknown option `bogus`"),
            ("nats://u:pw@h,amqp://x", "every URL must be"),
            ("nats://u:pw@h?certfile=/c.pem", "go together"),
            ("nats://u:pw@h?ack_wait=2h", "duration"),
        ] {
            let e = NatsConfig::from_url(url, "svc").unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Some(Duration::from_millis(3)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("x"), None);
    }
}
