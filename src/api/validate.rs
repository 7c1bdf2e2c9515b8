//! Checking a claim without a cluster, by the CRD's own schema.
//!
//! The API server checks a claim in two steps: the structural schema (types,
//! required fields, enums, lengths, unknown fields), then, only if that passed,
//! the CEL `x-kubernetes-validations` rules. We do the same against the schema
//! of [`super::crd`]: the structural step here, the CEL step with kube's CEL
//! evaluator on the very rules the API server runs. Nothing restates a rule,
//! so the two cannot drift; errors are worded as the API server words them.
use std::fmt;
use std::sync::LazyLock;

use kube::Resource;
use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use serde_json::{Map, Value};

use super::EventDrivenService;
use crate::quote::{quote, shorten};

/// One thing wrong with a claim: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.nats.stream`, `spec.env[2].name`; empty for the whole object.
    pub field: String,
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "{}: {}", self.field, self.detail)
        }
    }
}

/// Everything wrong with one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidClaim {
    /// `namespace/name`, or `name`, or `<unnamed>`.
    pub claim: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventDrivenService {:?} is invalid:", self.claim)?;
        for error in &self.errors {
            write!(f, "\n* {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidClaim {}

/// Checks a claim as the API server would and returns it with its defaults.
pub fn check_claim(value: &Value) -> Result<EventDrivenService, InvalidClaim> {
    let invalid = |errors| InvalidClaim {
        claim: claim_name(value),
        errors,
    };
    let mut value = value.clone();
    let mut errors = Vec::new();
    check_type_meta(&value, &mut errors);
    check_structure(&SCHEMA.json, &mut value, "", &mut errors);
    if !errors.is_empty() {
        // As the API server: CEL rules assume a well-formed object.
        return Err(invalid(errors));
    }
    if let Err(failures) = Validator::new().validate_compiled(&SCHEMA.compiled, &value, None) {
        let mut errors: Vec<FieldError> = failures
            .iter()
            .map(|failure| {
                let detail = match failure.kind {
                    ErrorKind::ValidationFailure => {
                        invalid_value(lookup(&value, &failure.field_path), &failure.message)
                    }
                    // A rule that cannot run offline must not pass silently.
                    _ => format!("rule {:?} could not be evaluated: {}", failure.rule, failure.message),
                };
                FieldError {
                    field: failure.field_path.clone(),
                    detail,
                }
            })
            .collect();
        // The evaluator walks objects in no fixed order; a report should not change between runs.
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(invalid(errors));
    }
    serde_json::from_value(value).map_err(|e| {
        invalid(vec![FieldError {
            field: String::new(),
            detail: format!("does not decode after validation (a bug in eds): {e}"),
        }])
    })
}

struct Schema {
    json: Value,
    compiled: CompiledSchema,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let crd = super::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    let json = serde_json::to_value(schema).expect("a schema serializes to JSON");
    let compiled = compile_schema(&json);
    Schema { json, compiled }
});

fn claim_name(value: &Value) -> String {
    let meta = |key: &str| value.pointer(&format!("/metadata/{key}")).and_then(Value::as_str);
    match (meta("namespace"), meta("name")) {
        (Some(ns), Some(name)) => format!("{}/{}", shorten(ns), shorten(name)),
        (None, Some(name)) => shorten(name).into_owned(),
        _ => "<unnamed>".to_string(),
    }
}

fn check_type_meta(value: &Value, errors: &mut Vec<FieldError>) {
    let api_version = EventDrivenService::api_version(&());
    let kind = EventDrivenService::kind(&());
    for (field, want) in [("apiVersion", api_version.as_ref()), ("kind", kind.as_ref())] {
        match value.get(field).and_then(Value::as_str) {
            Some(got) if got == want => {}
            Some(got) => errors.push(FieldError {
                field: field.to_string(),
                detail: format!("Unsupported value: {}: supported values: {want:?}", quote(got)),
            }),
            None => errors.push(required(field)),
        }
    }
    let Some(metadata) = value.get("metadata") else {
        return errors.push(required("metadata.name"));
    };
    let Some(metadata) = metadata.as_object() else {
        return errors.push(wrong_type("metadata", "object", metadata));
    };
    match metadata.get("name") {
        Some(Value::String(_)) => {}
        Some(other) => errors.push(wrong_type("metadata.name", "string", other)),
        None => errors.push(required("metadata.name")),
    }
    match metadata.get("namespace") {
        None | Some(Value::Null) => {}
        Some(Value::String(ns)) if is_dns_label(ns) => {}
        Some(Value::String(ns)) => errors.push(FieldError {
            field: "metadata.namespace".into(),
            detail: format!(
                "Invalid value: {}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with one, and be at most 63 bytes",
                quote(ns)
            ),
        }),
        Some(other) => errors.push(wrong_type("metadata.namespace", "string", other)),
    }
    for map in ["labels", "annotations"] {
        let field = format!("metadata.{map}");
        match metadata.get(map) {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                let before = errors.len();
                for (key, entry) in entries {
                    if !entry.is_string() {
                        errors.push(wrong_type(&format!("{field}.{}", shorten(key)), "string", entry));
                    }
                }
                if errors.len() == before {
                    check_metadata_map(&field, entries, errors);
                }
            }
            Some(other) => errors.push(wrong_type(&field, "object", other)),
        }
    }
}

