//! Retry: a few immediate attempts in-process, then delayed redelivery through the transport with
//! exponential (or linear, or fixed) backoff and jitter, until `max_attempts` deliveries have
//! failed; then the dead letters.
//!
//! Immediate attempts absorb blips (a dropped connection to a database) without a round trip
//! through the broker; delayed redelivery frees the consumer for other messages while a slower
//! fault clears, and survives a restart of the consumer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::{BoxFuture, Disposition, Handle, HandlerResult, Layer, Message};

/// How the delay grows between delivery attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `initial * attempt`, capped at `max`.
    Linear {
        /// The first delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// `initial * factor^(attempt-1)`, capped at `max`.
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The growth factor.
        factor: f64,
        /// The cap.
        max: Duration,
    },
}

/// When and how often to try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total deliveries before giving up (1 = no redelivery).
    pub max_attempts: u32,
    /// In-process re-calls within one delivery, before asking for a delayed redelivery.
    pub immediate: u32,
    /// The delay schedule between deliveries.
    pub backoff: Backoff,
    /// Random spread, as a fraction of the delay (0.2 = ±20%), so retries of many messages
    /// failing together do not arrive together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 deliveries, 2 immediate re-calls each, exponential 1 s → 2 s → 4 s → 8 s, ±20% jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            immediate: 2,
            backoff: Backoff::Exponential {
                initial: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(300),
            },
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: a failure goes straight to the dead letters.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            immediate: 0,
            backoff: Backoff::Fixed(Duration::ZERO),
            jitter: 0.0,
        }
    }

    /// Exponential backoff from `initial`, doubling, with this many deliveries in all.
    pub fn exponential(max_attempts: u32, initial: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            backoff: Backoff::Exponential {
                initial,
                factor: 2.0,
                max: Duration::from_secs(300),
            },
            ..Default::default()
        }
    }

    /// Linear backoff: `step`, `2 × step`, `3 × step`, ... (capped at 5 minutes), with this many
    /// deliveries in all.
    ///
    /// ```
    /// use std::time::Duration;
    /// use herald::middleware::RetryPolicy;
    /// let p = RetryPolicy::linear(4, Duration::from_secs(2));
    /// assert_eq!(p.base_delay(1), Duration::from_secs(2));
    /// assert_eq!(p.base_delay(3), Duration::from_secs(6));
    /// assert_eq!(p.delay_levels().len(), 3);
    /// ```
    pub fn linear(max_attempts: u32, step: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            backoff: Backoff::Linear {
                initial: step,
                max: Duration::from_secs(300),
            },
            ..Default::default()
        }
    }

    /// The same delay between every delivery, with this many deliveries in all.
    pub fn fixed(max_attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            backoff: Backoff::Fixed(delay),
            ..Default::default()
        }
    }

    /// The delay after the failure of delivery `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        match self.backoff {
            Backoff::Fixed(d) => d,
            Backoff::Linear { initial, max } => initial.saturating_mul(attempt).min(max),
            Backoff::Exponential {
                initial,
                factor,
                max,
            } => {
                let secs = initial.as_secs_f64() * factor.powi(attempt as i32 - 1);
                if secs.is_finite() && secs < max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    max
                }
            }
        }
    }

    /// The delay with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        let spread = self.jitter.min(1.0);
        let factor = rand::thread_rng().gen_range(1.0 - spread..=1.0 + spread);
        Duration::from_secs_f64(base.as_secs_f64() * factor)
    }

    /// The distinct delays this policy can ask for, shortest first (for transports that
    /// declare one queue per delay level, such as RabbitMQ).
    pub fn delay_levels(&self) -> Vec<Duration> {
        let mut levels: Vec<Duration> = (1..self.max_attempts)
            .map(|a| self.base_delay(a))
            .filter(|d| !d.is_zero())
            .collect();
        levels.sort();
        levels.dedup();
        levels
    }
}

/// Applies a [`RetryPolicy`]: a few immediate re-calls in-process, then delayed redelivery
/// through the transport with backoff and jitter until `max_attempts` deliveries have failed.
/// Failures retrying cannot help (undecodable bodies, [`HandlerError::permanent`](crate::HandlerError))
/// are left to the dead-letter layer at once. Part of
/// [`Pipeline::standard`](crate::Pipeline::standard), usually set through
/// [`Pipeline::retry`](crate::Pipeline::retry).
///
/// ```
/// use std::time::Duration;
/// use herald::middleware::{RetryLayer, RetryPolicy};
/// let layer = RetryLayer::new(RetryPolicy::linear(4, Duration::from_secs(2)));
/// let pipeline = herald::Pipeline::new().layer(herald::middleware::DeadLetterLayer).layer(layer);
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A layer with this policy.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer { policy }
    }

    /// Its policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

