//! Circuit breaker: when a dependency keeps failing, stop taking messages for a while instead of
//! burning every message's attempts on it; then let one probe through, and resume when it
//! succeeds.
//!
//! Closed → (N consecutive retryable failures) → Open for `open_for` → HalfOpen: one probe at a
//! time; a success closes the circuit, a failure opens it again. While open the consumer asks
//! [`Layer::paused_for`] and takes nothing; a message that slips in is released without
//! counting an attempt.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    BoxFuture, Disposition, FailureKind, Handle, HandlerError, HandlerResult, Layer, Message,
};

/// When to open and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Consecutive retryable failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The breaker's state, observable for health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Messages flow.
    Closed,
    /// Consumption is paused.
    Open,
    /// One probe is allowed through.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

/// Pauses consumption while a dependency keeps failing: after
/// [`CircuitBreakerConfig`]'s run of consecutive retryable failures the consumer takes nothing for
/// a while, then lets one probe through and resumes when it succeeds. Clones share one breaker, so
/// several subscriptions can stand behind one dependency.
///
/// ```
/// use herald::middleware::{CircuitBreakerConfig, CircuitBreakerLayer};
/// let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::default());
/// // Outside the dead-letter layer: it sees every final outcome and pauses the subscription.
/// let pipeline = herald::Pipeline::standard().wrap(breaker.clone());
/// assert_eq!(breaker.state(), herald::middleware::CircuitState::Closed);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    config: CircuitBreakerConfig,
    state: Arc<Mutex<State>>,
}

impl CircuitBreakerLayer {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        CircuitBreakerLayer {
            config,
            state: Arc::new(Mutex::new(State {
                failures: 0,
                opened_at: None,
                probing: false,
            })),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        let s = lock(&self.state);
        match s.opened_at {
            None => CircuitState::Closed,
            Some(at) if at.elapsed() < self.config.open_for => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Layer for CircuitBreakerLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Breaker {
            inner,
            layer: self.clone(),
        })
    }

    /// Open: until the probe is due. Half-open with a probe out: until its verdict.
    fn paused_for(&self) -> Option<Duration> {
        let s = lock(&self.state);
        match s.opened_at {
            Some(at) if at.elapsed() < self.config.open_for => {
                Some(self.config.open_for - at.elapsed())
            }
            Some(_) if s.probing => Some(Duration::from_millis(50)),
            _ => None,
        }
    }
}

struct Breaker {
    inner: Arc<dyn Handle>,
    layer: CircuitBreakerLayer,
}

impl Handle for Breaker {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let config = layer.config;
            // Admission: closed passes, open refuses, half-open lets exactly one probe through.
            let probe = {
                let mut s = lock(&layer.state);
                match s.opened_at {
                    None => false,
                    Some(at) if at.elapsed() < config.open_for || s.probing => {
                        let wait = config
                            .open_for
                            .saturating_sub(at.elapsed())
                            .max(Duration::from_millis(100));
                        return Err(HandlerError::new(
                            FailureKind::CircuitOpen,
                            "circuit open: dependency failing",
                        )
                        .with_disposition(Disposition::Release(wait)));
                    }
                    Some(_) => {
                        s.probing = true;
                        true
                    }
                }
            };
            let result = inner.call(msg).await;
            let mut s = lock(&layer.state);
            if probe {
                s.probing = false;
            }
            match &result {
                Err(e) if e.kind.is_retryable() => {
                    s.failures += 1;
                    if probe || s.failures >= config.failure_threshold {
                        if s.opened_at.is_none() || probe {
                            tracing::warn!(failures = s.failures, open_for = ?config.open_for, "circuit breaker opened");
                        }
                        s.opened_at = Some(Instant::now());
                    }
                }
                _ => {
                    if s.opened_at.is_some() {
                        tracing::info!("circuit breaker closed: probe succeeded");
                    }
                    s.failures = 0;
                    s.opened_at = None;
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::middleware::handle_fn;
    use crate::middleware::test_support::message;

    #[tokio::test]
    async fn opens_pauses_probes_and_closes() {
        let healthy = Arc::new(AtomicBool::new(false));
        let h2 = healthy.clone();
        let layer = CircuitBreakerLayer::new(CircuitBreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
        });
        let h = layer.layer(handle_fn(move |_| {
            let ok = h2.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::transient("db down"))
                }
            }
        }));
        for _ in 0..3 {
            assert_eq!(
                h.call(message(1)).await.unwrap_err().kind,
                FailureKind::Handler
            );
        }
        assert_eq!(layer.state(), CircuitState::Open);
        assert!(layer.paused_for().is_some());
        let refused = h.call(message(1)).await.unwrap_err();
        assert_eq!(refused.kind, FailureKind::CircuitOpen);
        assert!(matches!(refused.disposition, Some(Disposition::Release(_))));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(layer.state(), CircuitState::HalfOpen);
        // A failed probe opens it again.
        assert_eq!(
            h.call(message(1)).await.unwrap_err().kind,
            FailureKind::Handler
        );
        assert_eq!(layer.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(250)).await;
        healthy.store(true, Ordering::SeqCst);
        assert!(h.call(message(1)).await.is_ok());
        assert_eq!(layer.state(), CircuitState::Closed);
        assert!(layer.paused_for().is_none());
    }

    #[tokio::test]
    async fn permanent_failures_do_not_trip_it() {
        let layer = CircuitBreakerLayer::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(10),
        });
        let h = layer.layer(handle_fn(|_| async {
            Err(HandlerError::new(FailureKind::Decode, "bad"))
        }));
        let _ = h.call(message(1)).await;
        assert_eq!(layer.state(), CircuitState::Closed);
    }
}
