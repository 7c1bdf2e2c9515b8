//! Schema pieces the derive cannot express: int-or-string fields, list-map
//! conditions, and the CEL rules several fields share.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator, json_schema};

/// JetStream stream and consumer names travel inside API subjects, so NATS
/// forbids `.`, `*`, `>` and whitespace; `/` and `\` break file-backed
/// storage. Same rule as the scaler's `is_nats_name`.
pub const NATS_NAME_RULE: &str = r"self.matches('^[^.*>/\\\\\\p{Z}\\p{Cc}]+$')";
/// NATS counts a name's length in bytes, OpenAPI's `maxLength` in
/// characters: 200 `é` are 200 characters and 400 bytes.
pub const NATS_NAME_BYTES_RULE: &str = "size(bytes(self)) <= 255";
pub const DNS_LABEL_RULE: &str = r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
pub const DNS_SUBDOMAIN_RULE: &str =
    r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
/// NATS subjects: dot-separated tokens, none empty, no whitespace; `>` only
/// as the last token, `*` only as a whole token.
pub const NATS_SUBJECTS_RULE: &str =
    r"self.all(s, s.matches('^([^.*>\\p{Z}\\p{Cc}]+|\\*)(\\.([^.*>\\p{Z}\\p{Cc}]+|\\*))*(\\.>)?$') || s == '>')";
/// A consumer duration: digits and one unit, from 1s to 1h. `duration()` is
/// Kubernetes CEL's (and the offline evaluator's) Go duration parser.
pub const CONSUMER_DURATION_RULE: &str =
    r"self.matches('^[0-9]{1,7}(ms|s|m|h)$') && duration(self) >= duration('1s') && duration(self) <= duration('1h')";
/// Every `backoff` step is a [`CONSUMER_DURATION_RULE`] duration.
pub const CONSUMER_BACKOFF_RULE: &str = r"self.all(d, d.matches('^[0-9]{1,7}(ms|s|m|h)$') && duration(d) >= duration('1s') && duration(d) <= duration('1h'))";
pub const HTTP_PATH_RULE: &str = r"self.matches('^/[^\\p{Z}\\p{Cc}]*$')";
/// Quantities may be written as YAML integers or strings; `string(self)`
/// reads both the same way (and is understood by the offline evaluator too).
/// The shape comes first, and `&&` stops there: at most 12 digits before the
/// point and 6 after, a suffix or a one-digit exponent. The API server's
/// quantities have arbitrary precision, the offline evaluator's fit an i128,
/// and `1e308` or a 30-digit count overflowed it (a panic, or in a release
/// build a wrong answer); no CPU or memory amount needs more.
pub const QUANTITY_RULE: &str = r"string(self).matches('^\\+?[0-9]{1,12}(\\.[0-9]{1,6})?([numkMGTPE]|[KMGTPE]i|[eE][0-9])?$') && isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))";

pub fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}

pub fn quantity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}

/// Conditions keyed by `type`, so server-side apply merges them one by one.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
