//! Sentinel's detection core: the deterministic, I/O-free heart of the system.
//!
//! It turns raw telemetry into normalised [`Event`]s, validates and redacts them,
//! extracts metrics, keeps sliding-window baselines per service × model × metric,
//! runs the detectors, dedups alerts, and serialises a shard's detection state
//! with a digest so replicas can prove they agree.

pub mod anomaly;
pub mod codec;
pub mod config;
pub mod dedup;
pub mod detect;
pub mod drift;
pub mod event;
pub mod evidence;
pub mod incident;
pub mod intake;
mod key;
pub mod metric;
pub mod onset;
pub mod parse;
pub mod pricing;
pub mod rate;
pub mod redact;
pub mod shard;
pub mod shard_detector;
pub mod validate;
pub mod window;

#[cfg(test)]
mod incident_tests;
#[cfg(test)]
mod test_calls;

pub use anomaly::{Anomaly, AnomalyType, Severity};
pub use config::DetectionConfig;
pub use event::Event;
pub use incident::{Incident, Notification, NotificationKind, Silence};
pub use intake::Intake;
pub use metric::{Metric, MetricValues};
pub use parse::{parse_event, parse_otlp_traces, parse_value, EventError, FieldError};
pub use pricing::{extract_metrics, Extraction, PriceTable};
pub use redact::{RedactionConfig, Redactor};
pub use shard_detector::{Observation, ShardDetector};
pub use validate::{validate, ValidationBounds, ValidationError};
pub use window::{Moments, Window, WindowStateError};