impl Layer for RetryLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Retry {
            inner,
            policy: self.policy,
        })
    }

    fn retry_delays(&self) -> Vec<Duration> {
        self.policy.delay_levels()
    }
}

/// Call `call` with `msg`, again at once up to `policy.immediate` times on a retryable failure,
/// then decide: a delayed redelivery, or the dead letters once `max_attempts` deliveries have
/// failed. Shared with the standard stack ([`super::standard`]).
pub(crate) async fn retrying<F: Future<Output = HandlerResult>>(
    policy: RetryPolicy,
    msg: &Message,
    mut call: impl FnMut(Message) -> F,
) -> HandlerResult {
    let mut immediate_left = policy.immediate;
    loop {
        let err = match call(msg.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if err.disposition.is_some() || !err.kind.is_retryable() {
            return Err(err);
        }
        if immediate_left > 0 {
            immediate_left -= 1;
            tracing::debug!(id = %msg.envelope.id, error = %err, "retrying immediately");
            continue;
        }
        let attempt = msg.envelope.attempt;
        if attempt >= policy.max_attempts {
            let message = format!("{} (gave up after {attempt} attempts)", err.message);
            return Err(
                super::HandlerError { message, ..err }.with_disposition(Disposition::DeadLetter)
            );
        }
        let delay = policy.delay(attempt);
        tracing::debug!(id = %msg.envelope.id, attempt, ?delay, error = %err, "redelivering later");
        return Err(err.with_disposition(Disposition::RetryAfter(delay)));
    }
}

struct Retry {
    inner: Arc<dyn Handle>,
    policy: RetryPolicy,
}

impl Handle for Retry {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let policy = self.policy;
        Box::pin(async move { retrying(policy, &msg, |m| inner.call(m)).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{handle_fn, FailureKind, HandlerError};

    fn failing(calls: Arc<AtomicU32>, kind: FailureKind) -> Arc<dyn Handle> {
        handle_fn(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(HandlerError::new(kind, "db down")) }
        })
    }

    #[tokio::test]
    async fn immediate_attempts_then_delayed_redelivery() {
        let calls = Arc::new(AtomicU32::new(0));
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::exponential(5, Duration::from_millis(100))
        };
        let h = RetryLayer::new(policy).layer(failing(calls.clone(), FailureKind::Handler));
        let err = h.call(message(2)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "1 call + 2 immediate");
        assert_eq!(
            err.disposition,
            Some(Disposition::RetryAfter(Duration::from_millis(200)))
        );
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = RetryLayer::new(RetryPolicy::exponential(3, Duration::from_millis(10)))
            .layer(failing(calls, FailureKind::Handler));
        let err = h.call(message(3)).await.unwrap_err();
        assert_eq!(err.disposition, Some(Disposition::DeadLetter));
        assert!(
            err.message.contains("gave up after 3 attempts"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = RetryLayer::new(RetryPolicy::default())
            .layer(failing(calls.clone(), FailureKind::Decode));
        let err = h.call(message(1)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.disposition, None, "left for the dead-letter layer");
    }

    #[tokio::test]
    async fn success_after_an_immediate_retry() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let h = RetryLayer::new(RetryPolicy::default()).layer(handle_fn(move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::transient("blip"))
                } else {
                    Ok(())
                }
            }
        }));
        assert!(h.call(message(1)).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn backoff_shapes_and_jitter_bounds() {
        let p = RetryPolicy::exponential(6, Duration::from_secs(1));
        assert_eq!(p.base_delay(1), Duration::from_secs(1));
        assert_eq!(p.base_delay(4), Duration::from_secs(8));
        assert_eq!(p.delay_levels().len(), 5);
        let linear = RetryPolicy {
            backoff: Backoff::Linear {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(5),
            },
            ..p
        };
        assert_eq!(linear.base_delay(2), Duration::from_secs(4));
        assert_eq!(linear.base_delay(9), Duration::from_secs(5));
        for _ in 0..200 {
            let d = p.delay(2).as_secs_f64();
            assert!((1.6..=2.4).contains(&d), "{d}");
        }
    }
}
