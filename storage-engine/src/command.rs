//! The commands a shard's Raft log carries and what applying each answers.

use std::fmt;

use sentinel_core::incident::{Actor, Incident, Silence};
use sentinel_core::{DetectionConfig, Event, MetricValues, ShardDetector};
use serde::{Deserialize, Serialize};

/// A command replicated through a shard's Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Observe a batch of events.
    Ingest(IngestBatch),
    /// Remove delivered alerts from the outbox, by outbox sequence number.
    AckAlerts(Vec<u64>),
    /// Replace the shard's settings.
    Configure(Box<ShardSettings>),
    /// Delete telemetry and anomalies older than the cutoffs.
    Purge(Retention),
    /// Remove every export-queue entry with a sequence number at or below this one.
    Exported(u64),
    /// Add (or replace) a silence.
    AddSilence(Silence),
    /// End a silence.
    ExpireSilence {
        /// The silence.
        silence_id: String,
        /// When it ends, Unix ms.
        at_ms: i64,
    },
    /// Acknowledge an open incident: no more escalation notifications.
    AcknowledgeIncident {
        /// The incident.
        incident_id: String,
        /// Who, when and why.
        actor: Actor,
    },
    /// Resolve an open incident by hand (receivers get the resolve notification).
    ResolveIncident {
        /// The incident.
        incident_id: String,
        /// Who, when and why.
        actor: Actor,
    },
}

/// A Kafka partition a batch was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourcePartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl fmt::Display for SourcePartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Events for one shard, in source order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestBatch {
    /// When the proposing node received the batch (ms since the Unix epoch); the shard's clock.
    pub received_ms: i64,
    /// The Kafka partition the events come from; `None` for HTTP and gRPC ingestion.
    pub source: Option<SourcePartition>,
    /// The events.
    pub events: Vec<IngestEvent>,
}

/// One event with its metrics and source position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestEvent {
    /// Offset in the batch's source partition; required when the batch has a source.
    pub offset: Option<u64>,
    /// The parsed, validated and redacted event.
    pub event: Event,
    /// Its metrics, as extracted when it was received.
    pub values: MetricValues,
}

/// Settings every replica of a shard applies identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSettings {
    /// Detection settings.
    pub detection: DetectionConfig,
    /// How long a seen `event_id` is remembered for duplicate suppression (ms of shard clock).
    pub event_id_horizon_ms: i64,
    /// Queue applied events and raised anomalies for export (switching it off empties the queue).
    #[serde(default)]
    pub export: bool,
    /// Most entries the export queue holds; the oldest are dropped beyond it.
    #[serde(default = "default_export_queue_max")]
    pub export_queue_max: u64,
    /// Bounds on distinct (service, model) keys; an event adding a key beyond them is refused.
    #[serde(default)]
    pub keys: KeyLimits,
}

/// Bounds on the (service, model) keys a shard keeps baselines for (0: no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Most keys in the shard.
    pub max_per_shard: u64,
    /// Most models of one service in the shard.
    pub max_models_per_service: u64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            max_per_shard: 2_000,
            max_models_per_service: 100,
        }
    }
}

impl KeyLimits {
    /// No bound at all.
    pub const UNLIMITED: KeyLimits = KeyLimits {
        max_per_shard: 0,
        max_models_per_service: 0,
    };

    /// Whether an event of (`service`, `model`) may be observed by `detector`: a known key
    /// always may, a new one only within both bounds.
    pub fn admit(
        &self,
        detector: &ShardDetector,
        service: &str,
        model: &str,
    ) -> Result<(), KeyLimit> {
        if detector.has_key(service, model) {
            return Ok(());
        }
        let full = |max: u64, count: usize| max != 0 && count as u64 >= max;
        if full(self.max_models_per_service, detector.model_count(service)) {
            return Err(KeyLimit::ModelsPerService(self.max_models_per_service));
        }
        if full(self.max_per_shard, detector.key_count()) {
            return Err(KeyLimit::PerShard(self.max_per_shard));
        }
        Ok(())
    }
}

