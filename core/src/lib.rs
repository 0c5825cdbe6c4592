//! Sentinel's detection core: the deterministic, I/O-free heart of the system.
//!
//! It turns raw telemetry into normalised [`Event`]s, validates and redacts them,
//! extracts metrics, keeps sliding-window baselines per service × model × metric,
//! runs the detectors, dedups alerts, and serialises a shard's detection state
//! with a digest so replicas can prove they agree.

pub mod event;
pub mod metric;

pub use event::Event;
pub use metric::{Metric, MetricValues};
