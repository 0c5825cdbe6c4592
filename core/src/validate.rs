//! Bounds a normalised event must respect before it is stored (DESIGN §3.1).
//!
//! [`validate`] reports every violated bound at once, each with the field, the value
//! and the bound. Texts longer than the bound are not rejected but truncated at a
//! character boundary, and `metadata["truncated"]` lists the truncated fields. Run
//! redaction before validation: truncating first could cut a secret in half and leave
//! a fragment that no longer looks like one.
//!
//! Token consistency: `total_tokens` smaller than `prompt_tokens + completion_tokens` is
//! rejected (a total cannot be smaller than its parts); a larger total is accepted,
//! since some providers count extra tokens (reasoning, cached or tool tokens) in it.

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::parse::{list_problems, FieldError};

/// The configurable bounds of [`validate`]; missing keys take the defaults of DESIGN §3.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationBounds {
    /// Smallest accepted latency in milliseconds (default 0.1).
    pub min_latency_ms: f64,
    /// Largest accepted latency in milliseconds (default 300 000).
    pub max_latency_ms: f64,
    /// Largest accepted prompt or completion token count (default 100 000).
    pub max_tokens: u64,
    /// Largest accepted total token count (default 200 000: both parts at their maximum).
    pub max_total_tokens: u64,
    /// Largest accepted cost in USD (default 100); costs below 0 are always rejected.
    pub max_cost_usd: f64,
    /// Prompt and response texts are truncated to this many characters (default 10 000).
    pub max_text_chars: usize,
    /// Longest accepted service or model name in characters (default 256).
    pub max_name_chars: usize,
    /// Longest accepted identifier (event, trace, span, user, session, request id, provider, finish reason) in characters (default 256).
    pub max_id_chars: usize,
    /// Earliest accepted event time in Unix milliseconds (default: none).
    pub min_timestamp_ms: Option<i64>,
    /// Latest accepted event time in Unix milliseconds (default: none; there is no wall clock here).
    pub max_timestamp_ms: Option<i64>,
}

impl Default for ValidationBounds {
    fn default() -> Self {
        ValidationBounds {
            min_latency_ms: 0.1,
            max_latency_ms: 300_000.0,
            max_tokens: 100_000,
            max_total_tokens: 200_000,
            max_cost_usd: 100.0,
            max_text_chars: 10_000,
            max_name_chars: 256,
            max_id_chars: 256,
            min_timestamp_ms: None,
            max_timestamp_ms: None,
        }
    }
}

/// The bounds an event violates; every violation is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event out of bounds, {}", list_problems(&self.violations))]
pub struct ValidationError {
    /// One entry per violated bound, e.g. `latency_ms: 400000 is above the maximum 300000`.
    pub violations: Vec<FieldError>,
}

/// Checks `event` against `bounds`, truncating over-long texts in place; every violation is reported at once.
pub fn validate(event: &mut Event, bounds: &ValidationBounds) -> Result<(), ValidationError> {
    let mut violations = Vec::new();
    let mut violate =
        |field: &str, problem: String| violations.push(FieldError::new(field, problem));

    check_range(
        "latency_ms",
        event.latency_ms,
        Some(bounds.min_latency_ms),
        bounds.max_latency_ms,
        &mut violate,
    );
    if let Some(cost) = event.cost_usd {
        check_range(
            "cost_usd",
            cost,
            Some(0.0),
            bounds.max_cost_usd,
            &mut violate,
        );
    }
    for (field, tokens, max) in [
        ("prompt_tokens", event.prompt_tokens, bounds.max_tokens),
        (
            "completion_tokens",
            event.completion_tokens,
            bounds.max_tokens,
        ),
        ("total_tokens", event.total_tokens, bounds.max_total_tokens),
    ] {
        if let Some(tokens) = tokens.filter(|t| *t > max) {
            violate(field, format!("{tokens} is above the maximum {max}"));
        }
    }
    if let (Some(total), Some(prompt), Some(completion)) = (
        event.total_tokens,
        event.prompt_tokens,
        event.completion_tokens,
    ) {
        let parts = u128::from(prompt) + u128::from(completion);
        if u128::from(total) < parts {
            violate(
                "total_tokens",
                format!("{total} is below prompt_tokens + completion_tokens = {parts}"),
            );
        }
    }

    for (field, name) in [("service_name", &event.service), ("model", &event.model)] {
        if name.trim().is_empty() {
            violate(field, "must not be empty".to_owned());
        } else {
            check_length(field, name, bounds.max_name_chars, &mut violate);
            check_characters(field, name, &mut violate);
        }
    }
    for (field, id) in [
        ("event_id", &event.event_id),
        ("provider", &event.provider),
        ("trace_id", &event.trace_id),
        ("span_id", &event.span_id),
        ("user_id", &event.user_id),
        ("session_id", &event.session_id),
        ("request_id", &event.request_id),
        ("finish_reason", &event.finish_reason),
    ] {
        if let Some(id) = id {
            check_length(field, id, bounds.max_id_chars, &mut violate);
            check_characters(field, id, &mut violate);
        }
    }

    let ts = event.timestamp_ms;
    if let Some(min) = bounds.min_timestamp_ms.filter(|min| ts < *min) {
        violate(
            "timestamp",
            format!("{} is before the minimum {}", show_time(ts), show_time(min)),
        );
    }
    if let Some(max) = bounds.max_timestamp_ms.filter(|max| ts > *max) {
        violate(
            "timestamp",
            format!("{} is after the maximum {}", show_time(ts), show_time(max)),
        );
    }

    truncate_texts(event, bounds.max_text_chars);

    if violations.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { violations })
    }
}

