//! Traffic for the storage-engine benchmarks: batches of realistic events over many keys,
//! carrying Kafka offsets and event ids as the router sends them.

use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::Event;
use sentinel_storage_engine::{Command, IngestBatch, IngestEvent, SourcePartition};

use crate::stream::MODELS;
use sentinel_local::rng::Rng;

/// Start of the benchmark clock (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600_000;

/// Generates ingest batches for one shard: `keys` (service, model) pairs, log-normal
/// latency and tokens, one Kafka partition, events 1 ms apart at 300,000 events/s.
#[derive(Debug)]
pub struct Traffic {
    rng: Rng,
    keys: Vec<(String, String)>,
    next_offset: u64,
    source: SourcePartition,
}

impl Traffic {
    /// Traffic over `keys` (service, model) pairs of partition `partition`.
    pub fn new(seed: u64, keys: usize, partition: i32) -> Self {
        let keys = (0..keys)
            .map(|k| {
                (
                    format!("svc-{:04}", k / MODELS.len()),
                    MODELS[k % MODELS.len()].to_owned(),
                )
            })
            .collect();
        Traffic {
            rng: Rng::seed_from_u64(seed),
            keys,
            next_offset: 0,
            source: SourcePartition {
                topic: "llm.telemetry".into(),
                partition,
            },
        }
    }

    /// The next batch of `size` events, with the following offsets.
    pub fn batch(&mut self, size: usize) -> Command {
        let first = self.next_offset;
        let events = (0..size as u64).map(|i| self.event(first + i)).collect();
        self.next_offset += size as u64;
        Command::Ingest(IngestBatch {
            received_ms: T0 + (first / 300) as i64,
            source: Some(self.source.clone()),
            events,
        })
    }

    fn event(&mut self, offset: u64) -> IngestEvent {
        let k = self.rng.below(self.keys.len() as u64) as usize;
        let (service, model) = &self.keys[k];
        let prompt = self.rng.log_normal(500f64.ln(), 0.6).round() as u64;
        let completion = self.rng.log_normal(200f64.ln(), 0.5).round() as u64;
        let event = Event {
            event_id: Some(format!("{}-{offset}", self.source.partition)),
            timestamp_ms: T0 + (offset / 300) as i64,
            service: service.clone(),
            model: model.clone(),
            provider: Some("openai".into()),
            user_id: Some(format!("user-{}", self.rng.below(500))),
            session_id: Some(format!("session-{}", self.rng.below(5000))),
            latency_ms: self.rng.log_normal(800f64.ln(), 0.5),
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(prompt + completion),
            finish_reason: Some("stop".into()),
            ..Event::default()
        };
        let values = extract_metrics(&event, PriceTable::builtin()).values;
        IngestEvent {
            offset: Some(offset),
            event,
            values,
        }
    }
}
