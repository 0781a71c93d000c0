//! How Herald's names map onto JetStream's: exchanges to streams and subjects, queues to
//! durable consumers, binding patterns to filter subjects.
//!
//! - Exchange `X` → stream `herald_X` (characters a stream name cannot hold become `_`, and a
//!   short hash of the original keeps two such names apart) over the subjects `X.>` (events,
//!   published as `X.<routing key>`) and `_herald.<stream>.>` (messages addressed to one queue:
//!   retries and replays). The exchange is one subject token: its dots are written `~`
//!   (`benalsam.listings` → `benalsam~listings.listing.insert`), so no exchange's subjects
//!   contain another's (`a.>` would cover `a.system.>`; JetStream refuses overlapping streams).
//! - Its dead letters → stream `<stream>_dlq` over `_herald_dlq.<stream>.<queue>`.
//! - Queue `q` → durable pull consumer `q` (sanitized the same way), whose description records
//!   the queue's real name and bindings, so every process can list queues and routes.
//! - Binding patterns: `*` stays `*`; a trailing `#` becomes `>` (and, since `#` also matches
//!   zero words, the prefix itself is a second filter); a `#` anywhere else has no NATS
//!   equivalent and is refused.

use herald::error::{Error, Result};

/// The prefix of the subjects that address one queue (retries, replays).
const DIRECT_PREFIX: &str = "_herald";
/// The prefix of dead-letter subjects.
const DLQ_PREFIX: &str = "_herald_dlq";

/// A JetStream stream or consumer name for `name`: letters, digits, `-` and `_` kept, anything
/// else `_`, and a hash of the original appended when anything changed (so `a.b` and `a_b` stay
/// two names).
pub(crate) fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == name {
        clean
    } else {
        format!("{clean}_{:08x}", fnv1a(name) as u32)
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The stream of an exchange.
pub(crate) fn stream_name(exchange: &str) -> String {
    format!("herald_{}", sanitize(exchange))
}

/// The dead-letter stream of an exchange's stream.
pub(crate) fn dlq_stream_name(stream: &str) -> String {
    format!("{stream}_dlq")
}

/// The consumer of a queue.
pub(crate) fn consumer_name(queue: &str) -> String {
    sanitize(queue)
}

/// The subject token of an exchange: its name with `.` written `~`.
pub(crate) fn exchange_token(exchange: &str) -> String {
    exchange.replace('.', "~")
}

/// The subjects of an exchange's stream.
pub(crate) fn stream_subjects(exchange: &str, stream: &str) -> Vec<String> {
    vec![
        format!("{}.>", exchange_token(exchange)),
        format!("{DIRECT_PREFIX}.{stream}.>"),
    ]
}

/// The subject an event with `routing_key` is published on.
pub(crate) fn event_subject(exchange: &str, routing_key: &str) -> String {
    // Built in place (this runs for every publish): the exchange token, a dot, the key.
    let mut subject = String::with_capacity(exchange.len() + 1 + routing_key.len());
    for (i, word) in exchange.split('.').enumerate() {
        if i > 0 {
            subject.push('~');
        }
        subject.push_str(word);
    }
    subject.push('.');
    subject.push_str(routing_key);
    subject
}

/// The subject that reaches only `queue`'s consumer.
pub(crate) fn direct_subject(stream: &str, queue: &str) -> String {
    format!("{DIRECT_PREFIX}.{stream}.{queue}")
}

/// The subjects of a stream's dead letters.
pub(crate) fn dlq_subjects(stream: &str) -> Vec<String> {
    vec![format!("{DLQ_PREFIX}.{stream}.>")]
}

/// The subject of `queue`'s dead letters.
pub(crate) fn dlq_subject(stream: &str, queue: &str) -> String {
    format!("{DLQ_PREFIX}.{stream}.{queue}")
}

/// The routing key of an event subject, when it is one of `exchange`'s.
pub(crate) fn routing_key_of<'a>(exchange: &str, subject: &'a str) -> Option<&'a str> {
    let (token, rest) = subject.split_once('.')?;
    (token.len() == exchange.len()
        && token
            .bytes()
            .zip(exchange.bytes())
            .all(|(t, x)| t == x || (t == b'~' && x == b'.')))
    .then_some(rest)
}

/// Check an exchange name: the dot-separated words of [`check_tokens`], and no `~` (the
/// character its dots become in a subject).
pub(crate) fn check_exchange(exchange: &str) -> Result<()> {
    check_tokens("exchange name", exchange)?;
    if exchange.contains('~') {
        return Err(Error::Config(format!(
            "exchange name `{exchange}` cannot hold `~` on NATS (its dots are written `~` in subjects)"
        )));
    }
    Ok(())
}

/// Check a name that becomes subject tokens (an exchange, a routing key, a queue): non-empty
/// words without spaces or NATS wildcards.
pub(crate) fn check_tokens(what: &str, name: &str) -> Result<()> {
    // One pass over the bytes (this runs for every publish): no empty word (a leading,
    // trailing or doubled dot, or no word at all) and none of the characters a subject cannot
    // carry.
    let mut previous = b'.';
    let mut bad = false;
    for &b in name.as_bytes() {
        if (b == b'.' && previous == b'.')
            || matches!(b, b'*' | b'>' | b' ' | b'\t' | b'\r' | b'\n')
        {
            bad = true;
            break;
        }
        previous = b;
    }
    let bad = bad || previous == b'.';
    if bad {
        return Err(Error::Config(format!(
            "{what} `{}` cannot be a NATS subject: use dot-separated words without spaces, `*` or `>`",
            herald::transport::escape_controls(name)
        )));
    }
    Ok(())
}

