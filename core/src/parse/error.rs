//! What is wrong with an input: problems by field, and errors about a whole document.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with one input field, e.g. `prompt.tokens: expected a non-negative integer, got "abc"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field in the input, e.g. `prompt.tokens`.
    pub field: String,
    /// What is wrong with the field.
    pub problem: String,
}

impl FieldError {
    /// A problem with the field at path `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Renders a list of field problems as `N problem(s): a; b; c`.
pub(crate) fn list_problems(problems: &[FieldError]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let items: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} {noun}: {}", problems.len(), items.join("; "))
}

/// Why an input document could not be turned into an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The bytes are not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON value is not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The document is an OTLP trace export request, which holds many spans.
    #[error(
        "this is an OTLP ExportTraceServiceRequest (resourceSpans); send it to the OTLP \
         endpoint /v1/traces, which reads it with parse_otlp_traces"
    )]
    OtlpRequest,
    /// Fields are missing or ill-typed; every problem is listed.
    #[error("invalid event, {}", list_problems(.0))]
    Invalid(Vec<FieldError>),
}

impl EventError {
    /// The field-level problems (empty for errors about the whole document).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            EventError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}
