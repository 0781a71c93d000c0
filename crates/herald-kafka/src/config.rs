//! `kafka://host:port[,host2:port]?partitions=4&compression=lz4`: the URL, the client settings
//! it gives, and the names of the topics Herald uses.

use std::time::Duration;

use herald::error::{Error, Result};
use herald::transport::redact_url;
use rdkafka::ClientConfig;

/// The topic that records every queue's bindings (compacted, one partition): publishers read
/// it to tell an unroutable publish from a routed one.
pub const BINDINGS_TOPIC: &str = "herald.queues";

/// Kafka topic names: at most 249 characters of `[a-zA-Z0-9._-]`.
const MAX_TOPIC_LEN: usize = 249;

/// What a [`KafkaTransport`](crate::KafkaTransport) connects to and how.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port` of the bootstrap brokers.
    pub brokers: Vec<String>,
    /// Names the clients (`client.id`): `<service> herald`.
    pub service: String,
    /// Partitions of an exchange's topic. Instances of one service share a topic's partitions, so this bounds how many
    /// of them work at once. Default 4; `?partitions=N`.
    pub partitions: i32,
    /// Compression of produced batches: `none` (default), `gzip`, `lz4` or `zstd`
    /// (`?compression=`). Snappy is refused: some Kafka-API brokers (Tansu) cannot read it.
    pub compression: String,
    /// How long a publish waits through a broker outage before failing (librdkafka's
    /// `message.timeout.ms`). Default 120 s; `?outage_timeout_ms=`.
    pub outage_timeout: Duration,
    /// Write every CloudEvents attribute as a header (`?cloudevents=full`), for consumers that
    /// read only headers; by default the compact form leaves out what has its default value or
    /// what the UUIDv7 id carries (`docs/wire-format.md`).
    pub full_headers: bool,
    /// Delays of the retry topics when a queue declares none.
    pub default_retry_delays: Vec<Duration>,
    /// A consumer's offsets are committed this often (when they moved). Default 100 ms.
    pub commit_interval: Duration,
    /// How long a rebalance waits for the deliveries of revoked partitions to be settled
    /// before committing what was settled (the rest is delivered again to the next owner).
    pub revoke_grace: Duration,
    /// SASL/PLAIN credentials (`kafka://user:password@host:port`), never part of the broker
    /// list (which librdkafka logs).
    pub sasl_plain: Option<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("service", &self.service)
            .field("partitions", &self.partitions)
            .field("compression", &self.compression)
            .field("outage_timeout", &self.outage_timeout)
            .field("full_headers", &self.full_headers)
            .field("default_retry_delays", &self.default_retry_delays)
            .field("commit_interval", &self.commit_interval)
            .field("revoke_grace", &self.revoke_grace)
            .field("sasl_user", &self.sasl_plain.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl KafkaConfig {
    /// Brokers and defaults, for `service`.
    ///
    /// ```
    /// let cfg = herald_kafka::KafkaConfig::new(vec!["127.0.0.1:9092".into()], "billing");
    /// assert_eq!(cfg.partitions, 4);
    /// ```
    pub fn new(brokers: Vec<String>, service: &str) -> Self {
        KafkaConfig {
            brokers,
            service: service.to_string(),
            partitions: 4,
            compression: "none".into(),
            outage_timeout: Duration::from_secs(120),
            full_headers: false,
            default_retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(600),
            ],
            commit_interval: Duration::from_millis(100),
            revoke_grace: Duration::from_secs(5),
            sasl_plain: None,
        }
    }

    /// Parse `kafka://host:port[,host2:port][?partitions=N&compression=C&outage_timeout_ms=M]`.
    ///
    /// ```
    /// let cfg = herald_kafka::KafkaConfig::from_url("kafka://a:9092,b:9092?partitions=8", "svc").unwrap();
    /// assert_eq!(cfg.brokers, vec!["a:9092", "b:9092"]);
    /// assert_eq!(cfg.partitions, 8);
    /// assert!(herald_kafka::KafkaConfig::from_url("kafka://a:9092?compression=snappy", "svc").is_err());
    /// let cfg = herald_kafka::KafkaConfig::from_url("kafka://alice:p%2Fw@a:9092", "svc").unwrap();
    /// assert_eq!(cfg.brokers, vec!["a:9092"]);
    /// assert!(!format!("{cfg:?}").contains("p/w"));
    /// ```
    pub fn from_url(url: &str, service: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        // Each URL of a list: `kafka://[user:password@]host[:port][,host2...][?options]`. The
        // credentials run to the last `@` (a password may hold any character); they go to SASL,
        // never into the broker list, which librdkafka prints in its logs.
        let mut sasl_plain = None;
        let mut brokers = Vec::new();
        let mut queries = Vec::new();
        for part in herald::transport::split_url_list(url) {
            let rest = part
                .strip_prefix("kafka://")
                .ok_or_else(|| bad("expected kafka://host:port[,host2:port]".into()))?;
            let hosts_start = match rest.rfind('@') {
                Some(at) => {
                    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
                    sasl_plain = Some((decode(user), decode(password)));
                    at + 1
                }
                None => 0,
            };
            let (hosts, query) = rest[hosts_start..]
                .split_once('?')
                .unwrap_or((&rest[hosts_start..], ""));
            queries.push(query);
            for h in hosts.trim_end_matches('/').split(',').map(str::trim) {
                if h.is_empty() {
                    continue;
                }
                if h.contains(['/', ' ']) {
                    return Err(bad(format!(
                        "`{h}` is not host:port; expected kafka://host:port[,host2:port]"
                    )));
                }
                brokers.push(if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:9092")
                });
            }
        }
        let query = queries.join("&");
        if brokers.is_empty() {
            return Err(bad(
                "no broker given; expected kafka://host:port[,host2:port]".into(),
            ));
        }
        let mut cfg = KafkaConfig::new(brokers, service);
        cfg.sasl_plain = sasl_plain;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "partitions" => {
                    cfg.partitions =
                        value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            bad(format!("partitions={value}: expected a number >= 1"))
                        })?
                }
                "compression" => cfg.compression = value.to_string(),
                "cloudevents" => {
                    cfg.full_headers = match value {
                        "full" => true,
                        "compact" => false,
                        _ => return Err(bad(format!("cloudevents={value}: expected full or compact"))),
                    }
                }
                "outage_timeout_ms" => {
                    cfg.outage_timeout = Duration::from_millis(value.parse().map_err(|_| {
                        bad(format!("outage_timeout_ms={value}: expected milliseconds"))
                    })?)
                }
                other => {
                    return Err(bad(format!(
                    "unknown option `{other}`; known: partitions, compression, cloudevents, outage_timeout_ms"
                )))
                }
            }
        }
        cfg.validate().map_err(|e| match e {
            Error::Config(reason) => bad(reason),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Check the settings: brokers given, a compression librdkafka and the broker both read.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.is_empty() {
            return Err(Error::Config("no Kafka broker given".into()));
        }
        if !["none", "gzip", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(Error::Config(format!(
                "compression `{}` is not offered; use none, gzip, lz4 or zstd (snappy is refused: some Kafka-API brokers cannot read it)",
                self.compression
            )));
        }
        if self.partitions < 1 {
            return Err(Error::Config("partitions must be at least 1".into()));
        }
        Ok(())
    }

    /// Settings every client shares: the brokers and the client id.
    pub(crate) fn client(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", format!("{} herald {role}", self.service))
            .set("log_level", "3")
            // Back within a second of a broker restart: librdkafka's default backs off up to
            // 10 s, and a group member whose coordinator connection waits that long loses its
            // session (and its partitions) to a restart of a few seconds.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            // librdkafka 2.12's re-bootstrap after all brokers were down left consumer groups
            // waiting for a coordinator connection for minutes after a broker restart; the
            // brokers it already knows come back by themselves.
            .set("metadata.recovery.strategy", "none");
        if let Some((user, password)) = &self.sasl_plain {
            c.set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        if let Ok(d) = std::env::var("HERALD_KAFKA_DEBUG") {
            c.set("debug", d)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        c
    }

    /// The producer: acks from all in-sync replicas, idempotent (a retry inside librdkafka
    /// never writes a record twice), Java-compatible key hashing, so a Java producer puts an
    /// aggregate's events in the same partition.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = self.client("producer");
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("compression.type", &self.compression)
            .set(
                "message.timeout.ms",
                self.outage_timeout.as_millis().to_string(),
            );
        c
    }

    /// A consumer in `group` (a Herald queue): offsets committed by Herald only, a new group
    /// starting at the beginning of topics it has no offset for (a topic created after the
    /// queue was declared holds nothing older than the queue).
    pub(crate) fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.client("consumer");
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Long enough for a broker restart: Tansu answers a group's heartbeats only some
            // seconds after it is back, and a member whose session ends loses its partitions
            // and waits for a rebalance. A member that stops cleanly leaves at once.
            .set("session.timeout.ms", "30000")
            .set("heartbeat.interval.ms", "500")
            .set("partition.assignment.strategy", "roundrobin")
            .set("fetch.wait.max.ms", "500");
        c
    }

    /// A reader without a group: dead letters and the bindings topic, read from the start.
    pub(crate) fn reader(&self) -> ClientConfig {
        let mut c = self.client("reader");
        c.set("group.id", "herald-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        c
    }

    /// The retry levels of a queue: its declared delays, else the defaults; never zero.
    pub(crate) fn retry_levels(&self, declared: &[Duration]) -> Vec<Duration> {
        let mut levels: Vec<Duration> = if declared.is_empty() {
            self.default_retry_delays.clone()
        } else {
            declared.to_vec()
        };
        levels.retain(|d| !d.is_zero());
        levels.sort();
        levels.dedup();
        if levels.is_empty() {
            levels.push(Duration::from_secs(1));
        }
        levels
    }
}

/// The level a retry with `delay` goes through: the largest level not above `delay` (its
/// records are due in about the order they are written), or the smallest.
pub(crate) fn pick_level(levels: &[Duration], delay: Duration) -> Duration {
    levels
        .iter()
        .copied()
        .rev()
        .find(|l| *l <= delay)
        .or_else(|| levels.first().copied())
        .unwrap_or(delay)
}

/// The topic of an exchange: its name, which must already be a legal topic name.
pub(crate) fn exchange_topic(exchange: &str) -> Result<String> {
    if exchange.is_empty() || exchange.len() > MAX_TOPIC_LEN || !legal(exchange) {
        return Err(Error::Config(format!(
            "exchange `{exchange}` is not a Kafka topic name: use 1 to {MAX_TOPIC_LEN} of a-z, A-Z, 0-9, `.`, `_`, `-`"
        )));
    }
    Ok(exchange.to_string())
}

fn legal(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A queue name as the stem of its topics: unchanged when legal, else with other characters
/// replaced by `_` and a hash of the name appended (so two queues never share topics).
pub(crate) fn queue_stem(queue: &str) -> String {
    // Room for `.retry.<ms>ms` after the stem.
    const MAX_STEM: usize = 200;
    if legal(queue) && !queue.is_empty() && queue.len() <= MAX_STEM {
        return queue.to_string();
    }
    let mut stem: String = queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM - 17)
        .collect();
    stem.push_str(&format!("-{:016x}", fnv1a(queue.as_bytes())));
    stem
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `<queue>.retry.<ms>ms`: one retry topic per delay level.
pub(crate) fn retry_topic(queue: &str, level: Duration) -> String {
    format!("{}.retry.{}ms", queue_stem(queue), level.as_millis())
}

/// `<queue>.dlq`: the queue's dead letters (one partition, so they list in order).
pub(crate) fn dead_letter_topic(queue: &str) -> String {
    format!("{}.dlq", queue_stem(queue))
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
    fn urls_and_names() {
        let cfg = KafkaConfig::from_url("kafka://h1,h2:9093/?compression=lz4", "svc").unwrap();
        assert_eq!(cfg.brokers, vec!["h1:9092", "h2:9093"]);
        assert_eq!(cfg.compression, "lz4");
        assert!(KafkaConfig::from_url("kafka://", "svc").is_err());
        assert!(KafkaConfig::from_url("kafka://h?partitions=0", "svc").is_err());
        let e = KafkaConfig::from_url("kafka://h?colour=red", "svc").unwrap_err();
        assert!(e.to_string().contains("unknown option `colour`"), "{e}");
        assert_eq!(queue_stem("svc.order.created"), "svc.order.created");
        let odd = queue_stem("tail.#.x y");
        assert!(odd.starts_with("tail._.x_y-") && legal(&odd), "{odd}");
        assert_ne!(queue_stem("a b"), queue_stem("a_b"));
        assert!(exchange_topic("herald.events").is_ok());
        assert!(exchange_topic("bad name").is_err());
        let l = [Duration::from_millis(300), Duration::from_secs(1)];
        assert_eq!(pick_level(&l, Duration::ZERO), l[0]);
        assert_eq!(pick_level(&l, Duration::from_millis(500)), l[0]);
        assert_eq!(pick_level(&l, Duration::from_secs(9)), l[1]);
        assert_eq!(
            retry_topic("svc.a", Duration::from_millis(300)),
            "svc.a.retry.300ms"
        );
    }
}
