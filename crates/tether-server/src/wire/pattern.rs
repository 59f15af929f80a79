//! Channel and origin patterns: `*` matches any run of characters, everything else matches
//! itself. Used for `allowed_origins` and the `channels` API's `pattern`.

/// Whether `text` matches `pattern`, where each `*` stands for any (possibly empty) run of
/// characters.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn stars_match_any_run_and_the_rest_matches_itself() {
        assert!(wildcard_match("chat:*", "chat:room"));
        assert!(wildcard_match("chat:*", "chat:"));
        assert!(!wildcard_match("chat:*", "news:room"));
        assert!(wildcard_match("*:room:*", "chat:room:1"));
        assert!(!wildcard_match("a*b*c", "a-c-b"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exactly"));
        assert!(wildcard_match("*", ""));
    }
}
