//! Crossplane sends and takes objects as `google.protobuf.Struct`; our types
//! speak JSON. A Struct has one number type, a double, so a whole number comes
//! back as an integer: `minReplicas: 2` arrives as `2.0`, and the claim's
//! schema (integer fields) would refuse a float.
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::{Map, Number, Value};

/// Doubles beyond this are not exactly integers any more (2^53).
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

pub fn to_json(object: &Struct) -> Value {
    Value::Object(fields_to_json(object))
}

pub fn from_json(value: &Value) -> Struct {
    match value {
        Value::Object(map) => Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), value_from_json(v))).collect(),
        },
        _ => Struct::default(),
    }
}

fn fields_to_json(object: &Struct) -> Map<String, Value> {
    object
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(value: &ProtoValue) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::StructValue(s)) => Value::Object(fields_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn number_to_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < EXACT_INTEGER {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn value_from_json(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value_from_json).collect(),
        }),
        Value::Object(_) => Kind::StructValue(from_json(value)),
    };
    ProtoValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_come_back_as_integers_and_fractions_stay() {
        let value = json!({"spec": {"scaling": {"minReplicas": 2, "lagThreshold": "2.5", "ratio": 0.5}}});
        let back = to_json(&from_json(&value));
        assert_eq!(back, value);
        assert!(back["spec"]["scaling"]["minReplicas"].is_i64());
    }

    #[test]
    fn lists_nulls_and_booleans_survive_the_round_trip() {
        let value = json!({"a": [1, "two", null, true, {"b": []}], "c": null});
        assert_eq!(to_json(&from_json(&value)), value);
    }

    #[test]
    fn a_double_too_large_to_be_exact_stays_a_double() {
        let big = from_json(&json!({"n": 1e300}));
        assert!(to_json(&big)["n"].is_f64());
    }
}