/// The bound a new key would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyLimit {
    /// The shard already holds this many keys.
    PerShard(u64),
    /// The service already has this many models in the shard.
    ModelsPerService(u64),
}

impl KeyLimit {
    /// The event field that brought the new key.
    pub fn field(&self) -> &'static str {
        match self {
            KeyLimit::PerShard(_) => "service_name",
            KeyLimit::ModelsPerService(_) => "model",
        }
    }

    /// The bound's name, as metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            KeyLimit::PerShard(_) => "per_shard",
            KeyLimit::ModelsPerService(_) => "models_per_service",
        }
    }
}

impl fmt::Display for KeyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLimit::PerShard(max) => write!(
                f,
                "a new (service, model) key, but its shard already holds {max} keys, the most allowed (ingest.max_keys_per_shard)"
            ),
            KeyLimit::ModelsPerService(max) => write!(
                f,
                "a new model, but its service already has {max} models in this shard, the most allowed (ingest.max_models_per_service)"
            ),
        }
    }
}

fn default_export_queue_max() -> u64 {
    1_000_000
}

impl Default for ShardSettings {
    fn default() -> Self {
        ShardSettings {
            detection: DetectionConfig::default(),
            event_id_horizon_ms: 15 * 60 * 1000,
            export: false,
            export_queue_max: default_export_queue_max(),
            keys: KeyLimits::default(),
        }
    }
}

/// Retention cutoffs, as timestamps (ms since the Unix epoch); rows older are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Telemetry with an event time before this is deleted.
    pub telemetry_before_ms: i64,
    /// Anomalies raised before this are deleted.
    pub anomalies_before_ms: i64,
    /// Dedup entries of alerts raised before this are forgotten (a later hit raises anew).
    pub dedup_before_ms: i64,
}

/// What applying one log entry answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry.
    Empty,
    /// An ingest batch was applied.
    Ingested(IngestOutcome),
    /// This many outbox entries were removed (acknowledging a missing one is not an error).
    Acked(usize),
    /// New settings are in force.
    Configured,
    /// Retention ran.
    Purged,
    /// This many export-queue entries were removed (acknowledging beyond the end or twice is not an error).
    Exported(usize),
    /// The silence as it now stands.
    Silence(Silence),
    /// The incident as it now stands.
    Incident(Box<Incident>),
    /// The incident or silence named does not exist (or is no longer open).
    NotFound(String),
    /// The command was refused as a whole and changed nothing.
    Rejected(String),
}

/// The fate of each event of an ingest batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// Per event, in batch order.
    pub events: Vec<EventOutcome>,
    /// Outbox sequence numbers of the alerts this batch raised.
    pub alerts: Vec<u64>,
    /// Detector hits folded into alerts already open (dedup).
    #[serde(default)]
    pub folded: u64,
    /// Incident changes recorded without a notification.
    #[serde(default)]
    pub withheld: u64,
}

impl IngestOutcome {
    /// Number of events observed by detection (under their own id or a derived one).
    pub fn applied(&self) -> usize {
        self.events
            .iter()
            .filter(|o| matches!(o, EventOutcome::Applied | EventOutcome::AppliedAs(_)))
            .count()
    }

    /// Number of events with the given outcome.
    pub fn count(&self, outcome: EventOutcome) -> usize {
        self.events.iter().filter(|o| **o == outcome).count()
    }
}

/// The fate of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventOutcome {
    /// Observed and stored.
    Applied,
    /// At or below the applied offset of its source partition: applied before.
    DuplicateOffset,
    /// Its `event_id` was applied within the event-id horizon.
    DuplicateEventId,
    /// Refused: it would add a (service, model) key beyond a bound.
    KeyLimit(KeyLimit),
    /// Observed and stored under this derived id: an event of other content was applied
    /// under its own `event_id` within the horizon (see `Event::derived_event_id`).
    AppliedAs(String),
}