/// Reports a non-finite value or one outside `[min, max]`.
fn check_range(
    field: &str,
    value: f64,
    min: Option<f64>,
    max: f64,
    violate: &mut impl FnMut(&str, String),
) {
    if !value.is_finite() {
        violate(field, format!("{value} is not a finite number"));
    } else if let Some(min) = min.filter(|min| value < *min) {
        violate(field, format!("{value} is below the minimum {min}"));
    } else if value > max {
        violate(field, format!("{value} is above the maximum {max}"));
    }
}

/// Reports a string longer than `max` characters.
fn check_length(field: &str, value: &str, max: usize, violate: &mut impl FnMut(&str, String)) {
    let chars = value.chars().count();
    if chars > max {
        violate(
            field,
            format!("length {chars} is above the maximum {max} characters"),
        );
    }
}

/// Whether `c` is acted upon rather than shown by a terminal or a text renderer: a C0 or
/// C1 control character (ESC, NUL, …), DEL, or a bidirectional formatting character
/// (embeddings, overrides, isolates, marks) or line or paragraph separator.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Reports an identifier holding a character that [`is_unprintable`].
fn check_characters(field: &str, value: &str, violate: &mut impl FnMut(&str, String)) {
    if let Some((position, c)) = value.chars().enumerate().find(|(_, c)| is_unprintable(*c)) {
        violate(
            field,
            format!(
                "holds the control or bidirectional formatting character U+{:04X} at character {position}",
                u32::from(c)
            ),
        );
    }
}

/// A timestamp as `<ms> (<RFC 3339>)` for messages.
fn show_time(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => format!("{ms} ({})", t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => ms.to_string(),
    }
}

