//! What every request passes before a handler runs, and what every response carries.
//!
//! - **Host allow-list** (DNS rebinding): a web page whose name an attacker re-points at
//!   127.0.0.1 is same-origin with the server, but its requests still name the attacker's host.
//!   Only IP literals, `localhost` and the names configured (`--allow-host`) are answered.
//! - **Origin**: a request a browser sends from another origin (another site, or another port
//!   of this host) is refused on `/api/*` and `/metrics`.
//! - **JSON only**: a state-changing request under `/api` must say `Content-Type:
//!   application/json`, which an HTML form cannot send and a cross-origin `fetch` cannot send
//!   without a CORS preflight this server never grants.
//! - **Token**: `/api/*` and `/metrics` need the token or the session cookie (see [`auth`]);
//!   the health probes and the dashboard's files do not.
//! - **Headers**: a Content-Security-Policy that allows only this origin's scripts and styles
//!   and no framing, `nosniff`, `X-Frame-Options: DENY`, no referrer, same-origin resource and
//!   opener policies, and `no-store` on the API.
//!
//! [`auth`]: super::auth

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald::transport::escape_controls;

use super::api::ApiError;
use super::auth::{self, Credentials};

/// The Content-Security-Policy of every response: this origin's own scripts, styles and
/// connections, nothing inline, no plugins, no framing, forms nowhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The host names a server answers to besides IP literals and `localhost`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hosts {
    configured: Vec<String>,
}

impl Hosts {
    pub(crate) fn new(configured: &[String]) -> Self {
        Hosts {
            configured: configured
                .iter()
                .map(|h| host_name(h.trim()).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn is_configured(&self, name: &str) -> bool {
        self.configured.iter().any(|c| c.eq_ignore_ascii_case(name))
    }

    /// IP literals cannot be re-pointed by DNS, `localhost` resolves locally in every browser;
    /// anything else must be configured.
    fn allows(&self, name: &str) -> bool {
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.is_configured(name)
    }
}

/// The host name of a `Host` header or an origin's authority: without the port, and without
/// the brackets of an IPv6 literal.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// Whether an `Origin` is this server as the request reached it: the same authority as the
/// `Host` header, or a configured name (a reverse proxy that rewrites `Host`).
fn origin_allowed(origin: &str, host: Option<&str>, hosts: &Hosts) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false; // `null` (sandboxed frames, files) and other schemes
    };
    if authority.is_empty() || authority.contains(['/', '@']) {
        return false;
    }
    let name = host_name(authority);
    hosts.allows(name)
        && (host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) || hosts.is_configured(name))
}

/// Whether a path needs the token (and same-origin requests).
fn protected(path: &str) -> bool {
    path == "/metrics" || path == "/api" || path.starts_with("/api/")
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Everything the guard needs, shared by every request.
pub(crate) struct Guard {
    pub(crate) hosts: Hosts,
    pub(crate) credentials: Arc<Credentials>,
}

/// Axum middleware: refuse what must be refused, then add the security headers.
pub(crate) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let api = protected(request.uri().path());
    let mut response = match refusal(&guard, &request, request.uri().path()) {
        Some(refused) => refused,
        None => next.run(request).await,
    };
    add_headers(response.headers_mut(), api);
    response
}

fn refusal(guard: &Guard, request: &Request, path: &str) -> Option<Response> {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(h) = host {
        if !guard.hosts.allows(host_name(h)) {
            tracing::warn!(host = %escape_controls(h), "refused a request for a host this server does not answer to (DNS rebinding?)");
            return Some(
                ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this server does not answer to the host `{}`; if that is its own name, start herald serve with --allow-host {}", escape_controls(h), escape_controls(host_name(h))),
                )
                .into_response(),
            );
        }
    }
    if !protected(path) {
        return None;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(origin, host, &guard.hosts) {
            tracing::warn!(origin = %escape_controls(origin), "refused a cross-origin request");
            return Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("cross-origin request from `{}` refused: the API answers only the dashboard's own origin", escape_controls(origin)),
                )
                .into_response(),
            );
        }
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && !is_json(headers) {
        return Some(
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with `Content-Type: application/json`",
            )
            .into_response(),
        );
    }
    let login = path == "/api/session";
    if !login {
        if let Err(what) = guard.credentials.check(headers) {
            return Some(auth::unauthorized(what));
        }
    }
    None
}

fn add_headers(h: &mut HeaderMap, api: bool) {
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_name("[::1]:7878"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:7878"), "evil.example");
    }

    #[test]
    fn only_literals_localhost_and_configured_names() {
        let hosts = Hosts::new(&["Dash.Example.com".into()]);
        for ok in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "localhost",
            "LOCALHOST",
            "dash.example.com",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.",
            "127.0.0.1.nip.io",
            "sub.localhost",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let hosts = Hosts::new(&["dash.example.com".into()]);
        let host = Some("127.0.0.1:7878");
        assert!(origin_allowed("http://127.0.0.1:7878", host, &hosts));
        assert!(
            !origin_allowed("http://127.0.0.1:3000", host, &hosts),
            "another port"
        );
        assert!(
            !origin_allowed("http://localhost:7878", host, &hosts),
            "another origin"
        );
        assert!(!origin_allowed(
            "http://evil.example:7878",
            Some("evil.example:7878"),
            &hosts
        ));
        assert!(!origin_allowed("null", host, &hosts));
        assert!(!origin_allowed("file://", host, &hosts));
        assert!(
            origin_allowed("https://dash.example.com", host, &hosts),
            "a proxy's name"
        );
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonp", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }
}
