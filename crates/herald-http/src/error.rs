//! The crate's error type: what can stop `herald serve` from starting or serving, or the metrics recorder from installing.

use std::net::SocketAddr;

/// Errors starting or running the HTTP server. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A non-loopback address without a bearer token would expose the API to the network.
    #[error("refusing to listen on {0} without a token: anyone on the network could publish and purge; set --token (or HERALD_TOKEN), or listen on 127.0.0.1")]
    NonLoopbackWithoutToken(SocketAddr),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another --listen address or stop what uses the port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The event catalog is not in the shape of `docs/http-api.md`, or a schema in it is invalid.
    #[error("invalid event catalog: {0}; see the catalog JSON in docs/http-api.md (`herald docs --format json`)")]
    Catalog(String),
    /// The bus refused the live-stream subscription or could not start it.
    #[error(transparent)]
    Herald(#[from] herald::Error),
    /// The Prometheus recorder could not be installed as the global `metrics` recorder.
    #[error("cannot install the Prometheus metrics recorder: {0}; install it once at startup, before any other `metrics` recorder, and before building the bus")]
    MetricsRecorder(String),
    /// The server stopped with an I/O error.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
