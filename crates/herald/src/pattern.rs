//! AMQP topic matching: `*` matches exactly one dot-separated word, `#` matches zero or more.
//!
//! The embedded and in-memory transports route with this, so their routing is the same as
//! RabbitMQ's topic exchange.

/// True when `routing_key` matches the binding `pattern`.
///
/// ```
/// use herald::pattern::topic_matches;
/// assert!(topic_matches("course.*", "course.enrolled"));
/// assert!(!topic_matches("course.*", "course.enrolled.v2"));
/// assert!(topic_matches("course.#", "course.enrolled.v2"));
/// assert!(topic_matches("#", "anything.at.all"));
/// assert!(topic_matches("listing.status.#", "listing.status"));
/// ```
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    if !pattern.contains(['*', '#']) {
        return pattern == routing_key;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    match_words(&p, &k)
}

fn match_words(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => {
            // `#` may swallow 0..=len words; try each split.
            (0..=k.len()).any(|n| match_words(rest, &k[n..]))
        }
        Some((&"*", rest)) => !k.is_empty() && match_words(rest, &k[1..]),
        Some((word, rest)) => k.first() == Some(word) && match_words(rest, &k[1..]),
    }
}

/// Check a binding pattern is well formed: non-empty words, wildcards only as whole words.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("a binding pattern cannot be empty".into());
    }
    for word in pattern.split('.') {
        if word.is_empty() {
            return Err(format!(
                "`{pattern}` has an empty word (two dots in a row, or a leading/trailing dot)"
            ));
        }
        if word.len() > 1 && word.contains(['*', '#']) {
            return Err(format!(
                "`{pattern}`: wildcards `*` and `#` must stand alone between dots"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcards() {
        assert!(topic_matches("a.b", "a.b"));
        assert!(!topic_matches("a.b", "a.c"));
        assert!(topic_matches("*.b", "a.b"));
        assert!(!topic_matches("*.b", "b"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
        assert!(topic_matches("#.z", "z"));
        assert!(topic_matches("#", ""));
    }

    #[test]
    fn validation() {
        assert!(validate_pattern("course.*").is_ok());
        assert!(validate_pattern("course.").is_err());
        assert!(validate_pattern("cou*rse").is_err());
        assert!(validate_pattern("").is_err());
    }
}
