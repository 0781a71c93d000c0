//! OpenTelemetry export (feature `otel`): Herald's `herald.publish` / `herald.handle` spans
//! become OpenTelemetry producer / consumer spans through `tracing-opentelemetry`.
//!
//! - **Inject.** A publish takes its trace context from its own span's OpenTelemetry context,
//!   whose parent is the current `tracing` span (or, when that has none, the handling in
//!   progress), so the `traceparent` on the wire names the exported producer span.
//! - **Extract.** A handling span's OpenTelemetry parent is the incoming `traceparent`.
//! - **Export.** [`init_otlp`] / [`init_from_env`] install a global subscriber: an `EnvFilter`
//!   (`RUST_LOG`, default `info`), a fmt layer on stderr, and an OTLP exporter over **HTTP/protobuf**
//!   (port 4318, batched on a background thread). [`tracer_provider`] gives the provider alone
//!   for applications that build their own subscriber.
//!
//! ```no_run
//! # fn main() -> herald::Result<()> {
//! let _guard = herald::trace::otel::init_otlp("billing-service", "http://localhost:4318")?;
//! // ... run the bus; dropping the guard flushes the spans still buffered.
//! # Ok(()) }
//! ```

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::TraceContext;
use crate::error::{Error, Result};

/// The variable [`init_from_env`] reads (the standard OTLP one).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the exporter alive; dropping it flushes buffered spans and shuts the exporter down.
#[must_use = "dropping the guard stops the export; keep it until the program ends"]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// The tracer provider the installed subscriber exports through.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "could not flush the last spans to the OTLP endpoint");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "OTLP exporter shutdown");
        }
    }
}

/// Install a global subscriber that logs to stderr and exports spans to the OTLP/HTTP
/// collector at `endpoint` (its base URL, e.g. `http://localhost:4318`; `/v1/traces` is added
/// when the URL has no path). Fails when the endpoint is not a URL or a global subscriber is
/// already installed.
///
/// The log filter is `RUST_LOG`, or `info` when unset.
pub fn init_otlp(service_name: &str, endpoint: &str) -> Result<OtelGuard> {
    install(
        tracer_provider(service_name, Some(endpoint))?,
        &default_filter(),
    )
}

/// Like [`init_otlp`] with the endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` (and the other
/// standard `OTEL_EXPORTER_OTLP_*` variables). `Ok(None)` when the variable is unset or empty:
/// nothing is installed, so the caller sets up its usual logging.
pub fn init_from_env(service_name: &str) -> Result<Option<OtelGuard>> {
    init_from_env_filtered(service_name, &default_filter())
}

/// [`init_from_env`] with an explicit log filter (`EnvFilter` directives such as `warn` or
/// `herald=debug,info`); an invalid filter falls back to `warn`.
pub fn init_from_env_filtered(service_name: &str, filter: &str) -> Result<Option<OtelGuard>> {
    match std::env::var(ENDPOINT_VAR) {
        Ok(v) if !v.trim().is_empty() => {
            install(tracer_provider(service_name, None)?, filter).map(Some)
        }
        _ => Ok(None),
    }
}

fn default_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// A tracer provider exporting to OTLP/HTTP in batches, for a subscriber of your own (add
/// `tracing_opentelemetry::layer().with_tracer(provider.tracer("herald"))`). With `endpoint`
/// `None` the standard `OTEL_EXPORTER_OTLP_*` variables apply.
pub fn tracer_provider(service_name: &str, endpoint: Option<&str>) -> Result<SdkTracerProvider> {
    let mut builder = SpanExporter::builder().with_http();
    if let Some(base) = endpoint {
        builder = builder.with_endpoint(traces_url(base)?);
    }
    let exporter = builder.build().map_err(|e| {
        Error::Config(format!(
            "cannot build the OTLP exporter: {e}; check the endpoint and the {ENDPOINT_VAR} variables"
        ))
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build())
}

fn install(provider: SdkTracerProvider, filter: &str) -> Result<OtelGuard> {
    let tracer = provider.tracer("herald");
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|e| {
            Error::Config(format!(
                "cannot install the tracing subscriber ({e}): call init_otlp before any other \
                 logging setup, or add tracing_opentelemetry's layer to your own subscriber \
                 with herald::trace::otel::tracer_provider"
            ))
        })?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(OtelGuard { provider })
}

/// `base` with `/v1/traces` appended when it has no path of its own.
fn traces_url(base: &str) -> Result<String> {
    let url = url::Url::parse(base).map_err(|e| {
        Error::Config(format!(
            "OTLP endpoint `{base}` is not a URL ({e}); use e.g. http://localhost:4318"
        ))
    })?;
    Ok(if url.path() == "/" || url.path().is_empty() {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    } else {
        base.to_string()
    })
}

/// The current `tracing` span's OpenTelemetry context, when it has a valid one.
pub(crate) fn current_span_context() -> Option<TraceContext> {
    let span = Span::current();
    if span.is_none() {
        return None;
    }
    from_otel(span.context().span().span_context())
}

/// Give the producer span its OpenTelemetry parent and return its context, the one the
/// message carries. `explicit`: a `traceparent` the message already has (continued by the
/// span, sent unchanged); `task_parent`: the handling in progress, used when the current
/// `tracing` span has no OpenTelemetry context (a publish from a task spawned in a scope).
pub(crate) fn start_producer(
    span: &Span,
    explicit: Option<TraceContext>,
    task_parent: Option<TraceContext>,
) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let parent = explicit.or_else(|| task_parent.filter(|_| current_span_context().is_none()));
    if let Some(p) = parent {
        // Fails only without the OpenTelemetry layer, where there is nothing to parent.
        let _ = span.set_parent(remote(p));
    }
    from_otel(span.context().span().span_context())
}

/// Make the incoming `traceparent` the consumer span's parent; return the span's context.
pub(crate) fn start_consumer(span: &Span, incoming: Option<TraceContext>) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(p) = incoming {
        let _ = span.set_parent(remote(p));
    }
    from_otel(span.context().span().span_context())
}

fn remote(tc: TraceContext) -> opentelemetry::Context {
    let flags = if tc.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(tc.trace_id),
        SpanId::from_bytes(tc.span_id),
        flags,
        true,
        TraceState::default(),
    ))
}

fn from_otel(sc: &SpanContext) -> Option<TraceContext> {
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_only_when_they_have_none() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://x.example/custom/v1/traces").unwrap(),
            "https://x.example/custom/v1/traces"
        );
        assert!(matches!(traces_url("not a url"), Err(Error::Config(_))));
    }
}
