//! Configuration of the RabbitMQ transport: broker URLs, naming, timeouts and windows.

use std::time::Duration;

use amqprs::connection::OpenConnectionArguments;

use herald::error::{Error, Result};
use herald::topology::QueueKind;
use herald::transport::redact_url;

/// Every value of query parameter `key` on the URLs, in order.
fn query_values<'a>(urls: &'a [String], key: &'a str) -> impl Iterator<Item = String> + 'a {
    urls.iter()
        .filter_map(|u| url::Url::parse(u.trim()).ok())
        .flat_map(move |u| {
            u.query_pairs()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
                .collect::<Vec<_>>()
        })
}

/// `cloudevents=full` on any of the URLs: every message carries the full header set.
fn cloudevents_headers_of(urls: &[String]) -> CloudEventsHeaders {
    query_values(urls, "cloudevents")
        .filter_map(|v| CloudEventsHeaders::parse(&v))
        .max_by_key(|h| *h == CloudEventsHeaders::Full)
        .unwrap_or_default()
}

/// Confirm channels a publisher uses when the URLs do not say (see
/// [`RabbitConfig::publish_channels`]).
pub const DEFAULT_PUBLISH_CHANNELS: usize = 2;

/// A `publish_channels=N` query parameter on any of the URLs (the largest, when several).
fn publish_channels_of(urls: &[String]) -> Option<usize> {
    query_values(urls, "publish_channels")
        .filter_map(|v| v.parse::<usize>().ok())
        .max()
}

/// A `queue_type=quorum|classic` query parameter on any of the URLs (quorum wins when they
/// disagree).
fn queue_type_of(urls: &[String]) -> Option<QueueKind> {
    query_values(urls, "queue_type")
        .filter_map(|v| parse_queue_type(&v))
        .max_by_key(|k| *k == QueueKind::Quorum)
}

fn parse_queue_type(value: &str) -> Option<QueueKind> {
    match value {
        "quorum" => Some(QueueKind::Quorum),
        "classic" => Some(QueueKind::Classic),
        _ => None,
    }
}

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
    /// Confirm channels used for publishing (the channel pool); a `publish_channels=N` query
    /// parameter sets it. [`DEFAULT_PUBLISH_CHANNELS`] (2) by default: a channel is one Erlang
    /// process on the broker, which decodes, routes and confirms every message published on it,
    /// and on W1 it is the broker's busiest process after the queue's own (37% of the broker's
    /// reductions). Two of them run on two broker cores; on W1 two channels measured 4–6% faster
    /// end to end than one, for about 0.5 µs more client CPU per event.
    ///
    /// Publish calls take the channels in turn, so messages of *concurrent* calls may reach a
    /// queue in either order (they have no order to keep). One call's batch goes out on one
    /// channel, in order (what a lost channel had not confirmed is published again after it),
    /// and a call made after another returned lands after it. `publish_channels=1` sends every
    /// call down one channel.
    pub publish_channels: usize,
    /// Messages published and not yet confirmed, at most (the confirm window).
    pub confirm_window: usize,
    /// How long a publish (or any call needing the broker) waits through an outage or a
    /// `connection.blocked` alarm before failing with [`Error::Unavailable`].
    pub outage_timeout: Duration,
    /// How long a message the broker refused with a negative confirm is published again
    /// before the publish fails with [`Error::Rejected`]. A quorum queue refuses messages that
    /// way while it has no leader (the node that led it died and the others are electing a new
    /// one), so on quorum queues (the default on a cluster) a nack is published again for up to
    /// 10 s, with backoff; on classic queues a nack means a full queue (`reject-publish`) or a
    /// broker fault, and fails at once (zero).
    pub nack_retry: Duration,
    /// First reconnect delay; doubled on each failure up to [`max_backoff`](Self::max_backoff),
    /// with jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Retry delay levels used for a queue that declares none.
    pub default_retry_delays: Vec<Duration>,
    /// Acks are sent as one `multiple` ack once this many are waiting (or half the consumer's
    /// prefetch window, if that is less: the broker delivers nothing more to a full window) ...
    pub ack_batch: usize,
    /// ... or after this long, whichever comes first. The wait only bounds how long the last
    /// acks of a burst stay unsent, so it can be long: at 10 ms instead of 1 ms the flusher wakes
    /// a tenth as often, which measured about 0.6 µs less client CPU per event on W1.
    pub ack_flush_interval: Duration,
    /// Which CloudEvents attributes travel as headers (a `cloudevents=full` query parameter on
    /// any URL selects [`CloudEventsHeaders::Full`]).
    pub cloudevents_headers: CloudEventsHeaders,
    /// The kind of the queues declared for a subscription that did not ask for
    /// [`QueueKind::Quorum`] itself. [`QueueKind::Quorum`] when several URLs are listed (a
    /// cluster: a classic queue lives on one node, and while that node is down its messages are
    /// out of reach and publishes to it wait), [`QueueKind::Classic`] for one URL; a
    /// `queue_type=quorum` or `queue_type=classic` query parameter on any URL decides instead.
    /// A queue that needs what quorum queues lack (priorities, auto-delete) stays classic.
    /// Dead-letter and retry queues take their work queue's kind.
    pub queue_type: QueueKind,
}