/// The filter subjects of a binding pattern on `exchange`: `a.*` → `X.a.*`; `a.#` → `X.a` and
/// `X.a.>`; `#` → `X.>`. A `#` that is not the last word is refused.
pub(crate) fn filters_of(exchange: &str, pattern: &str) -> Result<Vec<String>> {
    herald::pattern::validate_pattern(pattern).map_err(Error::Config)?;
    let exchange = exchange_token(exchange);
    let words: Vec<&str> = pattern.split('.').collect();
    if words[..words.len() - 1].contains(&"#") {
        return Err(Error::Config(format!(
            "binding `{pattern}` has `#` before its last word; NATS can express `#` only at the end (`a.#`). Bind several patterns instead"
        )));
    }
    Ok(match words.split_last() {
        Some((&"#", [])) => vec![format!("{exchange}.>")],
        Some((&"#", head)) => {
            let prefix = format!("{exchange}.{}", head.join("."));
            vec![prefix.clone(), format!("{prefix}.>")]
        }
        _ => vec![format!("{exchange}.{pattern}")],
    })
}

/// Whether some subject matches both filters.
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.split_first(), b.split_first()) {
            (None, None) => true,
            (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
            (Some((x, ar)), Some((y, br))) => (x == y || *x == "*" || *y == "*") && go(ar, br),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    go(&a, &b)
}

/// Whether every subject `narrow` matches, `wide` matches too.
pub(crate) fn covers(wide: &str, narrow: &str) -> bool {
    fn go(w: &[&str], n: &[&str]) -> bool {
        match (w.split_first(), n.split_first()) {
            (None, None) => true,
            (Some((&">", _)), Some(_)) => true,
            (Some((&"*", wr)), Some((x, nr))) if *x != ">" => go(wr, nr),
            (Some((x, wr)), Some((y, nr))) => x == y && go(wr, nr),
            _ => false,
        }
    }
    let w: Vec<&str> = wide.split('.').collect();
    let n: Vec<&str> = narrow.split('.').collect();
    go(&w, &n)
}

/// A queue's filter subjects with those another one covers removed; `None` when two that remain
/// still overlap (a server refuses overlapping filters on one consumer, so such a queue is
/// filtered by the client instead).
pub(crate) fn disjoint_filters(filters: Vec<String>) -> Option<Vec<String>> {
    let mut kept: Vec<String> = Vec::new();
    for f in filters {
        if kept.iter().any(|k| covers(k, &f)) {
            continue;
        }
        kept.retain(|k| !covers(&f, k));
        kept.push(f);
    }
    for (i, a) in kept.iter().enumerate() {
        if kept[i + 1..].iter().any(|b| overlap(a, b)) {
            return None;
        }
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        assert_eq!(sanitize("orders"), "orders");
        assert_ne!(sanitize("a.b"), sanitize("a_b"));
        assert!(sanitize("knowledge.nest events")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        assert_eq!(stream_name("herald.events"), stream_name("herald.events"));
    }

    #[test]
    fn patterns_map_to_filters() {
        assert_eq!(filters_of("X", "a.*").unwrap(), vec!["X.a.*"]);
        assert_eq!(filters_of("X", "a.#").unwrap(), vec!["X.a", "X.a.>"]);
        assert_eq!(filters_of("X", "#").unwrap(), vec!["X.>"]);
        assert_eq!(filters_of("X", "a.b").unwrap(), vec!["X.a.b"]);
        let e = filters_of("X", "a.#.b").unwrap_err().to_string();
        assert!(e.contains("only at the end"), "{e}");
        assert!(filters_of("X", "a..b").is_err());
    }

    #[test]
    fn overlap_and_cover() {
        assert!(overlap("X.a.*", "X.a.b"));
        assert!(overlap("X.>", "X.a"));
        assert!(!overlap("X.a", "X.a.>"));
        assert!(!overlap("X.a.*", "X.b.*"));
        assert!(overlap("X.a.*.c", "X.a.b.*"));
        assert!(covers("X.>", "X.a.b"));
        assert!(covers("X.a.*", "X.a.b"));
        assert!(!covers("X.a.b", "X.a.*"));
        assert!(!covers("X.a.*", "X.a.>"));
        assert_eq!(
            disjoint_filters(vec!["X.a.*".into(), "X.a.b".into(), "X.c".into()]),
            Some(vec!["X.a.*".to_string(), "X.c".to_string()])
        );
        assert_eq!(
            disjoint_filters(vec!["X.a.*.c".into(), "X.a.b.*".into()]),
            None
        );
    }

    #[test]
    fn subjects_and_keys() {
        assert_eq!(routing_key_of("X.y", "X~y.a.b"), Some("a.b"));
        assert_eq!(routing_key_of("X.y", "X~yz.a"), None);
        assert_eq!(routing_key_of("X", "X.a"), Some("a"));
        assert_eq!(event_subject("X.y", "a.b"), "X~y.a.b");
        assert!(!overlap(
            &stream_subjects("X", "s")[0],
            &stream_subjects("X.system", "t")[0]
        ));
        assert!(check_exchange("a~b").is_err());
        assert_eq!(filters_of("X.y", "a.*").unwrap(), vec!["X~y.a.*"]);
        assert!(check_tokens("routing key", "a.b").is_ok());
        assert!(check_tokens("routing key", "a b").is_err());
        assert!(check_tokens("routing key", "a.>").is_err());
        assert!(check_tokens("routing key", "").is_err());
        for bad in ["a..b", ".a", "a.", ".", "a\tb", "a*"] {
            assert!(check_tokens("routing key", bad).is_err(), "{bad:?}");
        }
        assert!(check_tokens("routing key", "order.placed.v2").is_ok());
    }
}