/// The most bytes all annotations of an object may take, keys and values
/// together: the API server's limit.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Label keys and values, and annotation keys and total size, as the API
/// server checks them: a claim it would refuse is not rendered either.
fn check_metadata_map(field: &str, entries: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let invalid = |value: &str, rule: &str| FieldError {
        field: field.to_string(),
        detail: format!("Invalid value: {}: {rule}", quote(value)),
    };
    for (key, value) in entries {
        if !is_qualified_name(key) {
            errors.push(invalid(
                key,
                "a key is a name of at most 63 bytes (letters, digits, '-', '_' or '.', starting and ending with a letter or digit), optionally after a DNS subdomain prefix of at most 253 bytes and '/'",
            ));
        }
        let value = value.as_str().unwrap_or_default();
        if field == "metadata.labels" && !(value.is_empty() || is_label_name(value)) {
            errors.push(invalid(
                value,
                "a label value is empty or at most 63 bytes of letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ));
        }
    }
    if field == "metadata.annotations" {
        let total: usize = entries
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > MAX_ANNOTATION_BYTES {
            errors.push(FieldError {
                field: field.to_string(),
                detail: format!("Too long: {total} bytes, may not be more than {MAX_ANNOTATION_BYTES} bytes"),
            });
        }
    }
}

/// `name` or `prefix/name`: a label or annotation key.
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// At most 63 bytes of ASCII letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(inner)
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Dot-separated RFC 1123 labels, at most 253 bytes.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A Kubernetes namespace name: an RFC 1123 label.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The structural part of OpenAPI validation, for the keywords our schema
/// uses. Nulls in non-nullable fields are dropped first, as the API server
/// prunes them before defaulting.
fn check_structure(schema: &Value, value: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_string()) {
            errors.push(wrong_type(path, "integer,string", value));
        }
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => check_object(schema, value, path, errors),
        Some("array") => {
            let Some(items) = value.as_array_mut() else {
                return errors.push(wrong_type(path, "array", value));
            };
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    detail: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check_structure(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                return errors.push(wrong_type(path, "string", value));
            };
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && text.chars().count() as u64 > max
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    detail: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.contains(value)
            {
                let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
                errors.push(FieldError {
                    field: path.to_string(),
                    detail: format!(
                        "Unsupported value: {}: supported values: {}",
                        quote(text),
                        supported.join(", ")
                    ),
                });
            }
        }
        Some("integer") if !(value.is_i64() || value.is_u64()) => errors.push(wrong_type(path, "integer", value)),
        // The API server reads integers as int64 (the CEL rules bound
        // narrower fields); a larger one cannot be decoded.
        Some("integer") if !value.is_i64() => errors.push(FieldError {
            field: path.to_string(),
            detail: format!("Invalid value: {value}: {path} in body must be of type integer (int64): out of range"),
        }),
        Some("boolean") if !value.is_boolean() => errors.push(wrong_type(path, "boolean", value)),
        _ => {}
    }
}

