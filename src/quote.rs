//! Quoting input in messages: a leaf every module may use. A message quotes
//! at most a short prefix of a value, so hostile input (a 1 MB name) cannot
//! blow up an error, a status condition or a gRPC status.

/// Bytes of a bad value an error message quotes at most.
pub const QUOTE_BYTES: usize = 64;

/// A value for an error message: quoted whole when short, else its first
/// [`QUOTE_BYTES`] bytes (cut at a character boundary) and its length. A
/// 1 MB name echoed whole would not fit a gRPC client's 16 KiB metadata
/// limit, and the client would see RESOURCE_EXHAUSTED instead of the error.
pub fn quote(value: &str) -> String {
    match value.len() {
        len if len <= QUOTE_BYTES => format!("{value:?}"),
        len => format!("{:?}... ({len} bytes)", prefix(value, QUOTE_BYTES)),
    }
}

/// As [`quote`], unquoted: for names shown as they are.
pub fn shorten(value: &str) -> std::borrow::Cow<'_, str> {
    clip(value, QUOTE_BYTES)
}

/// `value` whole when at most `max` bytes, else its first `max` bytes (cut
/// at a character boundary) and its length: for longer text that is not a
/// single value, such as a rule from the configuration.
pub fn clip(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match value.len() {
        len if len <= max => value.into(),
        len => format!("{}... ({len} bytes)", prefix(value, max)).into(),
    }
}

fn prefix(value: &str, max: usize) -> &str {
    let mut end = max.min(value.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_quoted_by_a_short_prefix_and_its_length() {
        assert_eq!(quote("ORDERS"), "\"ORDERS\"");
        let long = "é".repeat(500_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 200, "{quoted}");
        assert!(quoted.ends_with("... (1000000 bytes)"), "{quoted}");
        assert!(quoted.starts_with(&format!("\"{}", "é".repeat(32))), "{quoted}");
        // A cut inside a character moves back to its start.
        let odd = format!("a{}", "é".repeat(100));
        assert!(
            quote(&odd).starts_with(&format!("\"a{}\"...", "é".repeat(31))),
            "{}",
            quote(&odd)
        );
        assert_eq!(shorten("team-a"), "team-a");
        assert_eq!(shorten(&"x".repeat(65)), format!("{}... (65 bytes)", "x".repeat(64)));
        assert_eq!(clip("abcdef", 6), "abcdef");
        assert_eq!(clip("abcdef", 4), "abcd... (6 bytes)");
    }
}
