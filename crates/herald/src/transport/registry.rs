//! Which transport opens which URL: a process-wide table of [`Connector`]s by URL scheme.
//!
//! `memory://` and `sqlite://` are built in. A transport crate registers its own schemes, once,
//! before the first bus is built (the `herald` CLI registers every transport it ships):
//!
//! ```text
//! herald_rabbitmq::register();   // amqp://, amqps://
//! herald_nats::register();       // nats://
//! let bus = herald::Bus::builder().broker("nats://127.0.0.1:4222").build().await?;
//! ```
//!
//! So adding a transport touches no file in `herald`, and a URL whose scheme nobody registered
//! fails with one line naming the schemes this program knows.

use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;

use super::url::{redact_url, scheme_of, DEFAULT_SQLITE_PATH};
use super::Transport;
use crate::error::{Error, Result};

/// Opens a transport for the URLs of its schemes.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The URL schemes this connector opens, e.g. `["amqp", "amqps"]`.
    fn schemes(&self) -> &'static [&'static str];

    /// Check a URL's form without connecting (configuration validation), with an
    /// [`Error::InvalidUrl`] that says what is expected. The default accepts any URL.
    fn check(&self, url: &str) -> Result<()> {
        let _ = url;
        Ok(())
    }

    /// Open a transport; `service` names the connections on brokers that show names.
    async fn connect(&self, url: &str, service: &str) -> Result<Arc<dyn Transport>>;
}

fn table() -> &'static RwLock<Vec<Arc<dyn Connector>>> {
    static TABLE: OnceLock<RwLock<Vec<Arc<dyn Connector>>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        #[allow(unused_mut)] // without `sqlite`, memory is all there is
        let mut builtin: Vec<Arc<dyn Connector>> = vec![Arc::new(MemoryConnector)];
        #[cfg(feature = "sqlite")]
        builtin.push(Arc::new(SqliteConnector));
        RwLock::new(builtin)
    })
}

/// Register a connector for its schemes; a later registration of a scheme replaces an earlier
/// one, so registering twice is harmless.
pub fn register(connector: Arc<dyn Connector>) {
    let mut table = table().write().unwrap_or_else(|e| e.into_inner());
    let schemes = connector.schemes();
    table.retain(|c| !c.schemes().iter().any(|s| schemes.contains(s)));
    table.push(connector);
}

/// Every scheme this process can open, in registration order (`memory`, `sqlite`, ...).
pub fn known_schemes() -> Vec<&'static str> {
    let table = table().read().unwrap_or_else(|e| e.into_inner());
    table
        .iter()
        .flat_map(|c| c.schemes().iter().copied())
        .collect()
}

fn find(url: &str) -> Result<(Arc<dyn Connector>, &str)> {
    let Some(scheme) = scheme_of(url) else {
        return Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: format!("expected scheme://..., one of {}", listed()),
        });
    };
    let table = table().read().unwrap_or_else(|e| e.into_inner());
    match table.iter().find(|c| c.schemes().contains(&scheme)) {
        Some(c) => Ok((c.clone(), scheme)),
        None => Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: format!(
                "unknown scheme `{scheme}`; this program knows {} (a transport crate adds its schemes with its `register()`)",
                listed()
            ),
        }),
    }
}

fn listed() -> String {
    known_schemes()
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn or_default(url: &str) -> String {
    let url = url.trim();
    if url.is_empty() {
        format!("sqlite://{DEFAULT_SQLITE_PATH}")
    } else {
        url.to_string()
    }
}

/// Check a broker URL without connecting: a known scheme, in the form its transport expects.
/// An empty URL means the default embedded broker.
pub fn check_url(url: &str) -> Result<()> {
    let url = or_default(url);
    let (connector, _) = find(&url)?;
    connector.check(&url)
}

/// Open the transport a URL names. An empty URL means the default embedded broker
/// (`sqlite://.herald/herald.db`).
pub async fn connect(url: &str, service: &str) -> Result<Arc<dyn Transport>> {
    let url = or_default(url);
    let (connector, _) = find(&url)?;
    connector.check(&url)?;
    connector.connect(&url, service).await
}

/// `memory://` or `memory://name`: the same name in one process is the same broker.
struct MemoryConnector;

#[async_trait]
impl Connector for MemoryConnector {
    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }
    async fn connect(&self, url: &str, _service: &str) -> Result<Arc<dyn Transport>> {
        let name = url.split_once("://").map(|(_, n)| n).unwrap_or_default();
        Ok(Arc::new(super::memory::MemoryTransport::named(name)))
    }
}

/// `sqlite://relative/path` or `sqlite:///absolute/path`.
#[cfg(feature = "sqlite")]
struct SqliteConnector;

#[cfg(feature = "sqlite")]
impl SqliteConnector {
    fn path(url: &str) -> Result<std::path::PathBuf> {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::InvalidUrl {
                url: redact_url(url),
                reason: "sqlite:// needs a file path, e.g. sqlite://.herald/herald.db".into(),
            });
        }
        Ok(std::path::PathBuf::from(path))
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Connector for SqliteConnector {
    fn schemes(&self) -> &'static [&'static str] {
        &["sqlite"]
    }
    fn check(&self, url: &str) -> Result<()> {
        Self::path(url).map(|_| ())
    }
    async fn connect(&self, url: &str, _service: &str) -> Result<Arc<dyn Transport>> {
        let path = Self::path(url)?;
        Ok(Arc::new(super::sqlite::SqliteTransport::open(&path).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_schemes_and_clear_errors() {
        assert!(known_schemes().contains(&"memory"));
        check_url("memory://").unwrap();
        check_url("").unwrap();
        #[cfg(feature = "sqlite")]
        {
            check_url("sqlite:///tmp/x.db").unwrap();
            assert!(check_url("sqlite://").is_err());
        }
        let e = check_url("kafkaa://u:pw@host").unwrap_err().to_string();
        assert!(e.contains("unknown scheme `kafkaa`"), "{e}");
        assert!(e.contains("memory://"), "names what it knows: {e}");
        assert!(!e.contains("pw"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = check_url("localhost:5672").unwrap_err().to_string();
        assert!(e.contains("expected scheme://"), "{e}");
    }

    struct Fake;

    #[async_trait]
    impl Connector for Fake {
        fn schemes(&self) -> &'static [&'static str] {
            &["fake-test"]
        }
        fn check(&self, url: &str) -> Result<()> {
            if url.ends_with("bad") {
                return Err(Error::InvalidUrl {
                    url: url.into(),
                    reason: "bad".into(),
                });
            }
            Ok(())
        }
        async fn connect(&self, _: &str, _: &str) -> Result<Arc<dyn Transport>> {
            Ok(Arc::new(crate::transport::memory::MemoryTransport::new()))
        }
    }

    #[tokio::test]
    async fn a_registered_connector_opens_its_scheme() {
        register(Arc::new(Fake));
        register(Arc::new(Fake));
        assert_eq!(
            known_schemes()
                .iter()
                .filter(|s| **s == "fake-test")
                .count(),
            1
        );
        assert!(check_url("fake-test://bad").is_err());
        let t = connect("fake-test://x", "svc").await.unwrap();
        assert_eq!(t.kind(), "memory");
    }
}