impl Command {
    /// Checks what can be checked before replication; the state machine rejects the same.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Command::Ingest(batch) => batch.check(),
            Command::Configure(settings) => settings.check(),
            Command::AddSilence(silence) => check_silence(silence),
            Command::AckAlerts(_)
            | Command::Purge(_)
            | Command::Exported(_)
            | Command::ExpireSilence { .. }
            | Command::AcknowledgeIncident { .. }
            | Command::ResolveIncident { .. } => Ok(()),
        }
    }
}

/// A silence needs an id, an end after its start, and who set it.
fn check_silence(silence: &Silence) -> Result<(), String> {
    if silence.silence_id.is_empty() {
        return Err("silence_id: must not be empty".into());
    }
    if silence.ends_at_ms <= silence.starts_at_ms {
        return Err(format!(
            "ends_at_ms: {} is not after starts_at_ms {}",
            silence.ends_at_ms, silence.starts_at_ms
        ));
    }
    if silence.created.by.trim().is_empty() {
        return Err("created.by: must say who sets the silence".into());
    }
    Ok(())
}

impl IngestBatch {
    /// A batch from a source needs an offset on every event, strictly increasing.
    pub fn check(&self) -> Result<(), String> {
        if self.source.is_none() {
            return match self.events.iter().position(|e| e.offset.is_some()) {
                Some(i) => Err(format!(
                    "events[{i}].offset: set, but the batch has no source"
                )),
                None => Ok(()),
            };
        }
        let mut previous: Option<u64> = None;
        for (i, e) in self.events.iter().enumerate() {
            match (e.offset, previous) {
                (None, _) => {
                    return Err(format!(
                        "events[{i}].offset: missing in a batch with a source"
                    ))
                }
                (Some(o), Some(p)) if o <= p => {
                    return Err(format!("events[{i}].offset: {o} does not follow {p}"))
                }
                (Some(o), _) => previous = Some(o),
            }
        }
        Ok(())
    }
}

impl ShardSettings {
    /// Lists every problem of the settings.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = match self.detection.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems,
        };
        if self.event_id_horizon_ms < 0 {
            problems.push(format!(
                "event_id_horizon_ms: {} is negative",
                self.event_id_horizon_ms
            ));
        }
        if self.export_queue_max == 0 {
            problems.push("export_queue_max: must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: Option<u64>) -> IngestEvent {
        IngestEvent {
            offset,
            event: Event::default(),
            values: MetricValues::default(),
        }
    }

    #[test]
    fn source_batches_need_increasing_offsets() {
        let source = Some(SourcePartition {
            topic: "llm.telemetry".into(),
            partition: 3,
        });
        let ok = IngestBatch {
            received_ms: 0,
            source: source.clone(),
            events: vec![event(Some(4)), event(Some(9))],
        };
        assert_eq!(ok.check(), Ok(()));
        let back = IngestBatch {
            events: vec![event(Some(4)), event(Some(4))],
            ..ok.clone()
        };
        assert_eq!(
            back.check().unwrap_err(),
            "events[1].offset: 4 does not follow 4"
        );
        let missing = IngestBatch {
            events: vec![event(None)],
            ..ok.clone()
        };
        assert!(missing
            .check()
            .unwrap_err()
            .starts_with("events[0].offset: missing"));
        let stray = IngestBatch { source: None, ..ok };
        assert!(stray.check().unwrap_err().contains("no source"));
    }

    #[test]
    fn settings_list_every_problem() {
        let mut settings = ShardSettings {
            event_id_horizon_ms: -1,
            export_queue_max: 0,
            ..ShardSettings::default()
        };
        settings.detection.window_size = 0;
        let err = settings.check().unwrap_err();
        assert!(err.contains("event_id_horizon_ms"), "{err}");
        assert!(err.contains("window_size"), "{err}");
        assert!(err.contains("export_queue_max"), "{err}");
    }
}
