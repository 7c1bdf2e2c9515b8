//! Trigger metadata: what a ScaledObject's trigger asks the scaler for.
//!
//! KEDA sends the trigger's whole `metadata` map (with `scalerAddress` and
//! anything else the user wrote). Keys we do not know are ignored; keys we do
//! know are checked strictly, and an error names the key.
use std::collections::HashMap;

use crate::lag::ConsumerKey;
use crate::nats::{Connections, DEFAULT_CONNECTION};

pub const STREAM: &str = "stream";
pub const CONSUMER: &str = "consumer";
pub const LAG_THRESHOLD: &str = "lagThreshold";
pub const ACTIVATION_LAG_THRESHOLD: &str = "activationLagThreshold";
pub const NATS_CONNECTION: &str = "natsConnection";
pub const JS_DOMAIN: &str = "jsDomain";

pub const DEFAULT_LAG_THRESHOLD: f64 = 5.0;

/// A parsed trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub key: ConsumerKey,
    pub lag_threshold: f64,
    pub activation_lag_threshold: f64,
}

/// A metadata problem, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trigger metadata {key:?}: {message}")]
pub struct MetadataError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> MetadataError {
    MetadataError {
        key,
        message: message.into(),
    }
}

impl Trigger {
    /// Parses and checks trigger metadata against the configured connections.
    pub fn parse(metadata: &HashMap<String, String>, connections: &Connections) -> Result<Self, MetadataError> {
        let connection = match metadata.get(NATS_CONNECTION).map(|s| s.trim()) {
            None | Some("") => DEFAULT_CONNECTION,
            Some(name) => {
                if connections.get(Some(name)).is_none() {
                    let known: Vec<&str> = connections.names().collect();
                    return Err(bad(
                        NATS_CONNECTION,
                        format!(
                            "no connection named {name:?} is configured (known: {})",
                            known.join(", ")
                        ),
                    ));
                }
                name
            }
        };
        Self::parse_with_connection(metadata, connection)
    }

    /// As [`Trigger::parse`], with the connection already chosen (no check
    /// against a live configuration).
    pub fn parse_with_connection(metadata: &HashMap<String, String>, connection: &str) -> Result<Self, MetadataError> {
        let stream = required_name(metadata, STREAM)?;
        let consumer = required_name(metadata, CONSUMER)?;
        let domain = match metadata.get(JS_DOMAIN).map(|s| s.trim()) {
            None | Some("") => None,
            Some(d) if is_nats_name(d) => Some(d),
            Some(d) => return Err(bad(JS_DOMAIN, format!("{d:?} is not a valid JetStream domain"))),
        };
        let lag_threshold = number(metadata, LAG_THRESHOLD, DEFAULT_LAG_THRESHOLD)?;
        if lag_threshold <= 0.0 {
            return Err(bad(
                LAG_THRESHOLD,
                format!("must be greater than 0, got {lag_threshold}"),
            ));
        }
        let activation_lag_threshold = number(metadata, ACTIVATION_LAG_THRESHOLD, 0.0)?;
        if activation_lag_threshold < 0.0 {
            return Err(bad(
                ACTIVATION_LAG_THRESHOLD,
                format!("must be 0 or more, got {activation_lag_threshold}"),
            ));
        }
        Ok(Trigger {
            key: ConsumerKey::new(connection, domain, stream, consumer),
            lag_threshold,
            activation_lag_threshold,
        })
    }

    /// The metric name KEDA shows in the HPA: stable, and made of lowercase
    /// letters, digits and `-` only.
    pub fn metric_name(&self) -> String {
        metric_name(&self.key.stream, &self.key.consumer)
    }

    /// `IsActive`: the lag is above the activation threshold.
    pub fn is_active(&self, lag: u64) -> bool {
        is_active(lag, self.activation_lag_threshold)
    }
}

/// KEDA's rule: active when the metric is above the activation threshold.
pub fn is_active(lag: u64, activation_lag_threshold: f64) -> bool {
    lag as f64 > activation_lag_threshold
}

