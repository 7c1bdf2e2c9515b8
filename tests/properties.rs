//! Properties of the paths hostile input reaches (issue 18): trigger
//! metadata parsing, subject building, claim validation and render, and the
//! YAML input. No panic, no hang, errors short and naming their key. The fuzz
//! corpus in `fuzz/corpus/` is replayed here through the same functions the
//! fuzz targets (`fuzz/fuzz_targets/`) call.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use eds::lag::ConsumerKey;
use eds::lag::jetstream::info_subject;
use eds::render::{Platform, render_text};
use eds::trigger::Trigger;
use proptest::prelude::*;
use strategies::value;

mod strategies;

const KEYS: &[&str] = &[
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "jsDomain",
    "concurrency",
    "natsConnection",
    "scalerAddress",
];

const CLAIM: &str = "apiVersion: platform.bizmatters.io/v1alpha1
kind: EventDrivenService
metadata:
  name: a
  namespace: team-a
spec:
  image: ghcr.io/acme/a:1
  nats:
    stream: A
    consumer: a
";

/// What the `trigger` fuzz target does with its input: `key=value` lines.
fn trigger_case(input: &str) {
    let metadata: HashMap<String, String> = input
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    check_trigger(&metadata);
}

fn check_trigger(metadata: &HashMap<String, String>) {
    match Trigger::parse_with_connection(metadata, "default") {
        Ok(trigger) => check_subject(&trigger.key),
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() < 1024, "{} bytes: {message:.200}", message.len());
            assert!(message.contains(e.key), "{message}");
        }
    }
}

/// A parsed trigger's subject has one token per name: nothing it names can
/// reach another API subject.
fn check_subject(key: &ConsumerKey) {
    let subject = info_subject(key);
    let tokens: Vec<&str> = subject.split('.').collect();
    let (prefix, names) = tokens.split_at(tokens.len() - 2);
    assert_eq!(names, [&*key.stream, &*key.consumer], "{subject}");
    match &key.domain {
        None => assert_eq!(prefix, ["$JS", "API", "CONSUMER", "INFO"], "{subject}"),
        Some(d) => assert_eq!(prefix, ["$JS", d, "API", "CONSUMER", "INFO"], "{subject}"),
    }
}

/// What the `render` fuzz target does with its input: `eds render`'s path.
fn render_case(input: &str) {
    let started = Instant::now();
    if let Err(e) = render_text(input, &Platform::default()) {
        let message = e.to_string();
        assert!(!message.contains("a bug in eds"), "{message}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn trigger_metadata_never_panics_and_errors_name_their_key(
        pairs in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..8)
    ) {
        let metadata: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        check_trigger(&metadata);
    }

    #[test]
    fn valid_names_make_one_token_each(stream in "[A-Za-z0-9_-]{1,40}", consumer in "\\PC{1,40}", domain in proptest::option::of("[a-z]{1,8}")) {
        let mut metadata = HashMap::from([("stream".to_string(), stream), ("consumer".to_string(), consumer)]);
        if let Some(d) = domain {
            metadata.insert("jsDomain".into(), d);
        }
        check_trigger(&metadata);
    }

    #[test]
    fn render_never_panics_on_arbitrary_text(input in "\\PC{0,400}") {
        render_case(&input);
    }

    #[test]
    fn render_never_panics_on_a_mutated_claim(at in 0usize..CLAIM.len(), insert in "[ -~\\n]{0,12}", cut in 0usize..8) {
        let mut text = CLAIM.to_string();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + cut).min(text.len());
        text.replace_range(at..end, &insert);
        render_case(&text);
    }

    #[test]
    fn claim_values_never_panic_validation(field in proptest::sample::select(&[
        "port", "minReplicas", "maxReplicas", "image", "size",
    ][..]), raw in prop_oneof![
        Just(".nan".to_string()), Just(".inf".to_string()), Just("-.inf".to_string()),
        Just("9223372036854775808".to_string()), Just("-9223372036854775809".to_string()),
        Just("[]".to_string()), Just("{}".to_string()), Just("~".to_string()),
        "-?[0-9]{1,25}", "[0-9]{1,3}\\.[0-9]{1,3}", "\"\\PC{0,20}\"",
    ]) {
        render_case(&format!("{CLAIM}  {field}: {raw}\n"));
    }
}

/// Every file of the fuzz corpus, replayed through the fuzz targets' code.
#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (target, case) in [("trigger", trigger_case as fn(&str)), ("render", render_case)] {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            // The targets take only UTF-8, as `eds render` does.
            if let Ok(text) = std::str::from_utf8(&bytes) {
                case(text);
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 4, "the corpus lost its files: {replayed}");
}
