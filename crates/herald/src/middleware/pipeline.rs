//! The pipeline as a value: the layers one subscription runs around its handler, outermost
//! first, in the order its user composed them (tower's `ServiceBuilder`).
//!
//! [`Pipeline::standard`] is the default every subscription runs unless it asks for another:
//! dead letter → retry → catch panic → timeout, with the bus's configured retry policy and
//! handler timeout. It is an ordinary value: edit its retry policy or timeout, wrap it in more
//! layers, or start from [`Pipeline::new`] and stack your own.
//!
//! Building a pipeline runs those four standard layers, when they stand next to each other in
//! that order, as one step (`standard.rs`): the same functions, one boxed future per message
//! instead of four. That is a private detail of building; the pipeline still lists four layers.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::standard::StandardStack;
use super::{
    CatchPanicLayer, DeadLetterLayer, Handle, Layer, RetryLayer, RetryPolicy, TimeoutLayer,
};

/// The layers around a handler, outermost first.
///
/// ```
/// use std::time::Duration;
/// use herald::middleware::{CircuitBreakerConfig, CircuitBreakerLayer, Pipeline, RetryPolicy};
///
/// // The standard stack with a linear retry, a 5 s timeout and a circuit breaker around it.
/// let pipeline = Pipeline::standard()
///     .retry(RetryPolicy::linear(4, Duration::from_secs(1)))
///     .timeout(Duration::from_secs(5))
///     .wrap(CircuitBreakerLayer::new(CircuitBreakerConfig::default()));
/// assert_eq!(
///     format!("{pipeline:?}"),
///     "Pipeline[circuit_breaker, dead_letter, retry, catch_panic, timeout]"
/// );
/// ```
#[derive(Clone, Default)]
pub struct Pipeline {
    steps: Vec<Step>,
}

#[derive(Clone)]
enum Step {
    DeadLetter,
    /// `None`: the bus's configured policy.
    Retry(Option<RetryPolicy>),
    CatchPanic,
    /// `None`: the bus's configured timeout; `Some(None)`: no timeout.
    Timeout(Option<Option<Duration>>),
    Layer(Arc<dyn Layer>, &'static str),
}

impl Step {
    /// Built-in layers become steps the pipeline knows (so the standard stack can be fused and
    /// its settings edited); any other layer is kept as it is.
    fn of<L: Layer>(layer: L) -> Step {
        let any: &dyn Any = &layer;
        if any.is::<DeadLetterLayer>() {
            Step::DeadLetter
        } else if let Some(retry) = any.downcast_ref::<RetryLayer>() {
            Step::Retry(Some(retry.policy()))
        } else if any.is::<CatchPanicLayer>() {
            Step::CatchPanic
        } else if let Some(timeout) = any.downcast_ref::<TimeoutLayer>() {
            Step::Timeout(Some(Some(timeout.limit())))
        } else {
            Step::Layer(Arc::new(layer), short_type_name::<L>())
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Step::DeadLetter => "dead_letter",
            Step::Retry(_) => "retry",
            Step::CatchPanic => "catch_panic",
            Step::Timeout(_) => "timeout",
            Step::Layer(_, name) => name,
        }
    }
}

/// `CircuitBreakerLayer` → `circuit_breaker`, for `Debug` and logs.
fn short_type_name<L>() -> &'static str {
    let full = std::any::type_name::<L>();
    let base = full.split('<').next().unwrap_or(full);
    let base = base.rsplit("::").next().unwrap_or(base);
    match base {
        "CircuitBreakerLayer" => "circuit_breaker",
        "RateLimitLayer" => "rate_limit",
        "ConcurrencyLimitLayer" => "concurrency_limit",
        "DedupLayer" => "dedup",
        "SchemaLayer" => "schema",
        "FromFnLayer" => "from_fn",
        other => other,
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(Step::name).collect();
        write!(f, "Pipeline[{}]", names.join(", "))
    }
}

impl Pipeline {
    /// No layers at all: the handler alone. A failure nobody decided about is dead-lettered by
    /// the consumer, so even an empty pipeline loses nothing.
    pub fn new() -> Self {
        Pipeline::default()
    }

    /// Dead letter → retry → catch panic → timeout, with the bus's retry policy
    /// (`[retry]` in `herald.toml`, [`RetryPolicy::default`] otherwise) and handler timeout
    /// (`handler_timeout_ms`). What a subscription runs unless told otherwise.
    pub fn standard() -> Self {
        Pipeline {
            steps: vec![
                Step::DeadLetter,
                Step::Retry(None),
                Step::CatchPanic,
                Step::Timeout(None),
            ],
        }
    }

