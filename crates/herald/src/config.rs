//! Configuration: `herald.toml`, then `HERALD_*` environment variables on top, then builder
//! calls or CLI flags on top of those. Unknown keys and malformed values are errors that name
//! the key, never silently ignored.
//!
//! ```toml
//! broker = "amqp://guest:guest@127.0.0.1:5672/%2f"   # HERALD_BROKER
//! exchange = "knowledge_nest_events"                  # HERALD_EXCHANGE
//! service = "notification-service"                    # HERALD_SERVICE
//! prefetch = 64                                       # HERALD_PREFETCH
//! concurrency = 16                                    # HERALD_CONCURRENCY
//! max_message_bytes = 1048576                         # HERALD_MAX_MESSAGE_BYTES
//! handler_timeout_ms = 30000                          # HERALD_HANDLER_TIMEOUT_MS
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::transport::redact_url;

/// The file read when no path is given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

/// Herald's settings. See the module docs for the keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Broker URL; empty means the embedded default (`sqlite://.herald/herald.db`).
    pub broker: String,
    /// The topic exchange name shared by every service.
    pub exchange: String,
    /// This service's name: the CloudEvents source and the queue-name prefix.
    pub service: String,
    /// Unsettled deliveries per subscription.
    pub prefetch: usize,
    /// Concurrent handler calls per subscription.
    pub concurrency: usize,
    /// Largest body accepted on publish and on consume.
    pub max_message_bytes: usize,
    /// Default handler timeout in milliseconds (0 = none).
    pub handler_timeout_ms: u64,
    /// Allow publishing events no queue receives (off: that is an error).
    pub allow_unroutable: bool,
    /// How long shutdown waits for in-flight handlers, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: String::new(),
            exchange: "herald.events".into(),
            service: "herald-app".into(),
            prefetch: 64,
            concurrency: 16,
            max_message_bytes: 1024 * 1024,
            handler_timeout_ms: 30_000,
            allow_unroutable: false,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl Config {
    /// Read `path` (which must exist) or `./herald.toml` (if it exists), then apply `HERALD_*`.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parse a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read {}: {e}",
                PathBuf::from(path).display()
            ))
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config(e.message().to_string()))
    }

    /// Apply `HERALD_*` variables read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn num<T: std::str::FromStr>(key: &str, v: String) -> Result<T> {
            v.trim()
                .parse()
                .map_err(|_| Error::Config(format!("{key}=`{v}` is not a valid number")))
        }
        if let Some(v) = get("HERALD_BROKER") {
            self.broker = v;
        }
        if let Some(v) = get("HERALD_EXCHANGE") {
            self.exchange = v;
        }
        if let Some(v) = get("HERALD_SERVICE") {
            self.service = v;
        }
        if let Some(v) = get("HERALD_PREFETCH") {
            self.prefetch = num("HERALD_PREFETCH", v)?;
        }
        if let Some(v) = get("HERALD_CONCURRENCY") {
            self.concurrency = num("HERALD_CONCURRENCY", v)?;
        }
        if let Some(v) = get("HERALD_MAX_MESSAGE_BYTES") {
            self.max_message_bytes = num("HERALD_MAX_MESSAGE_BYTES", v)?;
        }
        if let Some(v) = get("HERALD_HANDLER_TIMEOUT_MS") {
            self.handler_timeout_ms = num("HERALD_HANDLER_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("HERALD_ALLOW_UNROUTABLE") {
            self.allow_unroutable = matches!(v.trim(), "1" | "true" | "yes");
        }
        Ok(())
    }

    /// Check values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        if self.exchange.trim().is_empty() {
            return Err(Error::Config("`exchange` cannot be empty".into()));
        }
        if self.service.trim().is_empty() || self.service.contains(['*', '#', ' ']) {
            return Err(Error::Config(format!(
                "`service` must be a plain name like `notification-service`, got `{}`",
                self.service
            )));
        }
        if self.prefetch == 0 || self.concurrency == 0 {
            return Err(Error::Config(
                "`prefetch` and `concurrency` must be at least 1".into(),
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(Error::Config(
                "`max_message_bytes` must be at least 1".into(),
            ));
        }
        crate::transport::check_url(&self.broker)?;
        Ok(())
    }

    /// The broker URL safe to print.
    pub fn broker_redacted(&self) -> String {
        redact_url(&self.broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_then_env() {
        let mut c = Config::from_toml("exchange = \"kn\"\nprefetch = 10\n").unwrap();
        assert_eq!(c.exchange, "kn");
        assert_eq!(c.prefetch, 10);
        c.apply_env(|k| (k == "HERALD_PREFETCH").then(|| "20".to_string()))
            .unwrap();
        assert_eq!(c.prefetch, 20);
        c.validate().unwrap();
    }

    #[test]
    fn bad_config_is_named() {
        let e = Config::from_toml("prefech = 10").unwrap_err().to_string();
        assert!(e.contains("prefech"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "HERALD_PREFETCH").then(|| "lots".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("HERALD_PREFETCH"));
        c.broker = "kafka://x".into();
        assert!(c.validate().is_err());
        assert!(Config::from_file(Path::new("/nonexistent/herald.toml")).is_err());
    }
}
