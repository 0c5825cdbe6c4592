//! Turning forwarded events into events a shard applies: the shared intake of
//! `sentinel-core` (decode the router's normalised event, redact, validate), then the
//! shard check and metric extraction.

use sentinel_core::shard::shard_of;
use sentinel_core::{extract_metrics, Event, FieldError, MetricValues, PriceTable};

use crate::config::IngestSection;
use crate::error::NodeError;

/// The checks and transformations every received event goes through.
pub struct ShardIntake {
    checks: sentinel_core::Intake,
    prices: &'static PriceTable,
}

/// Why an event was refused, field by field.
pub type Refusal = Vec<FieldError>;

impl ShardIntake {
    /// An intake with the configured bounds and redaction.
    pub fn new(config: &IngestSection) -> Result<ShardIntake, NodeError> {
        Ok(ShardIntake {
            checks: sentinel_core::Intake::new(config.validation.clone(), &config.redaction)
                .map_err(|e| NodeError::Config {
                    key: "ingest.redaction".into(),
                    problem: e.to_string(),
                })?,
            prices: PriceTable::builtin(),
        })
    }

    /// The forwarded event in `bytes` (the [`sentinel_core::codec`] encoding) ready for
    /// `shard` of `shards`, or every problem with it.
    pub fn prepare(
        &self,
        bytes: &[u8],
        shard: u32,
        shards: u32,
    ) -> Result<(Event, MetricValues), Refusal> {
        let event = self.checks.prepare_forwarded(bytes)?;
        let owner = shard_of(&event.service, &event.model, shards);
        if owner != shard {
            return Err(vec![FieldError::new(
                "service_name",
                format!(
                    "({}, {}) belongs to shard {owner}, not shard {shard}",
                    event.service, event.model
                ),
            )]);
        }
        let values = extract_metrics(&event, self.prices).values;
        Ok((event, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::Metric;

    fn intake() -> ShardIntake {
        ShardIntake::new(&IngestSection::default()).unwrap()
    }

    /// The event as a router forwards it: parsed (not yet redacted) and encoded.
    fn forwarded(service: &str, latency: f64, text: &str) -> Vec<u8> {
        let json = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "service_name": service,
            "model_name": "gpt-4o",
            "latency_ms": latency,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 30,
            "prompt_text": text,
        });
        let event = sentinel_core::parse_value(&json).expect("an event");
        sentinel_core::codec::encode(&event)
    }

    #[test]
    fn accepts_redacts_and_extracts() {
        let shard = shard_of("chat", "gpt-4o", 8);
        let (event, values) = intake()
            .prepare(
                &forwarded("chat", 120.0, "mail me at ann@example.com"),
                shard,
                8,
            )
            .unwrap();
        assert!(!event.prompt_text.unwrap().contains("ann@example.com"));
        assert_eq!(values.get(Metric::LatencyMs), Some(120.0));
    }

    #[test]
    fn refuses_with_field_level_problems() {
        let intake = intake();
        let shard = shard_of("chat", "gpt-4o", 8);
        let refused = intake
            .prepare(&forwarded("chat", -5.0, ""), shard, 8)
            .unwrap_err();
        assert_eq!(refused[0].field, "latency_ms");
        let refused = intake.prepare(b"{not json", shard, 8).unwrap_err();
        assert_eq!(refused[0].field, "event");
        let refused = intake
            .prepare(&forwarded("chat", 10.0, ""), (shard + 1) % 8, 8)
            .unwrap_err();
        assert!(refused[0].problem.contains(&format!("shard {shard}")));
    }
}