    /// Add `layer` inside the layers already there (closest to the handler so far): the first
    /// layer added is the outermost, as with tower's `ServiceBuilder`.
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.steps.push(Step::of(layer));
        self
    }

    /// Add `layer` outside every layer already there.
    pub fn wrap<L: Layer>(mut self, layer: L) -> Self {
        self.steps.insert(0, Step::of(layer));
        self
    }

    /// Use this retry policy: every retry layer of the pipeline gets it; a pipeline without one
    /// gets one, just inside its dead-letter layer (or outermost when it has none).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        let mut found = false;
        for step in &mut self.steps {
            if let Step::Retry(p) = step {
                *p = Some(policy);
                found = true;
            }
        }
        if !found {
            let at = self
                .steps
                .iter()
                .position(|s| matches!(s, Step::DeadLetter))
                .map_or(0, |i| i + 1);
            self.steps.insert(at, Step::Retry(Some(policy)));
        }
        self
    }

    /// Abandon handler calls running longer than `limit`: every timeout layer gets it; a
    /// pipeline without one gets one next to the handler.
    pub fn timeout(self, limit: Duration) -> Self {
        self.set_timeout(Some(limit))
    }

    /// No handler timeout at all (the timeout layers are kept, without a limit).
    pub fn no_timeout(self) -> Self {
        self.set_timeout(None)
    }

    fn set_timeout(mut self, limit: Option<Duration>) -> Self {
        let mut found = false;
        for step in &mut self.steps {
            if let Step::Timeout(t) = step {
                *t = Some(limit);
                found = true;
            }
        }
        if !found {
            self.steps.push(Step::Timeout(Some(limit)));
        }
        self
    }

    /// How many layers.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no layers.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// `outer`'s layers around `inner`'s (bus-wide layers around a subscription's).
    pub(crate) fn around(outer: &Pipeline, inner: &Pipeline) -> Pipeline {
        Pipeline {
            steps: outer.steps.iter().chain(&inner.steps).cloned().collect(),
        }
    }

    /// The retry policies this pipeline's retry layers use, defaults resolved.
    fn retry_delays(&self, defaults: &PipelineDefaults) -> Vec<Duration> {
        let mut delays: Vec<Duration> = self
            .steps
            .iter()
            .flat_map(|s| match s {
                Step::Retry(p) => p.unwrap_or(defaults.retry).delay_levels(),
                Step::Layer(l, _) => l.retry_delays(),
                _ => Vec::new(),
            })
            .collect();
        delays.sort();
        delays.dedup();
        delays
    }

    /// Wrap `handler` in every layer, innermost first.
    pub(crate) fn build(
        &self,
        handler: Arc<dyn Handle>,
        defaults: &PipelineDefaults,
    ) -> BuiltPipeline {
        let mut h = handler;
        let mut end = self.steps.len();
        while end > 0 {
            if let Some((start, stack)) = standard_run(&self.steps[..end], defaults) {
                h = stack.wrap(h);
                end = start;
                continue;
            }
            end -= 1;
            h = match &self.steps[end] {
                Step::DeadLetter => DeadLetterLayer.layer(h),
                Step::Retry(p) => RetryLayer::new(p.unwrap_or(defaults.retry)).layer(h),
                Step::CatchPanic => CatchPanicLayer.layer(h),
                Step::Timeout(t) => match t.unwrap_or(defaults.timeout) {
                    Some(limit) => TimeoutLayer::new(limit).layer(h),
                    None => h,
                },
                Step::Layer(l, _) => l.layer(h),
            };
        }
        let pausing: Vec<Arc<dyn Layer>> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Layer(l, _) => Some(l.clone()),
                _ => None,
            })
            .collect();
        BuiltPipeline {
            handle: h,
            readiness: Readiness {
                layers: pausing.into(),
            },
            retry_delays: self.retry_delays(defaults),
        }
    }
}

/// When `steps` ends with dead letter → retry → catch panic (→ timeout), where that run starts
/// and the one step that does what it does.
fn standard_run(steps: &[Step], defaults: &PipelineDefaults) -> Option<(usize, StandardStack)> {
    let (head, timeout) = match steps {
        [.., Step::Timeout(t)] => (&steps[..steps.len() - 1], t.unwrap_or(defaults.timeout)),
        _ => (steps, None),
    };
    match head {
        [.., Step::DeadLetter, Step::Retry(p), Step::CatchPanic] => {
            let len = if head.len() < steps.len() { 4 } else { 3 };
            Some((
                steps.len() - len,
                StandardStack {
                    retry: p.unwrap_or(defaults.retry),
                    timeout,
                },
            ))
        }
        _ => None,
    }
}

/// What the bus fills in where a pipeline says "the bus's default".
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineDefaults {
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
}

/// A pipeline wrapped around a handler, with what the consumer and the topology need from it.
pub(crate) struct BuiltPipeline {
    pub handle: Arc<dyn Handle>,
    pub readiness: Readiness,
    /// The redelivery delays its layers may ask for, shortest first.
    pub retry_delays: Vec<Duration>,
}

/// Asks a pipeline's layers whether consumption should pause.
#[derive(Clone, Default)]
pub(crate) struct Readiness {
    layers: Arc<[Arc<dyn Layer>]>,
}

