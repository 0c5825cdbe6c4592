//! Test calls for detector tests: a seeded source of normal draws, and one call's event
//! and metric values from its figures.

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

use crate::event::Event;
use crate::metric::{Metric, MetricValues};

/// A deterministic random source.
#[derive(Clone)]
pub(crate) struct Draws(TestRng);

impl Draws {
    /// The source of `seed` (`None`: proptest's own deterministic one).
    pub(crate) fn new(seed: Option<u8>) -> Self {
        Draws(match seed {
            Some(seed) => TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
            None => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        })
    }

    /// A standard normal draw (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0f64 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }

    /// A uniform draw in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// One of `n` users.
    pub(crate) fn user(&mut self, n: u64) -> String {
        format!("user-{}", self.0.next_u64() % n)
    }
}

/// What one test call of `chat`/`gpt-4o` at `at` was.
pub(crate) struct Call {
    pub at: i64,
    pub user: String,
    pub latency_ms: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub cost_usd: f64,
    /// The error it failed with, if it did.
    pub error: Option<&'static str>,
}

impl Call {
    /// The call's event and metric values.
    pub(crate) fn observed(self) -> (Event, MetricValues) {
        let event = Event {
            event_id: Some(format!("ev-{}", self.at)),
            timestamp_ms: self.at,
            service: "chat".into(),
            model: "gpt-4o".into(),
            user_id: Some(self.user),
            latency_ms: self.latency_ms,
            errors: self.error.map(str::to_owned).into_iter().collect(),
            ..Event::default()
        };
        let (prompt, completion) = (self.prompt_tokens, self.completion_tokens);
        let mut values = MetricValues::default();
        values.set(Metric::LatencyMs, Some(self.latency_ms));
        values.set(Metric::PromptTokens, Some(prompt));
        values.set(Metric::CompletionTokens, Some(completion));
        values.set(Metric::TotalTokens, Some(prompt + completion));
        values.set(Metric::CostUsd, Some(self.cost_usd));
        values.set(
            Metric::TokensPerSecond,
            Some(completion / (self.latency_ms / 1000.0)),
        );
        (event, values)
    }
}
