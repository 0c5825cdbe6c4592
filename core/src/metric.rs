//! The per-event metrics a baseline is kept for.

use serde::{Deserialize, Serialize};

/// A metric extracted from each event (DESIGN §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// End-to-end latency in milliseconds.
    LatencyMs,
    /// Input tokens.
    PromptTokens,
    /// Output tokens.
    CompletionTokens,
    /// Input plus output tokens.
    TotalTokens,
    /// Cost in USD, reported or priced from the model price table.
    CostUsd,
    /// Output tokens per second of latency.
    TokensPerSecond,
}

impl Metric {
    /// Every metric, in the fixed order used for state layout and iteration.
    pub const ALL: [Metric; 6] = [
        Metric::LatencyMs,
        Metric::PromptTokens,
        Metric::CompletionTokens,
        Metric::TotalTokens,
        Metric::CostUsd,
        Metric::TokensPerSecond,
    ];

    /// The metric's name as it appears in alerts, queries and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Metric::LatencyMs => "latency_ms",
            Metric::PromptTokens => "prompt_tokens",
            Metric::CompletionTokens => "completion_tokens",
            Metric::TotalTokens => "total_tokens",
            Metric::CostUsd => "cost_usd",
            Metric::TokensPerSecond => "tokens_per_second",
        }
    }

    /// Position of the metric in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The metric values of one event; `None` where the event does not carry the metric.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricValues(pub [Option<f64>; 6]);

impl MetricValues {
    /// The value of one metric, if present.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.0[metric.index()]
    }

    /// Sets the value of one metric.
    pub fn set(&mut self, metric: Metric, value: Option<f64>) {
        self.0[metric.index()] = value;
    }
}
