//! Trigger metadata as `key=value` lines: parse, then build the subject.
//! tests/properties.rs replays the corpus through the same steps.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let metadata: HashMap<String, String> = input
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match eds::trigger::Trigger::parse_with_connection(&metadata, "default") {
        Ok(trigger) => {
            let subject = eds::lag::jetstream::info_subject(&trigger.key);
            let tokens = subject.split('.').count();
            assert_eq!(tokens, if trigger.key.domain.is_some() { 7 } else { 6 }, "{subject}");
        }
        Err(e) => assert!(e.to_string().len() < 1024),
    }
});
