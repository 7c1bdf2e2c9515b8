//! KEDA trigger metadata: the one contract between what `render` writes into
//! a ScaledObject and what the `scaler` reads back from KEDA.
//!
//! KEDA sends the trigger's whole `metadata` map (with `scalerAddress` and
//! anything else the user wrote). Keys we do not know are ignored; keys we do
//! know are checked strictly, and an error names the key.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::EventDrivenService;
use crate::lag::{ConsumerKey, ConsumerState};
use crate::nats::{Connections, DEFAULT_CONNECTION};
use crate::quote::quote;

/// KEDA's trigger type for an external scaler that pushes activity changes.
pub const TRIGGER_TYPE: &str = "external-push";
/// The key KEDA dials for external scalers.
pub const SCALER_ADDRESS: &str = "scalerAddress";
/// The key that makes KEDA dial the scaler with TLS.
pub const ENABLE_TLS: &str = "enableTLS";
pub const STREAM: &str = "stream";
pub const CONSUMER: &str = "consumer";
pub const LAG_THRESHOLD: &str = "lagThreshold";
pub const ACTIVATION_LAG_THRESHOLD: &str = "activationLagThreshold";
pub const NATS_CONNECTION: &str = "natsConnection";
pub const JS_DOMAIN: &str = "jsDomain";
pub const CONCURRENCY: &str = "concurrency";
pub const DRAIN_WITHIN: &str = "drainWithin";

/// The shortest and longest `drainWithin` that mean something: below a
/// second the HPA cannot act in time, above a day the rates it rests on
/// have long changed.
pub const MIN_DRAIN_WITHIN: Duration = Duration::from_secs(1);
pub const MAX_DRAIN_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// The most un-acknowledged messages one replica may hold, when a trigger
/// does not say.
pub const DEFAULT_CONCURRENCY: NonZeroU32 = NonZeroU32::MIN;
/// A claim's `activationLagThreshold` is an int64; a lag (a u64 count)
/// above 2^63 does not happen.
pub const MAX_ACTIVATION_LAG_THRESHOLD: f64 = 9_223_372_036_854_775_808.0;
/// Above this a "concurrency" is a mistake, not a worker.
pub const MAX_CONCURRENCY: u32 = 1_000_000;

/// Target lag per replica: a finite number above 0. Claims write it as an
/// integer or a decimal string, trigger metadata as a string; both are read
/// here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct LagThreshold(f64);

impl LagThreshold {
    pub const DEFAULT: LagThreshold = LagThreshold(5.0);

    /// The smallest threshold: a claim writes at most six decimals.
    pub const MIN: f64 = 0.000_001;
    /// Thresholds are below one billion, as a claim's rule says: a larger
    /// one makes every lag round to zero replicas.
    pub const MAX: f64 = 1e9;

    pub fn new(value: f64) -> Result<Self, String> {
        if !value.is_finite() {
            return Err(format!("{value} is not a number"));
        }
        if !(Self::MIN..Self::MAX).contains(&value) {
            return Err(format!(
                "must be at least {} and below {} (1e9), got {value:e}",
                Self::MIN,
                Self::MAX
            ));
        }
        Ok(LagThreshold(value))
    }

