//! Bearer-token check for `/api/*` and `/metrics` (and `?token=` on `/api/stream`, where an
//! `EventSource` cannot set headers). Health probes and the dashboard's files stay open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;

/// Whether a path needs the token.
fn protected(path: &str) -> bool {
    path == "/metrics" || path == "/api" || path.starts_with("/api/")
}

/// Compare without an early exit, so response time does not reveal how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Axum middleware: pass, or `401 {"error": ...}`.
pub(crate) async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if !protected(path) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = (path == "/api/stream")
        .then(|| query_token(request.uri().query()))
        .flatten();
    let given = bearer.or(from_query);
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let what = if given.is_some() { "wrong" } else { "missing" };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("{what} token: send `Authorization: Bearer <token>` (the --token / HERALD_TOKEN of herald serve)"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protects_api_and_metrics_only() {
        assert!(protected("/api/queues"));
        assert!(protected("/metrics"));
        assert!(!protected("/health/ready"));
        assert!(!protected("/"));
        assert!(!protected("/apiary"));
    }

    #[test]
    fn compares_tokens_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert_eq!(query_token(Some("type=x&token=t1")), Some("t1"));
        assert_eq!(query_token(None), None);
    }
}
