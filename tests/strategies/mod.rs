//! Generators shared by the property tests (`tests/properties.rs`) and the
//! slow tier's sample of claims checked against the API server
//! (`tests/manifests.rs`).
use proptest::prelude::*;

/// A string as hostile input sends it: empty, plain, number-like, any
/// printable text, long runs of a two-byte character, and the spellings of
/// not-a-number and out-of-range numbers.
pub fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{1,20}",
        "[0-9.eE+-]{1,12}",
        "\\PC{0,40}",
        (0usize..600).prop_map(|n| "é".repeat(n)),
        Just("NaN".to_string()),
        Just("1e308".to_string()),
        Just("1e-320".to_string()),
        Just("-0".to_string()),
    ]
}
