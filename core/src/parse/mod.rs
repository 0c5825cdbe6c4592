//! Parsing of the telemetry input shapes (DESIGN §3.1) into the normalised [`Event`].
//!
//! Three shapes are accepted:
//!
//! * **Nested** (Sentinel SDKs): `model`, `prompt {text, tokens, embedding?}`,
//!   `response {text, tokens, finish_reason, embedding?}`, ...
//! * **Flat** (producer examples): `model_name`, `prompt_tokens`, `completion_tokens`,
//!   `total_tokens`, `prompt_text`, `response_text`, ...
//! * **OTLP** GenAI spans, through [`parse_otlp_traces`] (OTLP/HTTP JSON) or
//!   [`event_from_otlp_span`] (any decoder that fills an [`OtlpSpan`]).
//!
//! Rules shared by the JSON shapes:
//!
//! * **Shape detection** ([`detect_shape`]): `resourceSpans` means OTLP; a `prompt` or
//!   `response` object means nested; otherwise any of `model_name`, `prompt_tokens`,
//!   `completion_tokens`, `total_tokens`, `prompt_text`, `response_text` means flat;
//!   otherwise `model` means nested, and anything else is read as flat. The shape decides
//!   which spelling of a field wins when both appear (nested `prompt.tokens` vs flat
//!   `prompt_tokens`) and how a missing field is named in errors.
//! * **Every problem at once**: all missing or ill-typed fields are reported together,
//!   each with its path ([`EventError::Invalid`]).
//! * **Nothing is lost**: unknown fields go to `metadata` under their own name (unknown
//!   keys of `prompt`/`response` as `prompt.<key>`/`response.<key>`; a top-level field
//!   whose name the `metadata` object already uses is kept as `top_level.<key>`).
//!   Embeddings are dropped, their dimension kept as `prompt.embedding_dim` /
//!   `response.embedding_dim`. `null` means absent everywhere.
//! * **Numbers as strings**: `"123"` is accepted for counts and `"1.5"` for amounts;
//!   non-finite values (`"NaN"`, `"inf"`) are rejected.
//! * **Identifiers** (`event_id`, `trace_id`, `user_id`, ...) are strings or integers;
//!   surrounding whitespace is trimmed and an empty string counts as absent. Without
//!   `event_id`, `request_id` is the event id. `user_id`, `session_id`, `request_id` and
//!   `provider` are also taken from `metadata` when absent at the top level.
//! * **Timestamps**: an RFC 3339 string (`T`, `t` or space separator, optional fraction,
//!   `Z` or numeric offset; without an offset the time is UTC), or a Unix time as a
//!   number or numeric string whose unit follows from its magnitude `|t|`:
//!   `|t| < 1e11` seconds (up to year 5138), `< 1e14` milliseconds, `< 1e17`
//!   microseconds, otherwise nanoseconds. Sub-millisecond parts are floored. Times after
//!   9999-12-31 are rejected.
//! * **Errors**: `errors` (list or string), `error` (string, list, object with
//!   `message`, `true`, or a non-zero number) and `status` (`error`, `failed`,
//!   `failure`, `fail`, `timeout`, `timed_out`, or an HTTP code 400–599) all feed
//!   [`Event::errors`]; these fields never make an event invalid. `status` is also kept
//!   in `metadata`.

mod error;
mod fields;
mod object;
mod otlp;
#[cfg(test)]
mod tests;

pub(crate) use error::list_problems;
pub use error::{EventError, FieldError};
pub use object::{detect_shape, parse_event, parse_value, InputShape};
pub use otlp::{
    event_from_otlp_span, parse_otlp_traces, AttrValue, OtlpSpan, OTLP_STATUS_CODE_ERROR,
};
