//! Readers of single fields shared by every shape: identifiers, names, texts, counts,
//! amounts, timestamps and error markers, each reporting its problem by field.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime};
use serde_json::{Map, Value};

use super::error::FieldError;

/// The name of a JSON value's type, for error messages.
pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of an offending value for error messages.
pub(super) fn show(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The value under `key`, treating `null` as absent.
pub(super) fn get<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|v| !v.is_null())
}

/// Collects the field problems of one document.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<FieldError>);

impl Problems {
    pub(super) fn push(&mut self, field: &str, problem: impl Into<String>) {
        self.0.push(FieldError::new(field, problem));
    }

    pub(super) fn missing(&mut self, field: &str) {
        self.push(field, "missing");
    }
}

/// An identifier: a string (trimmed, empty = absent) or an integer.
pub(super) fn as_ident(value: &Value) -> Option<Option<String>> {
    match value {
        Value::String(s) => {
            let t = s.trim();
            Some((!t.is_empty()).then(|| t.to_owned()))
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Some(n.to_string())),
        _ => None,
    }
}

/// An optional identifier field.
pub(super) fn ident(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<String> {
    let value = value?;
    as_ident(value).unwrap_or_else(|| {
        problems.push(field, format!("expected a string, got {}", show(value)));
        None
    })
}

/// A required, non-empty name field (service, model).
pub(super) fn name(value: Option<&Value>, field: &str, problems: &mut Problems) -> String {
    let Some(value) = value else {
        problems.missing(field);
        return String::new();
    };
    match as_ident(value) {
        Some(Some(name)) => name,
        Some(None) => {
            problems.push(field, "must not be empty");
            String::new()
        }
        None => {
            problems.push(field, format!("expected a string, got {}", show(value)));
            String::new()
        }
    }
}

/// An optional free-text field; empty text counts as absent.
pub(super) fn text(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<String> {
    match value? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => {
            problems.push(field, format!("expected a string, got {}", show(other)));
            None
        }
    }
}

/// A finite number from a JSON number or a numeric string.
fn as_number(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    number.filter(|n| n.is_finite())
}

/// A non-negative integer from a JSON number or a numeric string.
pub(super) fn as_count(value: &Value) -> Option<u64> {
    if let Value::Number(n) = value {
        if let Some(u) = n.as_u64() {
            return Some(u);
        }
    }
    if let Value::String(s) = value {
        if let Ok(u) = s.trim().parse::<u64>() {
            return Some(u);
        }
    }
    float_to_count(as_number(value)?)
}

/// An integral, non-negative float as a count.
pub(super) fn float_to_count(f: f64) -> Option<u64> {
    // 2^64 as f64; every smaller non-negative integral f64 converts exactly.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    (f >= 0.0 && f.fract() == 0.0 && f < LIMIT).then_some(f as u64)
}

/// An optional token count.
pub(super) fn count(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<u64> {
    let value = value?;
    let parsed = as_count(value);
    if parsed.is_none() {
        problems.push(
            field,
            format!("expected a non-negative integer, got {}", show(value)),
        );
    }
    parsed
}

/// An optional amount (latency, cost).
pub(super) fn amount(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<f64> {
    let value = value?;
    let parsed = as_number(value);
    if parsed.is_none() {
        problems.push(
            field,
            format!("expected a finite number, got {}", show(value)),
        );
    }
    parsed
}

/// The latest representable instant, 9999-12-31T23:59:59.999Z, in Unix milliseconds.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Converts a Unix time number to milliseconds using the magnitude rule of the module docs.
fn unix_number_to_ms(value: &Value) -> Option<i64> {
    let as_int = match value {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => s.trim().parse::<i64>().ok().map(i128::from),
        _ => None,
    };
    let ms = match as_int {
        Some(t) => match t.unsigned_abs() {
            a if a < 100_000_000_000 => t * 1000,
            a if a < 100_000_000_000_000 => t,
            a if a < 100_000_000_000_000_000 => t.div_euclid(1000),
            _ => t.div_euclid(1_000_000),
        },
        None => {
            let t = as_number(value)?;
            let ms = match t.abs() {
                a if a < 1e11 => t * 1e3,
                a if a < 1e14 => t,
                a if a < 1e17 => t / 1e3,
                _ => t / 1e6,
            };
            let ms = ms.floor();
            if ms.abs() > MAX_TIMESTAMP_MS as f64 {
                return None;
            }
            ms as i128
        }
    };
    i64::try_from(ms)
        .ok()
        .filter(|ms| (-MAX_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(ms))
}

/// Parses an RFC 3339 date-time (offset optional, then UTC) to Unix milliseconds.
fn rfc3339_to_ms(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())
        .map(|dt| dt.and_utc().timestamp_millis())
}

/// Parses a timestamp value (RFC 3339 or Unix time) to Unix milliseconds.
pub(super) fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(_) => unix_number_to_ms(value),
        Value::String(s) => {
            let s = s.trim();
            if s.parse::<f64>().is_ok() {
                unix_number_to_ms(value)
            } else {
                rfc3339_to_ms(s)
            }
        }
        _ => None,
    }
}

/// The required `timestamp` field.
pub(super) fn timestamp(value: Option<&Value>, field: &str, problems: &mut Problems) -> i64 {
    let Some(value) = value else {
        problems.missing(field);
        return 0;
    };
    timestamp_ms(value).unwrap_or_else(|| {
        problems.push(
            field,
            format!(
                "expected an RFC 3339 date-time (e.g. 2024-06-10T12:00:00Z) or Unix \
                 seconds/milliseconds up to year 9999, got {}",
                show(value)
            ),
        );
        0
    })
}

/// Appends the error messages an `error`/`errors` value carries (see the module docs).
pub(super) fn collect_errors(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Null | Value::Bool(false) => {}
        Value::Bool(true) => out.push("error flag set".to_owned()),
        Value::String(s) => {
            if !s.trim().is_empty() {
                out.push(s.clone());
            }
        }
        Value::Number(n) => {
            if n.as_f64() != Some(0.0) {
                out.push(format!("error {n}"));
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_errors(item, out)),
        Value::Object(fields) => match fields.get("message") {
            Some(Value::String(m)) if !m.trim().is_empty() => out.push(m.clone()),
            _ => out.push(value.to_string()),
        },
    }
}

/// The error a `status` field signals, if any.
pub(super) fn status_error(value: &Value) -> Option<String> {
    const FAILED: [&str; 6] = ["error", "failed", "failure", "fail", "timeout", "timed_out"];
    match value {
        Value::String(s) if FAILED.iter().any(|f| s.trim().eq_ignore_ascii_case(f)) => {
            Some(format!("status: {}", s.trim()))
        }
        Value::Number(n) if n.as_u64().is_some_and(|c| (400..=599).contains(&c)) => {
            Some(format!("status {n}"))
        }
        _ => None,
    }
}

/// Inserts an extra field into metadata without overwriting an entry the producer set.
pub(super) fn insert_extra(metadata: &mut BTreeMap<String, Value>, key: String, value: Value) {
    if metadata.contains_key(&key) {
        metadata.insert(format!("top_level.{key}"), value);
    } else {
        metadata.insert(key, value);
    }
}