    /// Reads `"5"`, `"2.5"` (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let value: f64 = text.parse().map_err(|_| format!("{} is not a number", quote(text)))?;
        if !value.is_finite() {
            return Err(format!("{} is not a number", quote(text)));
        }
        Self::new(value)
    }

    /// A claim's `scaling.lagThreshold`.
    pub fn from_claim(value: &IntOrString) -> Result<Self, String> {
        match value {
            IntOrString::Int(n) => Self::new(f64::from(*n)),
            IntOrString::String(s) => Self::parse(s),
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for LagThreshold {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for LagThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub key: ConsumerKey,
    pub lag_threshold: LagThreshold,
    pub activation_lag_threshold: f64,
    /// The most un-acknowledged messages one replica holds at once, its
    /// client's prefetch included.
    pub concurrency: NonZeroU32,
    /// The time the backlog should drain in: the scaler streams a measured
    /// target (see the drainWithin estimator). `lagThreshold` is the target until the
    /// capacity of a replica is known.
    pub drain_within: Option<Duration>,
}

/// What `GetMetrics` reports for one reading, and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleMetric {
    /// The true backlog: pending + ack-pending.
    pub lag: u64,
    /// The metric before the cap: the lag, or `lag + λ·D` for `drainWithin`.
    pub wanted: f64,
    /// The value KEDA gets: the lag, or less where more replicas could not
    /// take more work.
    pub value: f64,
    /// The replicas that can hold work at once, when the consumer's
    /// `max_ack_pending` limits them.
    pub replica_cap: Option<u64>,
}

impl ScaleMetric {
    /// The metric stops at the cap: the lag is more than the capped replicas
    /// would be asked to carry.
    pub fn is_capped(&self) -> bool {
        self.value < self.wanted
    }
}

/// `ceil(max_ack_pending / concurrency)`: once that many replicas each hold
/// `concurrency` messages, the server hands out no more, so further replicas
/// would sit idle. `None` when the consumer sets no limit.
pub fn replica_cap(max_ack_pending: Option<u64>, concurrency: NonZeroU32) -> Option<u64> {
    max_ack_pending.map(|limit| limit.div_ceil(u64::from(concurrency.get())))
}

/// The KEDA version the platform runs, as the operator declares it: what
/// decides whether `drainWithin` can reach the HPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KedaVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KedaVersion {
    /// The first KEDA with `StreamMetricSpec`.
    pub const STREAMS_METRIC_SPECS: KedaVersion = KedaVersion {
        major: 2,
        minor: 21,
        patch: 0,
    };

    /// Reads `2.21.0` or `v2.21.0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{} is not a KEDA version such as 2.21.0", quote(text));
        let mut parts = text.trim().trim_start_matches('v').split('.');
        let mut next = || -> Result<u32, String> { parts.next().ok_or_else(bad)?.parse().map_err(|_| bad()) };
        let version = KedaVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        match parts.next() {
            None => Ok(version),
            Some(_) => Err(bad()),
        }
    }

    /// Whether KEDA opens `StreamMetricSpec`, so a streamed target reaches the HPA.
    pub fn streams_metric_specs(self) -> bool {
        self >= Self::STREAMS_METRIC_SPECS
    }
}

impl fmt::Display for KedaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
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
                            "no connection named {} is configured (known: {})",
                            quote(name),
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
            Some(d) => return Err(bad(JS_DOMAIN, format!("{} is not a valid JetStream domain", quote(d)))),
        };
        let lag_threshold = match metadata.get(LAG_THRESHOLD).map(|s| s.trim()) {
            None | Some("") => LagThreshold::DEFAULT,
            Some(text) => LagThreshold::parse(text).map_err(|message| bad(LAG_THRESHOLD, message))?,
        };
        let activation_lag_threshold = number(metadata, ACTIVATION_LAG_THRESHOLD, 0.0)?;
        if !(0.0..=MAX_ACTIVATION_LAG_THRESHOLD).contains(&activation_lag_threshold) {
            return Err(bad(
                ACTIVATION_LAG_THRESHOLD,
                format!(
                    "must be between 0 and {MAX_ACTIVATION_LAG_THRESHOLD:e} (2^63), got {activation_lag_threshold:e}"
                ),
            ));
        }
        let concurrency = match metadata.get(CONCURRENCY).map(|s| s.trim()) {
            None | Some("") => DEFAULT_CONCURRENCY,
            Some(text) => parse_concurrency(text).map_err(|message| bad(CONCURRENCY, message))?,
        };
        let drain_within = match metadata.get(DRAIN_WITHIN).map(|s| s.trim()) {
            None | Some("") => None,
            Some(text) => Some(parse_drain_within(text).map_err(|message| bad(DRAIN_WITHIN, message))?),
        };
        Ok(Trigger {
            key: ConsumerKey::new(connection, domain, stream, consumer),
            lag_threshold,
            activation_lag_threshold,
            concurrency,
            drain_within,
        })
    }

    /// The metric name KEDA shows in the HPA: stable, and made of lowercase
    /// letters, digits and `-` only.
    pub fn metric_name(&self) -> String {
        metric_name(&self.key.stream, &self.key.consumer)
    }

    /// The metric KEDA scales on: `min(lag, R_cap × target)`, where `R_cap`
    /// is [`replica_cap`] and `target` the target in force (`lagThreshold`).
    /// The HPA asks for `ceil(metric / target)` replicas, so it never asks for
    /// more than `R_cap`. This is the one replica ceiling the scaler applies:
    /// a feature that changes the target must pass the new target here.
    pub fn scale_metric(&self, state: &ConsumerState) -> ScaleMetric {
        scale_metric(state, self.lag_threshold.get(), self.concurrency)
    }

    /// `IsActive`: the lag is above the activation threshold.
    pub fn is_active(&self, lag: u64) -> bool {
        is_active(lag, self.activation_lag_threshold)
    }
}

