//! Broker URLs as text: their scheme, and how to print them without secrets.

use std::borrow::Cow;

/// The default embedded broker file when no URL is given.
pub const DEFAULT_SQLITE_PATH: &str = ".herald/herald.db";

/// The scheme of a broker URL (`amqp` in `amqp://host`), or `None` when it has no `scheme://`.
pub fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.trim().split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// The URL with its credentials replaced, safe for logs, errors and pages; it works on strings
/// that do not parse as URLs.
///
/// In each `scheme://...` part (a comma-separated cluster list has several), everything between
/// `scheme://` and the part's **last** `@` is credentials, whatever characters the password
/// holds (`/ ? , # @ %`): `user:password` becomes `user:***`, and a lone token (`nats://TOKEN@`)
/// becomes `***`. Control characters are escaped, so a URL cannot forge a log line.
///
/// ```
/// use herald::transport::redact_url;
/// assert_eq!(redact_url("amqp://guest:secret@host/%2f"), "amqp://guest:***@host/%2f");
/// assert_eq!(redact_url("amqp://alice:Pw/Sl@sh?,@host/%2f"), "amqp://alice:***@host/%2f");
/// assert_eq!(redact_url("nats://s3cr3t-token@host:4222"), "nats://***@host:4222");
/// assert_eq!(redact_url("alice:secret@host:5672"), "alice:***@host:5672");
/// ```
pub fn redact_url(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    if !raw.contains("://") {
        if let Some(at) = raw.rfind('@') {
            hide_userinfo(&mut out, &raw[..at]);
            rest = &raw[at..];
        }
    }
    while let Some(start) = rest.find("://") {
        out.push_str(&rest[..start + 3]);
        rest = &rest[start + 3..];
        // This part ends where the next part's scheme begins: after the last `,` before the
        // next `://` (a cluster list), or at the end.
        let end = match rest.find("://") {
            Some(next) => rest[..next].rfind(',').unwrap_or(next),
            None => rest.len(),
        };
        let part = &rest[..end];
        match part.rfind('@') {
            Some(at) => {
                hide_userinfo(&mut out, &part[..at]);
                out.push_str(&part[at..]);
            }
            None => out.push_str(part),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    escape_controls(&out).into_owned()
}

/// `user:***` for `user:password`, `***` for anything else (a lone token, or text where the
/// user name cannot be told apart from the password).
fn hide_userinfo(out: &mut String, userinfo: &str) {
    match userinfo.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?', '#', '@', ' ']) => {
            out.push_str(user);
            out.push_str(":***");
        }
        _ => out.push_str("***"),
    }
}

/// A broker URL list split into its URLs: a new URL starts after the last `,` before each
/// further `scheme://`, so a password may hold commas (`amqp://u:a,b@h1,amqp://h2` is two
/// URLs). Parts are trimmed; empty ones (a stray comma) are dropped.
///
/// ```
/// use herald::transport::split_url_list;
/// assert_eq!(split_url_list("amqp://u:a,b@h1, amqp://h2,"), ["amqp://u:a,b@h1", "amqp://h2"]);
/// assert_eq!(split_url_list("amqp://h1"), ["amqp://h1"]);
/// ```
pub fn split_url_list(raw: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = raw;
    loop {
        let end = match rest.find("://") {
            Some(start) => match rest[start + 3..].find("://") {
                Some(next) => rest[start + 3..start + 3 + next]
                    .rfind(',')
                    .map(|c| start + 3 + c),
                None => None,
            },
            None => None,
        };
        let (part, tail) = match end {
            Some(comma) => (&rest[..comma], Some(&rest[comma + 1..])),
            None => (rest, None),
        };
        let part = part.trim().trim_matches(',').trim();
        if !part.is_empty() {
            parts.push(part);
        }
        match tail {
            Some(t) => rest = t,
            None => return parts,
        }
    }
}

/// `s` with control characters (CR, LF, ESC, ...) written as escapes (`\r`, `\n`, `\u{1b}`),
/// for putting input from outside (URLs, queue names) into a log line or an error.
///
/// ```
/// assert_eq!(herald::transport::escape_controls("a\r\nb"), "a\\r\\nb");
/// ```
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().flat_map(char::escape_debug).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme() {
        assert_eq!(scheme_of("amqp://h"), Some("amqp"));
        assert_eq!(scheme_of(" nats://h:4222 "), Some("nats"));
        assert_eq!(scheme_of("localhost:5672"), None);
        assert_eq!(scheme_of("://x"), None);
        assert_eq!(scheme_of("a b://x"), None);
    }

    #[test]
    fn redaction_keeps_hosts_and_hides_every_password() {
        assert_eq!(redact_url("amqp://h/%2f"), "amqp://h/%2f");
        assert_eq!(
            redact_url("amqp://u:p@h,amqp://v:q@g"),
            "amqp://u:***@h,amqp://v:***@g"
        );
        for password in [
            "Pw/Slash", "a?b", "a,b", "a#b", "a@b", "a%40b", "p:w", "/?,#@%",
        ] {
            for url in [
                format!("amqp://alice:{password}@host:5672/%2f"),
                format!("amqps://alice:{password}@h1,amqp://bob:{password}@h2/v"),
                format!("nats://alice:{password}@host"),
                format!("kafka://alice:{password}@host:9092?x=1"),
                format!("not a url alice:{password}@host"),
            ] {
                let shown = redact_url(&url);
                if url.contains("://") {
                    assert!(!shown.contains(password), "{password} leaked in {shown}");
                    assert!(shown.contains("alice:***@"), "{shown}");
                }
            }
        }
        assert_eq!(
            redact_url("amqps://alice:a,b@h1,amqp://bob:c@d@h2/v"),
            "amqps://alice:***@h1,amqp://bob:***@h2/v"
        );
        assert_eq!(
            redact_url("amqp://h/%0d%0a\r\nFAKE"),
            "amqp://h/%0d%0a\\r\\nFAKE"
        );
        for password in ["Pw/Slash", "a?b", "a,b", "a#b", "a@b", "p:w", "/?,#@%"] {
            let shown = redact_url(&format!("alice:{password}@host:5672/%2f"));
            assert_eq!(shown, "alice:***@host:5672/%2f", "{password}");
        }
        assert_eq!(redact_url("/tmp/herald.db"), "/tmp/herald.db");
    }

    #[test]
    fn url_lists() {
        assert_eq!(
            split_url_list("amqps://alice:a,b@h1,amqp://bob:c,d@h2/v"),
            ["amqps://alice:a,b@h1", "amqp://bob:c,d@h2/v"]
        );
        assert_eq!(split_url_list(" , amqp://h1 ,, "), ["amqp://h1"]);
        assert_eq!(split_url_list("not a url, x"), ["not a url, x"]);
        assert!(split_url_list("").is_empty());
    }
}
