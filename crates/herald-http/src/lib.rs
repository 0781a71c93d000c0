//! Herald over HTTP: health endpoints a service can mount, Prometheus `/metrics`, and the API and
//! web dashboard of `herald serve`. The routes and JSON shapes are in `docs/http-api.md`.
#![warn(missing_docs)]

mod error;
pub mod health;
pub mod metrics;
pub mod serve;

pub use error::{Error, Result};
