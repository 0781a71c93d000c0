//! The crate's error type.

/// What can go wrong in `herald-http`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Prometheus recorder could not be installed as the global `metrics` recorder.
    #[error("cannot install the Prometheus metrics recorder: {0}; install it once at startup, before any other `metrics` recorder, and before building the bus")]
    MetricsRecorder(String),
}
