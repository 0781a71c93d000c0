//! Broker URLs: which transport, where, and how to print them without secrets.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::transport::Transport;

/// The default embedded broker file when no URL is given.
pub const DEFAULT_SQLITE_PATH: &str = ".herald/herald.db";

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `memory://` or `memory://name`: an in-process broker; the same name shares one broker.
    Memory(String),
    /// `sqlite://path` (relative) or `sqlite:///abs/path`: the embedded durable broker.
    Sqlite(PathBuf),
    /// `amqp://` / `amqps://`: RabbitMQ. Several URLs separated by commas form a cluster list.
    Amqp(Vec<String>),
    /// `nats://`: NATS JetStream (not in this build yet).
    Nats(String),
}

impl BrokerUrl {
    /// Parse a broker URL. An empty string means the default embedded broker.
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(BrokerUrl::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH)));
        }
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact_url(raw),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(invalid(
                "expected scheme://..., one of sqlite://PATH, memory://, amqp://HOST, amqps://HOST, nats://HOST",
            ));
        };
        match scheme {
            "memory" => Ok(BrokerUrl::Memory(rest.to_string())),
            "sqlite" => {
                let path = rest.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(invalid(
                        "sqlite:// needs a file path, e.g. sqlite://.herald/herald.db",
                    ));
                }
                Ok(BrokerUrl::Sqlite(PathBuf::from(path)))
            }
            "amqp" | "amqps" => {
                let urls: Vec<String> = raw.split(',').map(|u| u.trim().to_string()).collect();
                for u in &urls {
                    let parsed = url::Url::parse(u).map_err(|e| Error::InvalidUrl {
                        url: redact_url(u),
                        reason: e.to_string(),
                    })?;
                    if !matches!(parsed.scheme(), "amqp" | "amqps") {
                        return Err(invalid(
                            "every URL in a cluster list must be amqp:// or amqps://",
                        ));
                    }
                    if parsed.host_str().unwrap_or_default().is_empty() {
                        return Err(invalid(
                            "an amqp URL needs a host, e.g. amqp://guest:guest@127.0.0.1:5672/%2f",
                        ));
                    }
                }
                Ok(BrokerUrl::Amqp(urls))
            }
            "nats" => Ok(BrokerUrl::Nats(raw.to_string())),
            other => Err(invalid(&format!(
                "unknown scheme `{other}`; use sqlite://, memory://, amqp://, amqps:// or nats://"
            ))),
        }
    }
}

/// The URL with any password replaced by `***`, safe for logs and errors.
///
/// ```
/// assert_eq!(herald::transport::redact_url("amqp://guest:secret@host/%2f"), "amqp://guest:***@host/%2f");
/// ```
pub fn redact_url(raw: &str) -> String {
    raw.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            let (authority, tail) = match rest.find(['/', '?']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    if userinfo.contains(':') {
                        format!("{scheme}://{user}:***@{host}{tail}")
                    } else {
                        one.to_string()
                    }
                }
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Open the transport a URL names.
pub async fn connect(raw: &str, service: &str) -> Result<Arc<dyn Transport>> {
    let _ = service;
    match BrokerUrl::parse(raw)? {
        BrokerUrl::Memory(name) => Ok(Arc::new(crate::transport::memory::MemoryTransport::named(
            &name,
        ))),
        #[cfg(feature = "sqlite")]
        BrokerUrl::Sqlite(path) => Ok(Arc::new(
            crate::transport::sqlite::SqliteTransport::open(&path).await?,
        )),
        #[cfg(feature = "rabbitmq")]
        BrokerUrl::Amqp(urls) => Ok(Arc::new(
            crate::transport::rabbitmq::RabbitTransport::connect(
                crate::transport::rabbitmq::RabbitConfig::new(urls, service),
            )
            .await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(Error::InvalidUrl {
            url: redact_url(raw),
            reason: format!(
                "this build of Herald has no transport for {}; enable its cargo feature",
                match other {
                    BrokerUrl::Sqlite(_) => "sqlite:// (feature `sqlite`)",
                    BrokerUrl::Amqp(_) => "amqp:// (feature `rabbitmq`)",
                    _ => "nats:// (not implemented yet)",
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            BrokerUrl::parse("").unwrap(),
            BrokerUrl::Sqlite(DEFAULT_SQLITE_PATH.into())
        );
        assert_eq!(
            BrokerUrl::parse("sqlite:///tmp/x.db").unwrap(),
            BrokerUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            BrokerUrl::parse("sqlite://rel/x.db").unwrap(),
            BrokerUrl::Sqlite("rel/x.db".into())
        );
        assert_eq!(
            BrokerUrl::parse("memory://").unwrap(),
            BrokerUrl::Memory(String::new())
        );
        assert!(
            matches!(BrokerUrl::parse("amqp://a:b@h1,amqp://h2").unwrap(), BrokerUrl::Amqp(v) if v.len() == 2)
        );
    }

    #[test]
    fn bad_urls_are_clear_and_redacted() {
        let e = BrokerUrl::parse("kafka://u:pw@host")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown scheme `kafka`"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        assert!(BrokerUrl::parse("localhost:5672").is_err());
        assert!(BrokerUrl::parse("sqlite://").is_err());
        let e = BrokerUrl::parse("amqp://u:pw@").unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("amqp://h/%2f"), "amqp://h/%2f");
        assert_eq!(
            redact_url("amqp://u:p@h,amqp://v:q@g"),
            "amqp://u:***@h,amqp://v:***@g"
        );
    }
}
