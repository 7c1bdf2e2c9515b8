//! Drift: deciding whether a child needs a write. Pure: objects in, a yes or
//! no out.
//!
//! A child is applied when the live object no longer holds what we would
//! apply: it is missing, someone changed a field we set (drift), or what we
//! want changed. The last case includes *removing* a field, which "live holds
//! desired" cannot see, so every applied object carries a hash of its desired
//! form in an annotation: a new hash means a new apply.
use std::hash::Hasher;

use serde_json::Value;

use super::live::LiveChild;

use crate::render::resources::quantity_value;

/// The annotation holding the hash of the applied desired object.
pub const HASH_ANNOTATION: &str = "platform.bizmatters.io/applied-hash";

/// Adds the hash annotation to a desired object (before it is compared and
/// applied).
pub fn stamp(desired: &mut Value) {
    let hash = format!("{:016x}", fnv1a(&serde_json::to_vec(&*desired).unwrap_or_default()));
    if let Some(metadata) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
}

/// Whether `live` already holds every value of `desired` (stamped). Fields
/// only the live object has (defaults, status, other managers' fields) do not
/// matter; lists must match element by element.
pub fn holds(live: &Value, desired: &Value) -> bool {
    holds_at(live, desired, false)
}

/// As [`holds`], for a live object as the watch cached it.
pub fn live_holds(live: &LiveChild, desired: &Value) -> bool {
    holds(&live.object(), desired)
}

fn holds_at(live: &Value, desired: &Value, quantities: bool) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(key, want)| entry_holds(live.get(key), key, want, quantities)),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| holds_at(l, d, quantities))
        }
        (Value::String(have), Value::String(want)) if quantities => {
            have == want || quantity_value(have).is_some_and(|h| Some(h) == quantity_value(want))
        }
        (Value::Number(have), Value::Number(want)) => have.as_f64() == want.as_f64(),
        _ => live == desired,
    }
}

/// Whether a live object's entry `key` (`have`, if any) holds `want`.
fn entry_holds(have: Option<&Value>, key: &str, want: &Value, quantities: bool) -> bool {
    if is_empty(want) {
        // The API server drops empty values; absent is the same.
        return have.is_none_or(is_empty);
    }
    let quantities = quantities || key == "requests" || key == "limits";
    have.is_some_and(|have| holds_at(have, want, quantities))
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        // Kubernetes drops empty strings (`omitempty`); `false` and `0` it
        // keeps where they mean something, so those are compared.
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// 64-bit FNV-1a: stable across Rust releases (std's hasher is not), so a
/// controller upgrade does not re-apply every child.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(image: &str, cpu: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "w", "labels": {"app": "w"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": image, "env": [], "resources": {"limits": {"cpu": cpu}}}
            ]}}}
        })
    }

    /// What the API server returns for what we applied: defaults added,
    /// quantities canonical, empty lists gone, extra labels from others.
    fn as_stored(mut applied: Value) -> Value {
        let container = &mut applied["spec"]["template"]["spec"]["containers"][0];
        container.as_object_mut().unwrap().remove("env");
        container["imagePullPolicy"] = json!("IfNotPresent");
        container["resources"]["limits"]["cpu"] = json!("2");
        applied["metadata"]["labels"]["team"] = json!("x");
        applied["metadata"]["resourceVersion"] = json!("42");
        applied["spec"]["replicas"] = json!(3);
        applied["status"] = json!({"replicas": 3});
        applied
    }

    #[test]
    fn a_stored_copy_holds_what_was_applied() {
        let mut desired = deployment("img:1", "2000m");
        stamp(&mut desired);
        assert!(holds(&as_stored(desired.clone()), &desired));
    }

    #[test]
    fn a_cached_object_holds_what_its_json_holds() {
        let mut desired = deployment("img:1", "2000m");
        stamp(&mut desired);
        let stored = as_stored(desired.clone());
        let cached: LiveChild = serde_json::from_value(stored.clone()).unwrap();
        assert!(live_holds(&cached, &desired));

        let mut drifted = stored;
        drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
        let cached: LiveChild = serde_json::from_value(drifted).unwrap();
        assert!(!live_holds(&cached, &desired));

        let mut relabelled = as_stored(desired.clone());
        relabelled["metadata"]["labels"]["app"] = json!("other");
        let cached: LiveChild = serde_json::from_value(relabelled).unwrap();
        assert!(!live_holds(&cached, &desired));

        let mut other_kind = as_stored(desired.clone());
        other_kind["kind"] = json!("StatefulSet");
        let cached: LiveChild = serde_json::from_value(other_kind).unwrap();
        assert!(
            !live_holds(&cached, &desired),
            "a different kind is not the same object"
        );
    }

    #[test]
    fn drift_a_missing_object_and_a_new_desire_all_need_a_write() {
        let mut desired = deployment("img:1", "2000m");
        stamp(&mut desired);
        let live = as_stored(desired.clone());

        let mut drifted = live.clone();
        drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
        assert!(!holds(&drifted, &desired));

        let mut cpu_changed = live.clone();
        cpu_changed["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("1");
        assert!(!holds(&cpu_changed, &desired));

        assert!(!holds(&Value::Null, &desired));

        let mut new_image = deployment("img:2", "2000m");
        stamp(&mut new_image);
        assert!(!holds(&live, &new_image));
    }

    #[test]
    fn removing_a_field_changes_the_hash() {
        let mut with_label = deployment("img:1", "1");
        let mut without = with_label.clone();
        without["metadata"]["labels"].as_object_mut().unwrap().remove("app");
        stamp(&mut with_label);
        stamp(&mut without);
        let live = as_stored(with_label.clone());
        // `live` still holds every value of `without`; only the hash differs.
        assert_ne!(
            with_label["metadata"]["annotations"][HASH_ANNOTATION],
            without["metadata"]["annotations"][HASH_ANNOTATION]
        );
        assert!(!holds(&live, &without));
    }

    #[test]
    fn empty_values_match_absent_ones_but_false_does_not() {
        assert!(holds(&json!({"name": "X"}), &json!({"name": "X", "value": ""})));
        assert!(holds(&json!({}), &json!({"env": [], "labels": {}})));
        assert!(!holds(&json!({}), &json!({"automountServiceAccountToken": false})));
    }

    #[test]
    fn lists_compare_element_by_element() {
        let desired = json!({"a": [{"name": "x"}, {"name": "y"}]});
        assert!(holds(&json!({"a": [{"name": "x", "z": 1}, {"name": "y"}]}), &desired));
        assert!(!holds(&json!({"a": [{"name": "x"}]}), &desired));
        assert!(!holds(&json!({"a": [{"name": "y"}, {"name": "x"}]}), &desired));
    }

    #[test]
    fn quantities_compare_by_value_only_under_requests_and_limits() {
        for (a, b) in [("2000m", "2"), ("1Gi", "1024Mi"), ("500m", "0.5"), ("1k", "1000")] {
            assert_eq!(quantity_value(a), quantity_value(b), "{a} = {b}");
            assert!(holds(
                &json!({"requests": {"cpu": a}}),
                &json!({"requests": {"cpu": b}})
            ));
        }
        assert!(!holds(
            &json!({"requests": {"cpu": "1"}}),
            &json!({"requests": {"cpu": "1Gi"}})
        ));
        assert!(!holds(
            &json!({"env": {"value": "2"}}),
            &json!({"env": {"value": "2000m"}})
        ));
        assert_eq!(quantity_value("lots"), None);
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