impl Readiness {
    /// The longest pause any layer asks for, if one does.
    pub fn paused_for(&self) -> Option<Duration> {
        self.layers.iter().filter_map(|l| l.paused_for()).max()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{
        from_fn, handle_fn, CircuitBreakerConfig, CircuitBreakerLayer, Disposition, FailureKind,
        HandlerError, Message, Next,
    };

    fn defaults() -> PipelineDefaults {
        PipelineDefaults {
            retry: RetryPolicy {
                jitter: 0.0,
                ..RetryPolicy::exponential(3, Duration::from_millis(100))
            },
            timeout: Some(Duration::from_millis(50)),
        }
    }

    /// A layer that appends its name to a trace when a message passes on the way in.
    fn tracer(name: &'static str, trace: Arc<std::sync::Mutex<Vec<&'static str>>>) -> impl Layer {
        from_fn(move |msg: Message, next: Next| {
            trace.lock().unwrap().push(name);
            next.run(msg)
        })
    }

    #[tokio::test]
    async fn layers_run_in_the_order_they_were_composed() {
        let trace = Arc::new(std::sync::Mutex::new(Vec::new()));
        let p = Pipeline::new()
            .layer(tracer("b", trace.clone()))
            .layer(tracer("c", trace.clone()))
            .wrap(tracer("a", trace.clone()));
        let t = trace.clone();
        let built = p.build(
            handle_fn(move |_| {
                t.lock().unwrap().push("handler");
                async { Ok(()) }
            }),
            &defaults(),
        );
        built.handle.call(message(1)).await.unwrap();
        assert_eq!(*trace.lock().unwrap(), vec!["a", "b", "c", "handler"]);
    }

    #[tokio::test]
    async fn the_standard_stack_uses_the_bus_defaults_unless_told_otherwise() {
        let calls = Arc::new(AtomicU32::new(0));
        let failing = |calls: Arc<AtomicU32>| {
            handle_fn(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(HandlerError::transient("down")) }
            })
        };
        let built = Pipeline::standard().build(failing(calls.clone()), &defaults());
        let err = built.handle.call(message(1)).await.unwrap_err();
        assert_eq!(
            err.disposition,
            Some(Disposition::RetryAfter(Duration::from_millis(100)))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "1 call + 2 immediate");
        assert_eq!(
            built.retry_delays,
            vec![Duration::from_millis(100), Duration::from_millis(200)]
        );
        // An edited policy replaces the default; with one attempt it dead-letters at once.
        let built = Pipeline::standard()
            .retry(RetryPolicy::none())
            .build(failing(calls.clone()), &defaults());
        let err = built.handle.call(message(1)).await.unwrap_err();
        assert_eq!(err.disposition, Some(Disposition::DeadLetter));
        assert!(built.retry_delays.is_empty());
        // The bus's timeout applies unless the pipeline says otherwise.
        let slow = || {
            handle_fn(|_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
        };
        let built = Pipeline::standard()
            .retry(RetryPolicy::none())
            .build(slow(), &defaults());
        assert_eq!(
            built.handle.call(message(1)).await.unwrap_err().kind,
            FailureKind::Timeout
        );
        let built = Pipeline::standard()
            .retry(RetryPolicy::none())
            .timeout(Duration::from_millis(10))
            .build(slow(), &defaults());
        let started = std::time::Instant::now();
        built.handle.call(message(1)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(45));
    }

    #[test]
    fn built_in_layers_are_recognised_wherever_they_are_added() {
        let p = Pipeline::new()
            .layer(DeadLetterLayer)
            .layer(RetryLayer::new(RetryPolicy::none()))
            .layer(CatchPanicLayer)
            .layer(TimeoutLayer::new(Duration::from_secs(1)));
        assert_eq!(
            format!("{p:?}"),
            "Pipeline[dead_letter, retry, catch_panic, timeout]"
        );
        assert!(matches!(
            standard_run(&p.steps, &defaults()),
            Some((
                0,
                StandardStack {
                    timeout: Some(_),
                    ..
                }
            ))
        ));
        // Something between them: no fusing, each layer runs on its own.
        let p = Pipeline::new()
            .layer(DeadLetterLayer)
            .layer(RetryLayer::new(RetryPolicy::none()))
            .layer(from_fn(|m: Message, n: Next| n.run(m)))
            .layer(CatchPanicLayer);
        assert!(standard_run(&p.steps, &defaults()).is_none());
        assert_eq!(Pipeline::new().retry(RetryPolicy::none()).len(), 1);
        assert_eq!(
            format!(
                "{:?}",
                Pipeline::new()
                    .layer(DeadLetterLayer)
                    .retry(RetryPolicy::none())
            ),
            "Pipeline[dead_letter, retry]"
        );
    }

    #[tokio::test]
    async fn readiness_asks_every_layer_without_code_in_the_others() {
        let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(10),
        });
        let built = Pipeline::standard()
            .retry(RetryPolicy::none())
            .wrap(breaker.clone())
            .layer(from_fn(|m: Message, n: Next| n.run(m)))
            .build(
                handle_fn(|_| async { Err(HandlerError::transient("down")) }),
                &defaults(),
            );
        assert!(built.readiness.paused_for().is_none());
        let _ = built.handle.call(message(1)).await;
        assert!(
            built.readiness.paused_for().is_some(),
            "the open breaker pauses"
        );
    }
}
