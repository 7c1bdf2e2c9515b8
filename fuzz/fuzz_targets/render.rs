//! `eds render`'s path: YAML input, claim validation, render.
//! tests/properties.rs replays the corpus through the same call.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Err(e) = eds::render::render_text(input, &eds::render::Platform::default()) {
        assert!(!e.to_string().contains("a bug in eds"), "{e}");
    }
});
