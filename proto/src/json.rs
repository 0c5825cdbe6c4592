//! `google.protobuf.Struct` records and JSON objects, one into the other: how the public
//! gRPC API carries the REST API's JSON records.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct};
use serde_json::{Map, Value};

/// Largest magnitude an `f64` holds every integer up to (2^53).
pub const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// A JSON object as a `Struct` (anything else becomes an empty one).
pub fn to_struct(value: Value) -> Struct {
    match value {
        Value::Object(map) => Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        },
        _ => Struct::default(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        object @ Value::Object(_) => Kind::StructValue(to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `Struct` as the JSON object [`to_struct`] was given (whole numbers become JSON
/// integers again, non-finite ones null).
pub fn from_struct(record: Struct) -> Value {
    Value::Object(
        record
            .fields
            .into_iter()
            .map(|(name, value)| (name, from_value(value)))
            .collect::<Map<_, _>>(),
    )
}

fn from_value(value: prost_types::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS => {
            Value::from(n as i64)
        }
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(from_value).collect())
        }
        Some(Kind::StructValue(object)) => from_struct(object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_come_back_as_the_json_the_router_sent() {
        let original = json!({
            "alert_id": "a-1", "confidence": 0.875, "count": 41, "negative": -3,
            "details": {"metric": "latency_ms", "value": 40000, "extra": {}},
            "remediation": ["scale", 2.5, null, true], "root_cause": null,
        });
        assert_eq!(from_struct(to_struct(original.clone())), original);
        let odd = Struct {
            fields: [
                (
                    "nan".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(f64::NAN)),
                    },
                ),
                ("unset".to_owned(), prost_types::Value { kind: None }),
            ]
            .into(),
        };
        assert_eq!(from_struct(odd), json!({"nan": null, "unset": null}));
    }
}