/// Which CloudEvents attributes a RabbitMQ message carries as `cloudEvents_*` headers. Herald
/// reads both forms; see `docs/wire-format.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CloudEventsHeaders {
    /// The attributes a standard AMQP property carries (id, type, source, content type,
    /// correlation id) travel only there; the event version and the attempt only when not 1.
    /// Smaller messages: about 8% more throughput than `Full` on W1.
    #[default]
    Compact,
    /// Every attribute also as a header, as CloudEvents binary mode lays it out, for consumers
    /// that read only the `cloudEvents_*` headers (a CloudEvents SDK).
    Full,
}

impl CloudEventsHeaders {
    /// The value of a `cloudevents=` query parameter.
    fn parse(value: &str) -> Option<Self> {
        match value {
            "compact" => Some(CloudEventsHeaders::Compact),
            "full" => Some(CloudEventsHeaders::Full),
            _ => None,
        }
    }
}

impl RabbitConfig {
    /// Defaults for `urls` (one URL per cluster node) and the service `service`.
    pub fn new(urls: Vec<String>, service: &str) -> Self {
        let queue_type = queue_type_of(&urls).unwrap_or(if urls.len() > 1 {
            QueueKind::Quorum
        } else {
            QueueKind::Classic
        });
        RabbitConfig {
            service: service.to_string(),
            heartbeat: 30,
            publish_channels: publish_channels_of(&urls)
                .filter(|n| *n >= 1)
                .unwrap_or(DEFAULT_PUBLISH_CHANNELS),
            confirm_window: 256,
            outage_timeout: Duration::from_secs(30),
            nack_retry: match queue_type {
                QueueKind::Quorum => Duration::from_secs(10),
                QueueKind::Classic => Duration::ZERO,
            },
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            default_retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(600),
            ],
            ack_batch: 64,
            ack_flush_interval: Duration::from_millis(10),
            cloudevents_headers: cloudevents_headers_of(&urls),
            queue_type,
            urls,
        }
    }

    /// The configuration a broker URL gives: one `amqp://` or `amqps://` URL, or several
    /// separated by commas (the nodes of a cluster), checked.
    ///
    /// ```
    /// let c = herald_rabbitmq::RabbitConfig::from_url("amqp://a:b@h1,amqp://h2?heartbeat=5", "svc").unwrap();
    /// assert_eq!(c.urls.len(), 2);
    /// assert!(herald_rabbitmq::RabbitConfig::from_url("amqp://", "svc").is_err());
    /// ```
    pub fn from_url(raw: &str, service: &str) -> Result<Self> {
        // Split where a new `amqp://` begins, so a password may hold commas.
        let urls: Vec<String> = herald::transport::split_url_list(raw)
            .into_iter()
            .map(String::from)
            .collect();
        let config = RabbitConfig::new(urls, service);
        config.validate()?;
        Ok(config)
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
            .filter(|h| !h.is_empty())
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
        let (mut cacert, mut cert, mut key) = (None, None, None);
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "heartbeat" => {
                    heartbeat = v
                        .parse()
                        .map_err(|_| invalid("heartbeat must be a number of seconds"))?
                }
                "cloudevents" if CloudEventsHeaders::parse(&v).is_none() => {
                    return Err(invalid("cloudevents must be `compact` or `full`"))
                }
                "queue_type" if parse_queue_type(&v).is_none() => {
                    return Err(invalid("queue_type must be `quorum` or `classic`"))
                }
                "publish_channels" if !v.parse::<usize>().is_ok_and(|n| n >= 1) => {
                    return Err(invalid(
                        "publish_channels must be a whole number of at least 1",
                    ))
                }
                "cacertfile" => cacert = Some(v.into_owned()),
                "certfile" => cert = Some(v.into_owned()),
                "keyfile" => key = Some(v.into_owned()),
                _ => {}
            }
        }
        let mut args = OpenConnectionArguments::new(host, port, &user, &password);
        args.virtual_host(&vhost)
            .heartbeat(heartbeat)
            .connection_name(&format!("{} herald {role}", self.service));
        if tls {
            #[cfg(feature = "tls")]
            args.tls_adaptor(tls_adaptor(host, cacert, cert, key).map_err(|r| invalid(&r))?);
            #[cfg(not(feature = "tls"))]
            return Err(invalid(
                "amqps:// needs Herald built with herald-rabbitmq's `tls` feature",
            ));
        } else if cacert.is_some() || cert.is_some() || key.is_some() {
            return Err(invalid("certificate options need an amqps:// URL"));
        }
        Ok(args.finish())
    }

    /// Check every URL parses, so a typo fails at start-up rather than in the reconnect loop.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.urls.is_empty() || self.urls.iter().any(|u| u.is_empty()) {
            return Err(Error::Config(
                "the RabbitMQ transport needs at least one amqp:// URL".into(),
            ));
        }
        for u in &self.urls {
            self.open_args(u, "check")?;
        }
        Ok(())
    }

    /// The kind a queue is declared as: quorum when it asks for it or when
    /// [`queue_type`](Self::queue_type) says so, unless it needs what quorum queues lack.
    pub(crate) fn queue_kind(&self, q: &herald::topology::QueueSpec) -> QueueKind {
        let wanted = match q.kind {
            QueueKind::Quorum => QueueKind::Quorum,
            QueueKind::Classic => self.queue_type,
        };
        if wanted == QueueKind::Quorum && (q.auto_delete || q.max_priority.is_some()) {
            if q.max_priority.is_some() && !q.auto_delete {
                tracing::warn!(queue = %q.name, "quorum queues have no priorities: this queue is declared classic, on one node only");
            }
            return QueueKind::Classic;
        }
        wanted
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

/// rustls for `amqps://`: the system's webpki roots, or `cacertfile`; a client certificate with
/// `certfile` + `keyfile`.
#[cfg(feature = "tls")]
fn tls_adaptor(
    host: &str,
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> std::result::Result<amqprs::tls::TlsAdaptor, String> {
    use std::path::Path;
    // rustls needs a process-wide crypto provider; install ring unless one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = cacert.as_deref().map(Path::new);
    let adaptor = match (cert, key) {
        (Some(c), Some(k)) => amqprs::tls::TlsAdaptor::with_client_auth(
            ca,
            Path::new(&c),
            Path::new(&k),
            host.to_string(),
        ),
        (None, None) => amqprs::tls::TlsAdaptor::without_client_auth(ca, host.to_string()),
        _ => return Err("certfile and keyfile go together".into()),
    };
    adaptor.map_err(|e| format!("TLS setup failed: {e}; check cacertfile/certfile/keyfile"))
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
    fn cloudevents_headers_come_from_the_urls() {
        let of = |urls: &[&str]| {
            RabbitConfig::new(urls.iter().map(|u| u.to_string()).collect(), "svc")
                .cloudevents_headers
        };
        assert_eq!(of(&["amqp://h"]), CloudEventsHeaders::Compact);
        assert_eq!(
            of(&["amqp://h?cloudevents=compact"]),
            CloudEventsHeaders::Compact
        );
        assert_eq!(
            of(&["amqp://a", "amqp://b?heartbeat=5&cloudevents=full"]),
            CloudEventsHeaders::Full
        );
        let bad = RabbitConfig::new(vec!["amqp://h?cloudevents=all".into()], "svc");
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("`compact` or `full`"), "{err}");
    }

    #[test]
    fn the_channel_pool_size_comes_from_the_urls() {
        let of = |urls: &[&str]| {
            RabbitConfig::new(urls.iter().map(|u| u.to_string()).collect(), "svc").publish_channels
        };
        assert_eq!(of(&["amqp://h"]), DEFAULT_PUBLISH_CHANNELS);
        assert_eq!(of(&["amqp://h?publish_channels=1"]), 1);
        assert_eq!(
            of(&["amqp://a?publish_channels=2", "amqp://b?publish_channels=4"]),
            4
        );
        for bad in ["0", "two"] {
            let c = RabbitConfig::new(vec![format!("amqp://h?publish_channels={bad}")], "svc");
            assert_eq!(
                c.publish_channels, DEFAULT_PUBLISH_CHANNELS,
                "{bad}: the default until validated"
            );
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("publish_channels must be"), "{err}");
        }
    }

    #[test]
    fn a_cluster_url_declares_quorum_queues_unless_told_otherwise() {
        use herald::topology::QueueSpec;
        let of = |url: &str| RabbitConfig::from_url(url, "svc").unwrap().queue_type;
        assert_eq!(of("amqp://h"), QueueKind::Classic);
        assert_eq!(of("amqp://a,amqp://b,amqp://c"), QueueKind::Quorum);
        assert_eq!(
            of("amqp://a?queue_type=classic,amqp://b"),
            QueueKind::Classic
        );
        assert_eq!(of("amqp://h?queue_type=quorum"), QueueKind::Quorum);
        let err = RabbitConfig::from_url("amqp://h?queue_type=mirrored", "svc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`quorum` or `classic`"), "{err}");

        let cluster = RabbitConfig::from_url("amqp://a,amqp://b", "svc").unwrap();
        let single = RabbitConfig::from_url("amqp://a", "svc").unwrap();
        let plain = QueueSpec::new("svc.a", "a");
        let mut quorum = plain.clone();
        quorum.kind = QueueKind::Quorum;
        let mut priority = plain.clone();
        priority.max_priority = Some(5);
        let mut temporary = plain.clone();
        temporary.auto_delete = true;
        assert_eq!(cluster.queue_kind(&plain), QueueKind::Quorum);
        assert_eq!(single.queue_kind(&plain), QueueKind::Classic);
        assert_eq!(single.queue_kind(&quorum), QueueKind::Quorum);
        assert_eq!(cluster.queue_kind(&priority), QueueKind::Classic);
        assert_eq!(cluster.queue_kind(&temporary), QueueKind::Classic);
    }

    #[test]
    fn amqps_needs_the_tls_feature_or_builds_rustls() {
        let c = RabbitConfig::new(vec![], "svc");
        let r = c.open_args("amqps://u:p@broker.example:5671/%2f", "publisher");
        #[cfg(feature = "tls")]
        {
            let a = r.expect("rustls adaptor with webpki roots");
            assert_eq!(a.get_port(), 5671);
            assert!(a.get_tls_adaptor().is_some());
            assert!(c
                .open_args(
                    "amqps://broker.example/?cacertfile=/nonexistent/ca.pem",
                    "x"
                )
                .is_err());
        }
        #[cfg(not(feature = "tls"))]
        assert!(matches!(r, Err(Error::InvalidUrl { .. })));
        assert!(c.open_args("amqp://h/?cacertfile=/x.pem", "x").is_err());
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