/// The trigger metadata of a claim's ScaledObject: only names and numbers.
/// The scaler holds every NATS credential, and a trigger can choose among its
/// connections but never supply one. With `tls`, KEDA dials the scaler with
/// TLS (its material comes from a platform-wide trigger authentication).
pub fn claim_metadata(eds: &EventDrivenService, scaler_address: &str, tls: bool) -> BTreeMap<String, String> {
    let scaling = &eds.spec.scaling;
    let nats = &eds.spec.nats;
    let mut metadata = BTreeMap::from([
        (SCALER_ADDRESS.to_string(), scaler_address.to_string()),
        (STREAM.to_string(), nats.stream.clone()),
        (CONSUMER.to_string(), nats.consumer.clone()),
        (LAG_THRESHOLD.to_string(), threshold_text(&scaling.lag_threshold)),
        (
            ACTIVATION_LAG_THRESHOLD.to_string(),
            scaling.activation_lag_threshold.to_string(),
        ),
    ]);
    if let Some(connection) = &nats.connection {
        metadata.insert(NATS_CONNECTION.to_string(), connection.clone());
    }
    if let Some(concurrency) = scaling.concurrency {
        metadata.insert(CONCURRENCY.to_string(), concurrency.to_string());
    }
    // Only when set: a trigger without it keeps KEDA polling the spec.
    if let Some(drain_within) = &scaling.drain_within {
        metadata.insert(DRAIN_WITHIN.to_string(), drain_within.clone());
    }
    if tls {
        metadata.insert(ENABLE_TLS.to_string(), "true".to_string());
    }
    metadata
}

/// Trigger metadata is all strings; `"5"` and `5` render the same. The text
/// is the claim's own (checked by the CRD), so a re-render never changes it.
fn threshold_text(threshold: &IntOrString) -> String {
    match threshold {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// See [`Trigger::scale_metric`]; `target` is the per-replica target in force.
pub fn scale_metric(state: &ConsumerState, target: f64, concurrency: NonZeroU32) -> ScaleMetric {
    scale_metric_of(state, state.lag() as f64, target, concurrency)
}

/// As [`scale_metric`], for a metric `wanted` other than the lag (the
/// `drainWithin` metric `lag + λ·D`): `min(wanted, R_cap × target)`.
pub fn scale_metric_of(state: &ConsumerState, wanted: f64, target: f64, concurrency: NonZeroU32) -> ScaleMetric {
    let replica_cap = replica_cap(state.max_ack_pending, concurrency);
    let value = match replica_cap {
        Some(cap) => wanted.min(cap as f64 * target),
        None => wanted,
    };
    ScaleMetric {
        lag: state.lag(),
        wanted,
        value,
        replica_cap,
    }
}

/// A positive whole number, at most [`MAX_CONCURRENCY`].
pub fn parse_concurrency(text: &str) -> Result<NonZeroU32, String> {
    let value: u32 = text
        .parse()
        .map_err(|_| format!("{} is not a positive whole number", quote(text)))?;
    match NonZeroU32::new(value) {
        Some(n) if value <= MAX_CONCURRENCY => Ok(n),
        Some(_) => Err(format!("must be at most {MAX_CONCURRENCY}, got {value}")),
        None => Err("must be at least 1, got 0".to_string()),
    }
}

/// A duration such as `60s`, `5m` or `1h30m` (jiff's friendly format, which
/// also reads the claim's `h`/`m`/`s` form), from [`MIN_DRAIN_WITHIN`] to
/// [`MAX_DRAIN_WITHIN`].
pub fn parse_drain_within(text: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("{} is not a duration such as \"60s\", \"5m\" or \"1h30m\"", quote(text)))?;
    let duration = Duration::try_from(parsed).map_err(|_| format!("must be positive, got {}", quote(text)))?;
    if !(MIN_DRAIN_WITHIN..=MAX_DRAIN_WITHIN).contains(&duration) {
        return Err(format!("must be from 1s to 24h, got {}", quote(text)));
    }
    Ok(duration)
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
/// The `fnv` crate has only the 64-bit variant, and these 8 hex digits are
/// part of HPA metric names already in clusters, so they stay as they are.
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
            format!(
                "{} is not a valid NATS name (1 to 255 bytes; no '.', '*', '>', '/', '\\' or whitespace)",
                quote(name)
            ),
        )),
    }
}

