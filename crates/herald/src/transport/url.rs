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
/// In each part (a comma-separated cluster list has several; a part begins at a `,` followed by
/// `scheme://`), everything between `scheme://` and the part's **last** `@` is credentials,
/// whatever characters the password holds (`/ ? , # @ % ://`): `user:password` becomes
/// `user:***`, and a lone token (`nats://TOKEN@`) becomes `***`. Text with no `scheme://` at all
/// (`alice:secret@host`, a URL typed without its scheme) loses everything before its last `@`
/// the same way. Control characters are escaped, so a URL cannot forge a log line.
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
    let mut last = 0;
    for part in part_bounds(raw) {
        // The commas between parts, as they were.
        out.push_str(&raw[last..part.start]);
        last = part.end;
        let part = &raw[part];
        let (prefix, rest) = match part.find("://") {
            Some(i) => part.split_at(i + 3),
            None => ("", part),
        };
        out.push_str(prefix);
        match rest.rfind('@') {
            Some(at) => {
                hide_userinfo(&mut out, &rest[..at]);
                out.push_str(&rest[at..]);
            }
            None => out.push_str(rest),
        }
    }
    out.push_str(&raw[last..]);
    escape_controls(&out).into_owned()
}

/// Where the URLs of a list are: the first starts at the beginning, each further one after a
/// `,` that is followed (after spaces) by `scheme://`. A `,` anywhere else, or a `://` not
/// right after such a comma, belongs to the URL it is in (a password may hold either).
fn part_bounds(raw: &str) -> Vec<std::ops::Range<usize>> {
    let mut bounds = Vec::new();
    let mut start = 0;
    for (i, _) in raw.match_indices(',') {
        if scheme_of(&raw[i + 1..]).is_some() {
            bounds.push(start..i);
            start = i + 1;
        }
    }
    bounds.push(start..raw.len());
    bounds
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

/// A broker URL list split into its URLs: a new URL starts after a `,` followed by
/// `scheme://`, so a password may hold commas (`amqp://u:a,b@h1,amqp://h2` is two URLs).
/// Parts are trimmed; empty ones (a stray comma) are dropped.
///
/// ```
/// use herald::transport::split_url_list;
/// assert_eq!(split_url_list("amqp://u:a,b@h1, amqp://h2,"), ["amqp://u:a,b@h1", "amqp://h2"]);
/// assert_eq!(split_url_list("amqp://h1"), ["amqp://h1"]);
/// ```
pub fn split_url_list(raw: &str) -> Vec<&str> {
    part_bounds(raw)
        .into_iter()
        .map(|r| raw[r].trim().trim_matches(',').trim())
        .filter(|part| !part.is_empty())
        .collect()
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
        assert_eq!(
            redact_url("amqp://u:ab://cd@host,amqps://v:x,y@h2"),
            "amqp://u:***@host,amqps://v:***@h2"
        );
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
