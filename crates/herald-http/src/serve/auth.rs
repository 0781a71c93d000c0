//! The token: generated when none is given, checked in constant time, and carried by browsers
//! in an `HttpOnly`, `SameSite=Strict` cookie rather than in URLs.
//!
//! Programs send `Authorization: Bearer <token>`. A browser trades the token for the cookie once
//! (`POST /api/session {"token": ...}`, which the dashboard does with the `#token=` of the login
//! link or what the operator types); `fetch` and `EventSource` then send the cookie by
//! themselves, and the page's scripts never hold the token. The cookie's value is derived from
//! the token (so the cookie is not the token itself) and named after the port (browsers do not
//! keep cookies apart by port).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::ApiError;
use super::AppState;

/// Bytes of randomness in a generated token (printed as 48 hex digits).
const GENERATED_BYTES: usize = 24;

/// A new random token from the operating system's generator.
pub(crate) fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; GENERATED_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(domain: &str, value: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(value);
    h.finalize().into()
}

/// What a request may prove it holds: the token, or the cookie derived from it.
pub(crate) struct Credentials {
    token: [u8; 32],
    cookie: [u8; 32],
    cookie_value: String,
    cookie_name: String,
}

impl Credentials {
    pub(crate) fn new(token: &str, port: u16) -> Self {
        let cookie_value = hex(&digest("herald-serve session", token.as_bytes()));
        Credentials {
            token: digest("herald-serve token", token.as_bytes()),
            cookie: digest("herald-serve cookie", cookie_value.as_bytes()),
            cookie_value,
            cookie_name: format!("herald_session_{port}"),
        }
    }

    /// Both sides are hashed first, so the comparison takes the same time whatever the length
    /// of the guess or of the token, and stops nowhere early.
    fn is_token(&self, given: &str) -> bool {
        bool::from(digest("herald-serve token", given.as_bytes())[..].ct_eq(&self.token))
    }

    fn is_cookie(&self, given: &str) -> bool {
        bool::from(digest("herald-serve cookie", given.as_bytes())[..].ct_eq(&self.cookie))
    }

    /// `Set-Cookie` for a browser that proved it has the token.
    fn set_cookie(&self, secure: bool) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict{}",
            self.cookie_name,
            self.cookie_value,
            if secure { "; Secure" } else { "" }
        )
    }

    fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie_name
        )
    }

    /// Whether the request carries the token (bearer) or the cookie; `Err` says what was wrong.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer {
            return match self.is_token(given) {
                true => Ok(()),
                false => Err("wrong"),
            };
        }
        let mut cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == self.cookie_name)
            .peekable();
        if cookies.peek().is_none() {
            return Err("missing");
        }
        match cookies.any(|(_, v)| self.is_cookie(v)) {
            true => Ok(()),
            false => Err("wrong"),
        }
    }
}

/// `401 {"error": ...}` for a request without a valid token.
pub(crate) fn unauthorized(what: &str) -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("{what} token: send `Authorization: Bearer <token>` (the token herald serve printed, or its --token / HERALD_TOKEN)"),
    )
    .into_response()
}

/// `{"token": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// `POST /api/session`: trade the token for the session cookie. `204` with `Set-Cookie`, or
/// `401`.
pub(crate) async fn login(
    State(s): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let secure = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let Login { token } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"token\": \"...\"}}: {e}")))?;
    if !s.credentials.is_token(&token) {
        return Ok(unauthorized("wrong"));
    }
    let cookie = HeaderValue::from_str(&s.credentials.set_cookie(secure))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// `DELETE /api/session`: forget the cookie (log out).
pub(crate) async fn logout(State(s): State<AppState>) -> Response {
    match HeaderValue::from_str(&s.credentials.clear_cookie()) {
        Ok(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        Err(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn token_and_cookie_are_checked_exactly() {
        let c = Credentials::new("s3cret+/=", 7878);
        assert!(c.is_token("s3cret+/="));
        assert!(!c.is_token("s3cret+/"));
        assert!(!c.is_token("s3cret+/=="));
        assert!(!c.is_token(""));
        assert_eq!(
            c.check(&headers(&[("authorization", "Bearer s3cret+/=")])),
            Ok(())
        );
        assert_eq!(
            c.check(&headers(&[("authorization", "Bearer nope")])),
            Err("wrong")
        );
        assert_eq!(c.check(&headers(&[])), Err("missing"));
        let set = c.set_cookie(false);
        let pair = set.split(';').next().unwrap();
        assert!(!pair.contains("s3cret"), "the cookie is not the token");
        assert_eq!(
            c.check(&headers(&[("cookie", &format!("a=b; {pair}"))])),
            Ok(())
        );
        assert_eq!(
            c.check(&headers(&[("cookie", "herald_session_7878=forged")])),
            Err("wrong")
        );
        assert_eq!(
            c.check(&headers(&[("cookie", "herald_session_9999=x")])),
            Err("missing"),
            "another port's cookie is not ours"
        );
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
    }
}
