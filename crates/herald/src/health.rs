//! Health checks: components report `up`, `degraded` or `down`, a [`Health`] registry folds them
//! into one [`HealthReport`]. The [`Bus`] is a check itself (broker connection, consumers
//! running); other crates add theirs (the outbox relay's lag in `herald-outbox`), and
//! `herald-http` serves the report as `/health/ready`.
//!
//! ```
//! use std::sync::Arc;
//! use herald::health::{Health, HealthStatus};
//! use herald::Bus;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus = Bus::builder().service("svc").broker("memory://health-doc").build().await?;
//! bus.start().await?;
//! let health = Health::new().with(Arc::new(bus.clone()));
//! let report = health.report().await;
//! assert_eq!(report.status, HealthStatus::Up);
//! bus.shutdown().await?;
//! assert_eq!(health.report().await.status, HealthStatus::Down);
//! # Ok::<(), herald::Error>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Bus;

/// How well a component works. Ordered from best to worst, so the overall status is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working.
    Up,
    /// Working, but something needs attention (e.g. a lagging outbox relay).
    Degraded,
    /// Not working.
    Down,
}

/// The health of one component: `broker`, `consumers`, `outbox`, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentHealth {
    /// The component's name.
    pub name: String,
    /// Its status.
    pub status: HealthStatus,
    /// What a person should know, e.g. `3 of 4 running`.
    pub detail: String,
}

impl ComponentHealth {
    /// A component's health.
    pub fn new(name: impl Into<String>, status: HealthStatus, detail: impl Into<String>) -> Self {
        ComponentHealth {
            name: name.into(),
            status,
            detail: detail.into(),
        }
    }
}

/// Every component's health and the overall status: `down` if any is down, else `degraded` if any
/// is degraded, else `up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The overall status.
    pub status: HealthStatus,
    /// Each component.
    pub components: Vec<ComponentHealth>,
}

impl HealthReport {
    /// Fold components into a report.
    pub fn from_components(components: Vec<ComponentHealth>) -> Self {
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Up);
        HealthReport { status, components }
    }
}

/// Something that can tell its health. Checks should be quick (a probe calls them every few
/// seconds) and must not fail: report a failure as a `down` component instead.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// The components this check knows about.
    async fn check(&self) -> Vec<ComponentHealth>;
}

/// A registry of health checks. Cheap to clone.
///
/// Each component is also reachable on its own ([`component`](Health::component); with
/// `herald-http`, at `/health/<name>`), under its name or an [`alias`](Health::alias): reference
/// 001's one URL per component.
///
/// ```
/// use std::sync::Arc;
/// use herald::health::{Health, HealthStatus};
/// use herald::Bus;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = Bus::builder().service("svc").broker("memory://health-alias-doc").build().await?;
/// let health = Health::new()
///     .with(Arc::new(bus.clone()))
///     .alias("rabbitmq", "broker"); // GET /health/rabbitmq is the broker component
/// let broker = health.component("rabbitmq").await.expect("known");
/// assert_eq!((broker.name.as_str(), broker.status), ("broker", HealthStatus::Up));
/// assert!(health.component("elasticsearch").await.is_none());
/// # bus.shutdown().await?;
/// # Ok::<(), herald::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<Arc<dyn HealthCheck>>,
    /// (alias, component name).
    aliases: Vec<(String, String)>,
}

impl Health {
    /// No checks yet: the report is `up` with no components.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a check.
    pub fn with(mut self, check: Arc<dyn HealthCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// Also answer to `alias` for the component called `component` (e.g. `rabbitmq` for
    /// `broker`).
    pub fn alias(mut self, alias: impl Into<String>, component: impl Into<String>) -> Self {
        self.aliases.push((alias.into(), component.into()));
        self
    }

    /// Run every check (concurrently) and fold the results.
    pub async fn report(&self) -> HealthReport {
        let all = futures::future::join_all(self.checks.iter().map(|c| c.check())).await;
        HealthReport::from_components(all.into_iter().flatten().collect())
    }

    /// One component, by its name or an alias; `None` when no check reports it.
    pub async fn component(&self, name: &str) -> Option<ComponentHealth> {
        let wanted = self
            .aliases
            .iter()
            .find(|(alias, _)| alias == name)
            .map_or(name, |(_, component)| component.as_str());
        self.report()
            .await
            .components
            .into_iter()
            .find(|c| c.name == wanted)
    }

    /// Every name a component answers to: the components' own, then the aliases.
    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .report()
            .await
            .components
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.extend(self.aliases.iter().map(|(alias, _)| alias.clone()));
        names
    }
}

#[async_trait]
impl HealthCheck for Bus {
    /// `broker`: down once the bus is shut down or the transport lost its connection.
    /// `consumers`: down if any started subscription's consumer task has ended.
    async fn check(&self) -> Vec<ComponentHealth> {
        let kind = self.transport().kind();
        let broker = if self.is_shut_down() {
            ComponentHealth::new(
                "broker",
                HealthStatus::Down,
                format!("{kind}: bus shut down"),
            )
        } else if self.transport().is_connected() {
            ComponentHealth::new("broker", HealthStatus::Up, format!("{kind} connected"))
        } else {
            ComponentHealth::new(
                "broker",
                HealthStatus::Down,
                format!("{kind} disconnected; reconnecting"),
            )
        };
        let (running, started) = self.consumers_running();
        let status = if self.is_shut_down() || running < started {
            HealthStatus::Down
        } else {
            HealthStatus::Up
        };
        let consumers = ComponentHealth::new(
            "consumers",
            status,
            format!("{running} of {started} running"),
        );
        vec![broker, consumers]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status_is_the_worst_component() {
        let up = ComponentHealth::new("a", HealthStatus::Up, "");
        let degraded = ComponentHealth::new("b", HealthStatus::Degraded, "");
        let down = ComponentHealth::new("c", HealthStatus::Down, "");
        assert_eq!(
            HealthReport::from_components(vec![]).status,
            HealthStatus::Up
        );
        assert_eq!(
            HealthReport::from_components(vec![up.clone(), degraded.clone()]).status,
            HealthStatus::Degraded
        );
        assert_eq!(
            HealthReport::from_components(vec![down, up, degraded]).status,
            HealthStatus::Down
        );
    }

    #[test]
    fn serializes_lowercase() {
        let r = HealthReport::from_components(vec![ComponentHealth::new(
            "broker",
            HealthStatus::Degraded,
            "x",
        )]);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"status":"degraded","components":[{"name":"broker","status":"degraded","detail":"x"}]})
        );
    }
}
