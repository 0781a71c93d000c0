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
//! request_timeout_ms = 5000                           # HERALD_REQUEST_TIMEOUT_MS
//! connect_timeout_ms = 0                              # HERALD_CONNECT_TIMEOUT_MS (0: the transport's own)
//!
//! # The standard pipeline's retry policy (Pipeline::standard).
//! [retry]
//! max_attempts = 5                                    # HERALD_RETRY_MAX_ATTEMPTS
//! immediate = 2                                       # HERALD_RETRY_IMMEDIATE
//! backoff = "exponential"                             # HERALD_RETRY_BACKOFF: exponential | linear | fixed
//! initial_ms = 1000                                   # HERALD_RETRY_INITIAL_MS
//! max_ms = 300000                                     # HERALD_RETRY_MAX_MS
//! factor = 2.0                                        # HERALD_RETRY_FACTOR (exponential only)
//! jitter = 0.2                                        # HERALD_RETRY_JITTER
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::middleware::{Backoff, RetryPolicy};
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
    /// How long [`Bus::request`](crate::Bus::request) waits for a reply, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long building a bus waits for the broker, in milliseconds; 0 leaves it to the
    /// transport (RabbitMQ: its `outage_timeout`, 30 s). One-shot CLI commands use 5 s.
    pub connect_timeout_ms: u64,
    /// The standard pipeline's retry policy.
    pub retry: RetrySettings,
}

/// How the standard pipeline retries (the `[retry]` table): [`RetryPolicy`] as configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Deliveries in all before the dead letters (1: no redelivery).
    pub max_attempts: u32,
    /// In-process re-calls within one delivery.
    pub immediate: u32,
    /// `exponential`, `linear` or `fixed`.
    pub backoff: String,
    /// The first delay (linear: the step; fixed: every delay), in milliseconds.
    pub initial_ms: u64,
    /// The longest delay, in milliseconds.
    pub max_ms: u64,
    /// Exponential growth factor.
    pub factor: f64,
    /// Random spread as a fraction of the delay (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for RetrySettings {
    /// [`RetryPolicy::default`]: 5 deliveries, 2 immediate re-calls, 1 s doubling to 5 min, ±20%.
    fn default() -> Self {
        RetrySettings {
            max_attempts: 5,
            immediate: 2,
            backoff: "exponential".into(),
            initial_ms: 1000,
            max_ms: 300_000,
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetrySettings {
    /// The policy these settings describe (valid once [`Config::validate`] passed).
    pub fn policy(&self) -> RetryPolicy {
        let initial = Duration::from_millis(self.initial_ms);
        let max = Duration::from_millis(self.max_ms);
        let backoff = match self.backoff.as_str() {
            "linear" => Backoff::Linear { initial, max },
            "fixed" => Backoff::Fixed(initial),
            _ => Backoff::Exponential {
                initial,
                factor: self.factor,
                max,
            },
        };
        RetryPolicy {
            max_attempts: self.max_attempts,
            immediate: self.immediate,
            backoff,
            jitter: self.jitter,
        }
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.backoff.as_str(), "exponential" | "linear" | "fixed") {
            return Err(Error::Config(format!(
                "`retry.backoff` must be exponential, linear or fixed, got `{}`",
                self.backoff
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config(
                "`retry.max_attempts` must be at least 1 (1: no redelivery)".into(),
            ));
        }
        let factor_ok = self.factor >= 1.0 && self.factor.is_finite();
        if !((0.0..=1.0).contains(&self.jitter) && factor_ok) {
            return Err(Error::Config(
                "`retry.jitter` must be within 0..=1 and `retry.factor` at least 1".into(),
            ));
        }
        Ok(())
    }
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
            request_timeout_ms: 5_000,
            connect_timeout_ms: 0,
            retry: RetrySettings::default(),
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
        if let Some(v) = get("HERALD_REQUEST_TIMEOUT_MS") {
            self.request_timeout_ms = num("HERALD_REQUEST_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("HERALD_CONNECT_TIMEOUT_MS") {
            self.connect_timeout_ms = num("HERALD_CONNECT_TIMEOUT_MS", v)?;
        }
        let r = &mut self.retry;
        if let Some(v) = get("HERALD_RETRY_MAX_ATTEMPTS") {
            r.max_attempts = num("HERALD_RETRY_MAX_ATTEMPTS", v)?;
        }
        if let Some(v) = get("HERALD_RETRY_IMMEDIATE") {
            r.immediate = num("HERALD_RETRY_IMMEDIATE", v)?;
        }
        if let Some(v) = get("HERALD_RETRY_BACKOFF") {
            r.backoff = v.trim().to_lowercase();
        }
        if let Some(v) = get("HERALD_RETRY_INITIAL_MS") {
            r.initial_ms = num("HERALD_RETRY_INITIAL_MS", v)?;
        }
        if let Some(v) = get("HERALD_RETRY_MAX_MS") {
            r.max_ms = num("HERALD_RETRY_MAX_MS", v)?;
        }
        if let Some(v) = get("HERALD_RETRY_FACTOR") {
            r.factor = num("HERALD_RETRY_FACTOR", v)?;
        }
        if let Some(v) = get("HERALD_RETRY_JITTER") {
            r.jitter = num("HERALD_RETRY_JITTER", v)?;
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
        self.retry.validate()?;
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

    #[test]
    fn retry_settings_from_toml_and_env() {
        let mut c = Config::from_toml(
            "[retry]\nmax_attempts = 3\nbackoff = \"linear\"\ninitial_ms = 250\njitter = 0.0\n",
        )
        .unwrap();
        c.validate().unwrap();
        let p = c.retry.policy();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(
            p.base_delay(2),
            Duration::from_millis(500),
            "linear: 2 x 250 ms"
        );
        c.apply_env(|k| match k {
            "HERALD_RETRY_BACKOFF" => Some("fixed".into()),
            "HERALD_RETRY_MAX_ATTEMPTS" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        let p = c.retry.policy();
        assert_eq!(
            (p.max_attempts, p.base_delay(5)),
            (7, Duration::from_millis(250))
        );
        assert_eq!(Config::default().retry.policy(), RetryPolicy::default());
        let e = Config::from_toml("[retry]\nbackof = \"linear\"").unwrap_err();
        assert!(e.to_string().contains("backof"), "{e}");
        c.retry.backoff = "sideways".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("retry.backoff"));
    }
}