/// Truncates prompt and response text to `max_chars` and records which were cut in `metadata["truncated"]`.
fn truncate_texts(event: &mut Event, max_chars: usize) {
    let mut truncated = Vec::new();
    for (field, text) in [
        ("prompt_text", &mut event.prompt_text),
        ("response_text", &mut event.response_text),
    ] {
        if let Some(text) = text {
            if let Some((cut, _)) = text.char_indices().nth(max_chars) {
                text.truncate(cut);
                truncated.push(field);
            }
        }
    }
    if truncated.is_empty() {
        return;
    }
    let entry = event
        .metadata
        .entry("truncated".to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    if let Value::Array(list) = entry {
        for field in truncated {
            if !list.iter().any(|v| v == field) {
                list.push(Value::from(field));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_event;
    use serde_json::json;

    fn sample() -> Event {
        parse_event(
            br#"{
                "event_id": "9b2f7c1e-3d4a-4b5c-8e6f-7a8b9c0d1e2f",
                "timestamp": "2024-06-10T12:00:00Z",
                "service_name": "support-bot",
                "model": "gpt-4o-mini",
                "prompt": {"text": "Where is my order?", "tokens": 9},
                "response": {"text": "It ships tomorrow.", "tokens": 6, "finish_reason": "stop"},
                "latency_ms": 640.0,
                "cost_usd": 0.0000049,
                "metadata": {"environment": "prod"},
                "errors": []
            }"#,
        )
        .unwrap()
    }

    fn violations(event: &mut Event, bounds: &ValidationBounds) -> Vec<String> {
        validate(event, bounds)
            .unwrap_err()
            .violations
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_typical_event_passes_unchanged() {
        let mut event = sample();
        let before = event.clone();
        assert_eq!(validate(&mut event, &ValidationBounds::default()), Ok(()));
        assert_eq!(event, before);
    }

    #[test]
    fn every_violation_is_reported_with_value_and_bound() {
        let mut event = sample();
        event.latency_ms = 400_000.0;
        event.cost_usd = Some(-0.5);
        event.prompt_tokens = Some(150_000);
        event.completion_tokens = Some(10);
        event.total_tokens = Some(20);
        event.service = "  ".into();
        event.model = "m".repeat(300);
        event.user_id = Some("u".repeat(257));
        assert_eq!(
            violations(&mut event, &ValidationBounds::default()),
            [
                "latency_ms: 400000 is above the maximum 300000",
                "cost_usd: -0.5 is below the minimum 0",
                "prompt_tokens: 150000 is above the maximum 100000",
                "total_tokens: 20 is below prompt_tokens + completion_tokens = 150010",
                "service_name: must not be empty",
                "model: length 300 is above the maximum 256 characters",
                "user_id: length 257 is above the maximum 256 characters",
            ]
        );
        let err = validate(&mut event, &ValidationBounds::default()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("event out of bounds, 7 problems: latency_ms: "));
    }

    #[test]
    fn non_finite_and_too_small_numbers_are_rejected() {
        let mut event = sample();
        event.latency_ms = f64::NAN;
        event.cost_usd = Some(f64::INFINITY);
        assert_eq!(
            violations(&mut event, &ValidationBounds::default()),
            [
                "latency_ms: NaN is not a finite number",
                "cost_usd: inf is not a finite number"
            ]
        );
        event.latency_ms = 0.05;
        event.cost_usd = Some(100.5);
        assert_eq!(
            violations(&mut event, &ValidationBounds::default()),
            [
                "latency_ms: 0.05 is below the minimum 0.1",
                "cost_usd: 100.5 is above the maximum 100"
            ]
        );
    }

    #[test]
    fn control_and_bidirectional_characters_are_refused_in_names_and_ids() {
        let mut event = sample();
        event.service = "chat\u{1b}[2J".into();
        event.model = "gpt\u{202E}4o".into();
        event.user_id = Some("u\u{0}1".into());
        event.session_id = Some("s\u{85}".into());
        event.provider = Some("open\u{2066}ai".into());
        assert_eq!(
            violations(&mut event, &ValidationBounds::default()),
            [
                "service_name: holds the control or bidirectional formatting character U+001B at character 4",
                "model: holds the control or bidirectional formatting character U+202E at character 3",
                "provider: holds the control or bidirectional formatting character U+2066 at character 4",
                "user_id: holds the control or bidirectional formatting character U+0000 at character 1",
                "session_id: holds the control or bidirectional formatting character U+0085 at character 1",
            ]
        );
        let mut event = sample();
        event.service = "café-搜索 \u{1F600}".into();
        assert_eq!(validate(&mut event, &ValidationBounds::default()), Ok(()));
    }

    #[test]
    fn larger_totals_are_accepted() {
        let mut event = sample();
        event.total_tokens = Some(40);
        assert_eq!(validate(&mut event, &ValidationBounds::default()), Ok(()));
    }

    #[test]
    fn long_texts_are_truncated_at_a_char_boundary() {
        let mut event = sample();
        event.prompt_text = Some("é".repeat(12));
        event.response_text = Some("short".into());
        let bounds = ValidationBounds {
            max_text_chars: 10,
            ..ValidationBounds::default()
        };
        assert_eq!(validate(&mut event, &bounds), Ok(()));
        assert_eq!(event.prompt_text.as_deref(), Some("éééééééééé"));
        assert_eq!(event.response_text.as_deref(), Some("short"));
        assert_eq!(event.metadata["truncated"], json!(["prompt_text"]));

        event.response_text = Some("x".repeat(11));
        event.latency_ms = -1.0;
        assert!(
            validate(&mut event, &bounds).is_err(),
            "truncation happens alongside errors"
        );
        assert_eq!(event.response_text.as_deref(), Some("xxxxxxxxxx"));
        assert_eq!(
            event.metadata["truncated"],
            json!(["prompt_text", "response_text"])
        );
    }

    #[test]
    fn timestamp_bounds_are_optional_and_absolute() {
        let mut event = sample();
        let bounds = ValidationBounds {
            min_timestamp_ms: Some(1_735_689_600_000),
            ..ValidationBounds::default()
        };
        assert_eq!(
            violations(&mut event, &bounds),
            ["timestamp: 1718020800000 (2024-06-10T12:00:00.000Z) is before the minimum 1735689600000 (2025-01-01T00:00:00.000Z)"]
        );
        let bounds = ValidationBounds {
            max_timestamp_ms: Some(0),
            ..ValidationBounds::default()
        };
        assert_eq!(
            violations(&mut event, &bounds),
            ["timestamp: 1718020800000 (2024-06-10T12:00:00.000Z) is after the maximum 0 (1970-01-01T00:00:00.000Z)"]
        );
    }

    #[test]
    fn bounds_deserialize_with_defaults_and_reject_unknown_keys() {
        let bounds: ValidationBounds =
            serde_json::from_str(r#"{"max_latency_ms": 60000, "max_timestamp_ms": 4102444800000}"#)
                .unwrap();
        assert_eq!(bounds.max_latency_ms, 60_000.0);
        assert_eq!(bounds.max_timestamp_ms, Some(4_102_444_800_000));
        assert_eq!(bounds.max_tokens, 100_000);
        assert!(serde_json::from_str::<ValidationBounds>(r#"{"max_latency": 1}"#).is_err());
    }
}
