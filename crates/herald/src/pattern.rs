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
    // Runs on every publish: walk the words without collecting them.
    match_words(pattern.split('.'), routing_key.split('.'))
}

fn match_words(mut p: std::str::Split<'_, char>, mut k: std::str::Split<'_, char>) -> bool {
    loop {
        match p.next() {
            None => return k.next().is_none(),
            // `#` may swallow zero or more words: try the rest of the pattern at each point.
            Some("#") => loop {
                if match_words(p.clone(), k.clone()) {
                    return true;
                }
                if k.next().is_none() {
                    return false;
                }
            },
            Some("*") => {
                if k.next().is_none() {
                    return false;
                }
            }
            Some(word) => {
                if k.next() != Some(word) {
                    return false;
                }
            }
        }
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