/// `nats-lag-<stream>-<consumer>`, lowercased, every other character run
/// turned into one `-`. Names that are long, or that lose information in
/// that mapping, get a short hash of the exact names so two consumers never
/// share a metric name.
pub fn metric_name(stream: &str, consumer: &str) -> String {
    const MAX: usize = 120;
    let raw = format!("nats-lag-{stream}-{consumer}");
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if c.is_ascii_uppercase() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let lossless = raw
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !raw.contains("--");
    let trimmed = name.trim_end_matches('-');
    if lossless && trimmed.len() <= MAX {
        return trimmed.to_string();
    }
    let mut short: String = trimmed.chars().take(MAX - 9).collect();
    while short.ends_with('-') {
        short.pop();
    }
    format!("{short}-{:08x}", fnv1a(format!("{stream}\u{0}{consumer}").as_bytes()))
}

/// 32-bit FNV-1a: stable across versions and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Stream, consumer and domain names NATS accepts in an API subject: not
/// empty, no `.`, `*`, `>`, whitespace, path separators or control characters.
pub fn is_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
}

fn required_name<'a>(metadata: &'a HashMap<String, String>, key: &'static str) -> Result<&'a str, MetadataError> {
    match metadata.get(key).map(|s| s.as_str()) {
        None | Some("") => Err(bad(key, "is required")),
        Some(name) if is_nats_name(name) => Ok(name),
        Some(name) => Err(bad(
            key,
            format!("{name:?} is not a valid NATS name (no '.', '*', '>', '/', '\\' or whitespace)"),
        )),
    }
}

fn number(metadata: &HashMap<String, String>, key: &'static str, default: f64) -> Result<f64, MetadataError> {
    match metadata.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(default),
        Some(text) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(bad(key, format!("{text:?} is not a number"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Trigger, MetadataError> {
        Trigger::parse_with_connection(&meta(pairs), DEFAULT_CONNECTION)
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let t = parse(&[
            ("stream", "ORDERS"),
            ("consumer", "workers"),
            ("scalerAddress", "eds-scaler.eds-system:9090"),
            ("somethingElse", "x"),
        ])
        .unwrap();
        assert_eq!(t.key, ConsumerKey::new("default", None, "ORDERS", "workers"));
        assert_eq!(t.lag_threshold, 5.0);
        assert_eq!(t.activation_lag_threshold, 0.0);
    }

    #[test]
    fn numbers_may_be_integers_or_decimals() {
        let t = parse(&[
            ("stream", "S"),
            ("consumer", "C"),
            ("lagThreshold", "2.5"),
            ("activationLagThreshold", "3"),
            ("jsDomain", "hub"),
        ])
        .unwrap();
        assert_eq!(t.lag_threshold, 2.5);
        assert_eq!(t.activation_lag_threshold, 3.0);
        assert_eq!(t.key.domain.as_deref(), Some("hub"));
        assert!(!t.is_active(3));
        assert!(t.is_active(4));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("consumer", "C")], "stream"),
            (&[("stream", "S")], "consumer"),
            (&[("stream", "a.b"), ("consumer", "C")], "stream"),
            (&[("stream", "S"), ("consumer", "x>")], "consumer"),
            (&[("stream", "S"), ("consumer", "has space")], "consumer"),
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "five")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "0")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "NaN")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("activationLagThreshold", "-1")],
                "activationLagThreshold",
            ),
            (&[("stream", "S"), ("consumer", "C"), ("jsDomain", "a.b")], "jsDomain"),
        ];
        for (pairs, key) in cases {
            let err = parse(pairs).unwrap_err();
            assert_eq!(err.key, *key, "{pairs:?}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn metric_names_are_stable_and_clean() {
        assert_eq!(metric_name("orders", "workers"), "nats-lag-orders-workers");
        let upper = metric_name("MY_SERVICE_STREAM", "my-service-workers");
        assert!(
            upper.starts_with("nats-lag-my-service-stream-my-service-workers-"),
            "{upper}"
        );
        assert_eq!(upper, metric_name("MY_SERVICE_STREAM", "my-service-workers"));
        assert_ne!(metric_name("A_B", "c"), metric_name("a-b", "c"));
        assert_ne!(metric_name("A_B", "c"), metric_name("A__B", "c"));
        let long = metric_name(&"S".repeat(200), &"c".repeat(200));
        assert!(long.len() <= 120, "{}", long.len());
        for name in [upper, long, metric_name("weird$$name", "ünïcode")] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
            assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
        }
    }
}