fn number(metadata: &HashMap<String, String>, key: &'static str, default: f64) -> Result<f64, MetadataError> {
    match metadata.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(default),
        Some(text) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(bad(key, format!("{} is not a number", quote(text)))),
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
        assert_eq!(t.lag_threshold, LagThreshold::DEFAULT);
        assert_eq!(t.activation_lag_threshold, 0.0);
        assert_eq!(t.concurrency.get(), 1);
    }

    fn state(pending: u64, ack_pending: u64, max_ack_pending: Option<u64>) -> ConsumerState {
        ConsumerState {
            pending,
            ack_pending,
            max_ack_pending,
            ..ConsumerState::default()
        }
    }

    #[test]
    fn the_metric_stops_at_the_replica_cap() {
        let one = NonZeroU32::new(1).unwrap();
        let two = NonZeroU32::new(2).unwrap();
        // max_ack_pending 4, one message per replica: 4 replicas can work.
        let m = scale_metric(&state(96, 4, Some(4)), 5.0, one);
        assert_eq!((m.lag, m.value, m.replica_cap), (100, 20.0, Some(4)));
        assert!(m.is_capped());
        assert_eq!(crate::lag::desired_replicas(m.value as u64, 5.0, 0, 10), 4);
        // Two per replica: 2 replicas.
        let m = scale_metric(&state(96, 4, Some(4)), 5.0, two);
        assert_eq!((m.value, m.replica_cap), (10.0, Some(2)));
        // An odd limit rounds up: 5 slots at 2 each need 3 replicas.
        assert_eq!(replica_cap(Some(5), two), Some(3));
        // Below the cap, the metric is the lag.
        let m = scale_metric(&state(3, 0, Some(4)), 5.0, one);
        assert_eq!(m.value, 3.0);
        assert!(!m.is_capped());
        // No limit: the lag, however large.
        let m = scale_metric(&state(1_000_000, 0, None), 5.0, one);
        assert_eq!((m.value, m.replica_cap), (1_000_000.0, None));
        // A fractional target keeps ceil(metric / target) at the cap.
        let m = scale_metric(&state(500, 0, Some(3)), 2.5, one);
        assert_eq!((m.value / 2.5).ceil(), 3.0);
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
        assert_eq!(t.lag_threshold.get(), 2.5);
        assert_eq!(t.activation_lag_threshold, 3.0);
        assert_eq!(t.key.domain.as_deref(), Some("hub"));
        assert!(!t.is_active(3));
        assert!(t.is_active(4));
    }

    #[test]
    fn errors_name_the_key() {
        let wide = "é".repeat(128);
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
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "1e308")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "1e-320")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("lagThreshold", "1000000000")],
                "lagThreshold",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("activationLagThreshold", "1e308")],
                "activationLagThreshold",
            ),
            (&[("stream", "S"), ("consumer", &wide)], "consumer"),
            (&[("stream", "S"), ("consumer", "C"), ("jsDomain", "a.b")], "jsDomain"),
            (
                &[("stream", "S"), ("consumer", "C"), ("concurrency", "0")],
                "concurrency",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("concurrency", "-2")],
                "concurrency",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("concurrency", "1.5")],
                "concurrency",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("concurrency", "many")],
                "concurrency",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("concurrency", "1000001")],
                "concurrency",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("drainWithin", "soon")],
                "drainWithin",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("drainWithin", "0s")],
                "drainWithin",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("drainWithin", "25h")],
                "drainWithin",
            ),
            (
                &[("stream", "S"), ("consumer", "C"), ("drainWithin", "-60s")],
                "drainWithin",
            ),
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

    /// The contract with our own scaler: what render writes, it reads back.
    #[test]
    fn the_scaler_parses_what_we_render() {
        let eds = EventDrivenService::test()
            .with_connection("hub-eu")
            .with_lag_threshold(IntOrString::String("2.5".into()))
            .with_spec(|s| {
                s.scaling.activation_lag_threshold = 4;
                s.scaling.concurrency = Some(8);
            });
        let metadata: HashMap<String, String> = claim_metadata(&eds, "scaler:9090", true).into_iter().collect();
        let trigger = Trigger::parse_with_connection(&metadata, &metadata[NATS_CONNECTION]).unwrap();
        assert_eq!(
            trigger.key,
            ConsumerKey::new("hub-eu", None, "ORDERS", "orders-workers")
        );
        assert_eq!(trigger.lag_threshold.get(), 2.5);
        assert_eq!(trigger.activation_lag_threshold, 4.0);
        assert_eq!(trigger.concurrency.get(), 8);
        assert_eq!(metadata[ENABLE_TLS], "true");
        assert_eq!(metadata[SCALER_ADDRESS], "scaler:9090");
    }

    #[test]
    fn drain_within_is_read_and_rendered_only_when_set() {
        for (text, secs) in [("60s", 60), ("5m", 300), ("1h30m", 5400), ("1s", 1), ("24h", 86400)] {
            assert_eq!(parse_drain_within(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for text in ["", "500ms", "24h1s", "0s", "-1m", "forever"] {
            assert!(parse_drain_within(text).is_err(), "{text:?}");
        }
        // Found by the trigger fuzzer: the whole value was echoed, and a
        // control character is escaped to six bytes.
        for long in ["\u{7f}".repeat(100_000), format!("{}s", "9".repeat(100_000))] {
            let message = parse_drain_within(&long).unwrap_err();
            assert!(message.len() < 1024, "{} bytes", message.len());
        }
        let plain = EventDrivenService::test();
        assert!(!claim_metadata(&plain, "s:9090", false).contains_key(DRAIN_WITHIN));
        let eds = EventDrivenService::test().with_spec(|s| s.scaling.drain_within = Some("1m30s".into()));
        let metadata: HashMap<String, String> = claim_metadata(&eds, "s:9090", false).into_iter().collect();
        assert_eq!(metadata[DRAIN_WITHIN], "1m30s");
        let trigger = Trigger::parse_with_connection(&metadata, DEFAULT_CONNECTION).unwrap();
        assert_eq!(trigger.drain_within, Some(Duration::from_secs(90)));
        assert_eq!(
            trigger.lag_threshold,
            LagThreshold::DEFAULT,
            "the fallback target stays"
        );
    }

    #[test]
    fn only_keda_2_21_and_later_streams_metric_specs() {
        for (text, streams) in [
            ("2.21.0", true),
            ("v2.21.0", true),
            ("2.22.1", true),
            ("3.0.0", true),
            ("v2.20.2", false),
        ] {
            assert_eq!(
                KedaVersion::parse(text).unwrap().streams_metric_specs(),
                streams,
                "{text}"
            );
        }
        for bad in ["", "2.21", "2.21.0.1", "latest", "2.x.0"] {
            assert!(KedaVersion::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(KedaVersion::parse("2.20.2").unwrap().to_string(), "v2.20.2");
    }

    #[test]
    fn lag_thresholds_read_the_same_from_a_claim_and_from_metadata() {
        for (claim, text) in [
            (IntOrString::Int(5), "5"),
            (IntOrString::String("2.5".into()), "2.5"),
            (IntOrString::String(" 7 ".into()), "7"),
        ] {
            assert_eq!(LagThreshold::from_claim(&claim), LagThreshold::parse(text));
        }
        for bad in ["0", "-1", "NaN", "inf", "five", ""] {
            assert!(LagThreshold::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LagThreshold::from_claim(&IntOrString::Int(0)).is_err());
        assert_eq!(LagThreshold::parse("2.5").unwrap().to_string(), "2.5");
        assert_eq!(LagThreshold::DEFAULT.to_string(), "5");
    }
}
