//! Logging setup: fmt to stderr, plus OTLP span export when built with `otel` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

/// Keeps the exporter (if any) alive until the command ends; dropping it flushes.
pub struct Logging {
    #[cfg(feature = "otel")]
    _otel: Option<herald::trace::otel::OtelGuard>,
}

/// Install the global subscriber with `filter` (`EnvFilter` directives).
pub fn init(filter: &str) -> Logging {
    #[cfg(feature = "otel")]
    match herald::trace::otel::init_from_env_filtered("herald-cli", filter) {
        Ok(Some(guard)) => return Logging { _otel: Some(guard) },
        Ok(None) => {}
        Err(e) => eprintln!("warning: OTLP export disabled: {e}"),
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    Logging {
        #[cfg(feature = "otel")]
        _otel: None,
    }
}
