//! NATS subject filters: which subjects a filter matches, and how filters
//! of several consumers combine into the filter of one shared notifier.
//!
//! A filter is a dot-separated list of tokens, where `*` matches exactly one
//! token and `>` (last only) matches one or more.

/// Whether `subject` (no wildcards) is matched by `filter`.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(s)) if literal == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether every subject `inner` matches is matched by `outer` too.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut inner = inner.split('.');
    for token in outer.split('.') {
        match (token, inner.next()) {
            (">", Some(_)) => return true,
            ("*", Some(t)) if t != ">" => {}
            (literal, Some(t)) if literal == t && literal != ">" => {}
            _ => return false,
        }
    }
    inner.next().is_none()
}

/// Whether some subject is matched by both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The subject filter of one notifier serving consumers with these filters
/// (an empty list is a consumer of the whole stream): `None` for the whole
/// stream, or filters that match exactly the union and that nats-server
/// accepts together (it refuses overlapping `filter_subjects`). Filters that
/// overlap without one covering the other, or more than `max`, give `None`:
/// the notifier then sees the whole stream, which is still correct.
pub fn union<'a>(filters: impl IntoIterator<Item = &'a [String]>, max: usize) -> Option<Vec<String>> {
    let mut kept: Vec<&str> = Vec::new();
    for consumer in filters {
        if consumer.is_empty() {
            return None;
        }
        for filter in consumer {
            if kept.iter().any(|k| covers(k, filter)) {
                continue;
            }
            kept.retain(|k| !covers(filter, k));
            if kept.iter().any(|k| overlap(k, filter)) {
                return None;
            }
            kept.push(filter);
            if kept.len() > max {
                return None;
            }
        }
    }
    let mut kept: Vec<String> = kept.into_iter().map(str::to_owned).collect();
    kept.sort();
    Some(kept)
}

/// Whether a notifier with `notifier` filters (`None`: whole stream) sees
/// every message a consumer with `consumer` filters counts.
pub fn sees_all(notifier: Option<&[String]>, consumer: &[String]) -> bool {
    match notifier {
        None => true,
        Some(_) if consumer.is_empty() => false,
        Some(outer) => consumer.iter().all(|f| outer.iter().any(|o| covers(o, f))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(filters: &[&str]) -> Vec<String> {
        filters.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matching_follows_nats_wildcards() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.created.eu"));
        assert!(!matches("orders.created.eu", "orders.created"));
        assert!(matches("orders.*", "orders.created"));
        assert!(!matches("orders.*", "orders.created.eu"));
        assert!(matches("orders.>", "orders.created.eu"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("*.created", "orders.created"));
        assert!(matches(">", "anything.at.all"));
    }

    #[test]
    fn covering_is_about_every_subject() {
        assert!(covers("orders.>", "orders.*.eu"));
        assert!(covers("orders.>", "orders.>"));
        assert!(covers("orders.*", "orders.created"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.created", "orders.*"));
        assert!(!covers("orders.*.eu", "orders.*"));
        assert!(covers(">", "a.b"));
        assert!(!covers("a.b", "a.b.c"));
    }

    #[test]
    fn overlapping_needs_one_common_subject() {
        assert!(overlap("orders.*.eu", "orders.us.*"));
        assert!(overlap("orders.>", "orders.a.b"));
        assert!(overlap("*.b", "a.*"));
        assert!(!overlap("orders.created", "orders.shipped"));
        assert!(!overlap("orders.*", "orders.a.b"));
        assert!(!overlap("a", "a.b"));
    }

    #[test]
    fn union_keeps_the_widest_filters() {
        let a = v(&["orders.created"]);
        let b = v(&["orders.*"]);
        let c = v(&["payments.>"]);
        let d = v(&["payments.card.eu", "payments.cash.eu"]);
        assert_eq!(
            union([a.as_slice(), b.as_slice(), c.as_slice(), d.as_slice()], 10),
            Some(v(&["orders.*", "payments.>"]))
        );
        assert_eq!(union([d.as_slice()], 10), Some(d.clone()));
        assert_eq!(union(std::iter::empty(), 10), Some(vec![]));
    }

    #[test]
    fn union_falls_back_to_the_whole_stream() {
        let all: Vec<String> = vec![];
        let eu = v(&["orders.*.eu"]);
        let us = v(&["orders.us.*"]);
        let other = v(&["payments.x"]);
        assert_eq!(
            union([eu.as_slice(), all.as_slice()], 10),
            None,
            "a consumer of everything"
        );
        assert_eq!(union([eu.as_slice(), us.as_slice()], 10), None, "partial overlap");
        assert_eq!(union([eu.as_slice(), other.as_slice()], 1), None, "too many filters");
        assert!(union([eu.as_slice(), other.as_slice()], 2).is_some());
    }

    #[test]
    fn a_notifier_sees_what_its_consumers_count() {
        let wide = v(&["orders.>"]);
        assert!(sees_all(None, &[]));
        assert!(sees_all(Some(&wide), &v(&["orders.created", "orders.x.y"])));
        assert!(!sees_all(Some(&wide), &v(&["orders.created", "payments.x"])));
        assert!(!sees_all(Some(&wide), &[]));
    }
}