fn check_object(schema: &Value, value: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(object) = value.as_object_mut() else {
        return errors.push(wrong_type(path, "object", value));
    };
    let empty = Map::new();
    let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    object.retain(|key, field| {
        let nullable = properties
            .get(key)
            .and_then(|p| p.get("nullable"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        !field.is_null() || nullable
    });
    for required_key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(key) = required_key.as_str()
            && !object.contains_key(key)
        {
            errors.push(required(&join(path, key)));
        }
    }
    for (key, field) in object.iter_mut() {
        match properties.get(key) {
            Some(_) if field.is_null() => {}
            Some(field_schema) => check_structure(field_schema, field, &join(path, key), errors),
            // The root's type and object meta are the API server's, not in our schema.
            None if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") => {}
            None => errors.push(FieldError {
                field: join(path, &shorten(key)),
                detail: format!("unknown field {}", quote(&join(path, key))),
            }),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn required(field: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        detail: "Required value".to_string(),
    }
}

fn wrong_type(path: &str, want: &str, value: &Value) -> FieldError {
    let got = json_type(value);
    FieldError {
        field: path.to_string(),
        detail: format!("Invalid value: {got:?}: {path} in body must be of type {want}: {got:?}"),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The API server shows scalar values and leaves objects and lists out.
fn invalid_value(value: Option<&Value>, message: &str) -> String {
    match value {
        Some(Value::String(text)) => format!("Invalid value: {}: {message}", quote(text)),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => format!("Invalid value: {v}: {message}"),
        _ => format!("Invalid value: {message}"),
    }
}

/// The value at a CEL error's field path (`spec.env[2].name`).
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(root);
    }
    let mut current = root;
    for segment in path.split('.') {
        let (key, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            current = current.get(key)?;
        }
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            current = current.get(index.parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::fixtures::{invalid_cases, valid_claim};
    use crate::api::{DeletionPolicy, DeliverPolicy};

    fn errors(claim: &Value) -> Vec<FieldError> {
        check_claim(claim).expect_err("the claim must be refused").errors
    }

    #[test]
    fn labels_and_annotations_are_checked_as_the_api_server_checks_them() {
        let with = |metadata: Value| {
            let mut claim = valid_claim();
            json_patch::merge(&mut claim, &json!({ "metadata": metadata }));
            check_claim(&claim)
        };
        for good in [
            json!({"labels": {"team": "a", "example.com/tier": "", "a.b_c-d": "A.b_1"}}),
            json!({"labels": {"k": "a".repeat(63)}}),
            json!({"annotations": {"example.com/note": "any text at all!", "n": "x".repeat(1000)}}),
        ] {
            assert!(with(good.clone()).is_ok(), "{good}");
        }
        for (bad, field) in [
            (json!({"labels": {"team": "a".repeat(64)}}), "metadata.labels"),
            (json!({"labels": {"team": "-0"}}), "metadata.labels"),
            (json!({"labels": {"team": "bad value!"}}), "metadata.labels"),
            (json!({"labels": {"bad key!": "a"}}), "metadata.labels"),
            (json!({"labels": {"k".repeat(64): "a"}}), "metadata.labels"),
            (json!({"labels": {"Bad_Prefix/k": "a"}}), "metadata.labels"),
            (json!({"labels": {"/k": "a"}}), "metadata.labels"),
            (json!({"annotations": {"bad key!": "a"}}), "metadata.annotations"),
            (
                json!({"annotations": {"note": "a".repeat(MAX_ANNOTATION_BYTES)}}),
                "metadata.annotations",
            ),
        ] {
            let errors = with(bad.clone()).expect_err("refused").errors;
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].field, field, "{bad}");
            assert!(errors[0].detail.len() < 400, "{}", errors[0].detail);
        }
    }

    #[test]
    fn every_invalid_case_is_refused_naming_its_field() {
        let cases = invalid_cases();
        assert!(cases.len() > 40, "the table lost cases: {}", cases.len());
        for case in cases {
            let errors = errors(&case.claim());
            assert_eq!(errors.len(), 1, "{}: {errors:?}", case.case);
            let error = &errors[0];
            assert_eq!(error.field, case.field, "{}: {error}", case.case);
            assert!(
                error.detail == case.message || error.detail.ends_with(&format!(": {}", case.message)),
                "{}: got {:?}, want {:?}",
                case.case,
                error.detail,
                case.message
            );
        }
    }

    /// A new CEL rule needs its own case in the table, which the API server
    /// tests then check too.
    #[test]
    fn every_cel_rule_has_an_invalid_case() {
        fn messages(schema: &Value, out: &mut Vec<String>) {
            if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
                out.extend(rules.iter().map(|r| r["message"].as_str().unwrap().to_string()));
            }
            for child in schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|p| p.values())
            {
                messages(child, out);
            }
            if let Some(items) = schema.get("items") {
                messages(items, out);
            }
        }
        let mut rules = Vec::new();
        messages(&SCHEMA.json, &mut rules);
        assert!(rules.len() > 20, "{rules:?}");
        let cases = invalid_cases();
        for message in rules {
            assert!(
                cases.iter().any(|c| c.message == message),
                "no case in tests/data/invalid-claims.yaml breaks the rule {message:?}"
            );
        }
    }

    #[test]
    fn the_valid_claim_passes_and_keeps_its_values() {
        let claim = check_claim(&valid_claim()).unwrap();
        assert_eq!(claim, EventDrivenService::test().without_uid());
    }

    #[test]
    fn a_consumer_config_passes_with_its_defaults_filled_in() {
        let mut claim = valid_claim();
        claim["spec"]["nats"]["consumerConfig"] = json!({
            "filterSubjects": ["orders.new", "orders.*.paid", "audit.>", ">"],
            "backoff": ["1s", "500s", "1h"],
        });
        let checked = check_claim(&claim).unwrap_or_else(|e| panic!("{e}"));
        let config = checked.spec.nats.consumer_config.expect("kept");
        assert_eq!(config.ack_wait, "30s");
        assert_eq!(config.max_deliver, 5);
        assert_eq!(config.max_ack_pending, None);
        assert_eq!(config.deliver_policy, DeliverPolicy::All);
        assert_eq!(checked.spec.nats.deletion_policy, DeletionPolicy::Retain);
        for ack_wait in ["1s", "1000ms", "59m", "1h", "3600s"] {
            claim["spec"]["nats"]["consumerConfig"]["ackWait"] = json!(ack_wait);
            check_claim(&claim).unwrap_or_else(|e| panic!("{ack_wait}: {e}"));
        }
    }

    #[test]
    fn drain_within_takes_hours_minutes_and_seconds_from_1s_to_24h() {
        for text in ["1s", "60s", "5m", "1h30m", "2h0m5s", "24h", "1440m"] {
            let mut claim = valid_claim();
            claim["spec"]["scaling"]["drainWithin"] = json!(text);
            let checked = check_claim(&claim).unwrap_or_else(|e| panic!("{text}: {e}"));
            let parsed = crate::trigger::parse_drain_within(checked.spec.scaling.drain_within.as_deref().unwrap());
            assert!(
                parsed.is_ok(),
                "the scaler reads what the API server accepts: {text}: {parsed:?}"
            );
        }
    }

    #[test]
    fn lag_threshold_may_be_a_string_or_an_integer() {
        for threshold in [json!("5"), json!(5), json!("2.5"), json!("0.5"), json!(999_999_999)] {
            let mut claim = valid_claim();
            claim["spec"]["scaling"]["lagThreshold"] = threshold.clone();
            let checked = check_claim(&claim).unwrap_or_else(|e| panic!("{threshold}: {e}"));
            assert_eq!(
                serde_json::to_value(&checked.spec.scaling.lag_threshold).unwrap(),
                threshold
            );
        }
    }

    #[test]
    fn stall_after_takes_go_style_durations() {
        for (text, secs) in [("5m", 300), ("90s", 90), ("1h30m", 5400), ("10s", 10)] {
            let mut claim = valid_claim();
            claim["spec"]["scaling"]["stallAfter"] = json!(text);
            let checked = check_claim(&claim).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(checked.spec.scaling.stall_after().as_secs(), secs, "{text}");
        }
        let unset = check_claim(&valid_claim()).unwrap();
        assert_eq!(unset.spec.scaling.stall_after(), crate::api::DEFAULT_STALL_AFTER);
    }

    #[test]
    fn rust_defaults_are_the_schema_defaults() {
        let minimal = json!({
            "apiVersion": "platform.bizmatters.io/v1alpha1",
            "kind": "EventDrivenService",
            "metadata": {"name": "minimal"},
            "spec": {"image": "busybox", "nats": {"stream": "S", "consumer": "c"}},
        });
        let by_schema = kube::core::cel::apply_defaults(&SCHEMA.json, &minimal);
        let by_rust = serde_json::to_value(check_claim(&minimal).unwrap()).unwrap();
        assert_eq!(by_rust, by_schema);
        assert_eq!(by_rust["spec"]["size"], "medium");
        assert_eq!(by_rust["spec"]["port"], 8080);
        assert_eq!(by_rust["spec"]["nats"]["url"], "nats://nats.nats.svc:4222");
        assert_eq!(by_rust["spec"]["scaling"]["lagThreshold"], 5);
    }

    #[test]
    fn null_in_a_field_that_is_not_nullable_is_dropped_then_defaulted() {
        let mut claim = valid_claim();
        claim["spec"]["port"] = Value::Null;
        claim["spec"]["secretName"] = Value::Null;
        let checked = check_claim(&claim).unwrap();
        assert_eq!(checked.spec.port, 8080);
        assert_eq!(checked.spec.secret_name, None);
    }

    #[test]
    fn every_fault_is_reported_at_once() {
        let mut claim = valid_claim();
        claim["spec"]["port"] = json!(0);
        claim["spec"]["nats"]["stream"] = json!("a.b");
        claim["spec"]["scaling"] = json!({"minReplicas": 3, "maxReplicas": 2});
        let fields: Vec<String> = errors(&claim).into_iter().map(|e| e.field).collect();
        for field in ["spec.port", "spec.nats.stream", "spec.scaling"] {
            assert!(fields.iter().any(|f| f == field), "{field} missing from {fields:?}");
        }
    }

    #[test]
    fn wrong_kind_and_missing_name_are_refused() {
        let mut claim = valid_claim();
        claim["apiVersion"] = json!("platform.bizmatters.io/v1");
        claim["kind"] = json!("Deployment");
        claim["metadata"] = json!({});
        let fields: Vec<String> = errors(&claim).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["apiVersion", "kind", "metadata.name"]);
    }

    #[test]
    fn the_report_names_the_claim_and_each_field() {
        let mut claim = valid_claim();
        claim["spec"]["port"] = json!(0);
        let report = check_claim(&claim).unwrap_err().to_string();
        assert_eq!(
            report,
            "EventDrivenService \"team-a/orders-worker\" is invalid:\n* spec.port: Invalid value: 0: port must be between 1 and 65535"
        );
    }
}
