//! Sentinel's detection path in one process, in the order the cluster runs it:
//! redact, validate, price, route to the owning shard, observe.

use sentinel_core::redact::{RedactError, RedactionCounts};
use sentinel_core::shard::shard_of;
use sentinel_core::{
    extract_metrics, validate, DetectionConfig, Event, Observation, PriceTable, RedactionConfig,
    Redactor, ShardDetector, ValidationBounds, ValidationError,
};
use thiserror::Error;

/// Why a pipeline could not be built.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The detection configuration is unusable.
    #[error(transparent)]
    Config(#[from] sentinel_core::config::ConfigError),
    /// A configured redaction pattern is unusable.
    #[error(transparent)]
    Redaction(#[from] RedactError),
}

/// Counters of what went through the pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineStats {
    /// Events accepted and observed.
    pub accepted: u64,
    /// Events rejected by validation.
    pub rejected: u64,
    /// Accepted events whose model has no price (cost left out).
    pub unpriced: u64,
    /// Redactions per PII kind.
    pub redactions: RedactionCounts,
    /// Alerts raised.
    pub alerts: u64,
    /// Hits folded into open alerts.
    pub repeats: u64,
}

/// The single-process detection pipeline over `S` shards.
#[derive(Debug)]
pub struct Pipeline {
    bounds: ValidationBounds,
    redactor: Redactor,
    prices: PriceTable,
    shards: Vec<ShardDetector>,
    stats: PipelineStats,
}

impl Pipeline {
    /// A pipeline with `shards` shards, default bounds, redaction and prices.
    pub fn new(shards: u32, config: DetectionConfig) -> Result<Self, PipelineError> {
        let shards = (0..shards.max(1))
            .map(|s| ShardDetector::new(s, config.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Pipeline {
            bounds: ValidationBounds::default(),
            redactor: Redactor::new(&RedactionConfig::default())?,
            prices: PriceTable::default(),
            shards,
            stats: PipelineStats::default(),
        })
    }

    /// Runs one event through the pipeline; a rejected event is counted and its problems returned.
    pub fn ingest(&mut self, mut event: Event) -> Result<Observation, ValidationError> {
        // Redact before validating: truncation could cut a secret in half and hide it.
        let counts = self.redactor.redact_event(&mut event);
        self.stats.redactions.merge(&counts);
        if let Err(e) = validate(&mut event, &self.bounds) {
            self.stats.rejected += 1;
            return Err(e);
        }
        let extraction = extract_metrics(&event, &self.prices);
        self.stats.unpriced += u64::from(extraction.unpriced_model.is_some());
        let shard = shard_of(&event.service, &event.model, self.shards.len() as u32);
        let observation = self.shards[shard as usize].observe(&event, &extraction.values);
        self.stats.accepted += 1;
        self.stats.alerts += observation.anomalies.len() as u64;
        self.stats.repeats += observation.repeats.len() as u64;
        Ok(observation)
    }

    /// What went through so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// The shards' detection states.
    pub fn shards(&self) -> &[ShardDetector] {
        &self.shards
    }
}
