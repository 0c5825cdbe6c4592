//! Runs a replay through the detection pipeline and scores what was raised against
//! the injected incidents.

use sentinel_core::incident::Change;
use sentinel_core::{Anomaly, DetectionConfig};
use sentinel_local::replay::{Incident, Replay, ReplayConfig, ReplayError};
use sentinel_local::scoreboard::{IncidentOutcome, Scoreboard};

use crate::pipeline::{Pipeline, PipelineError, PipelineStats};

/// Everything a replay run produced.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    /// Per injected incident.
    pub incidents: Vec<IncidentOutcome>,
    /// Alerts raised outside every incident (false alarms).
    pub false_alerts: Vec<Anomaly>,
    /// Sentinel incidents opened outside every injected incident: (open time, service, model, type).
    pub false_incidents: Vec<(i64, String, String, String)>,
    /// Notifications sent (opened, escalated, resolved).
    pub notifications: u64,
    /// Events not covered by any incident.
    pub clean_events: u64,
    /// Pipeline counters.
    pub stats: PipelineStats,
    /// Event time covered, ms.
    pub span_ms: i64,
}

impl ReplayOutcome {
    /// False alerts per 10,000 clean events.
    pub fn false_alerts_per_10k(&self) -> f64 {
        1e4 * self.false_alerts.len() as f64 / self.clean_events.max(1) as f64
    }

    /// Whether every injected incident was caught.
    pub fn all_detected(&self) -> bool {
        self.incidents.iter().all(|o| o.first_alert.is_some())
    }

    /// Whether every injected incident opened exactly one Sentinel incident.
    pub fn one_incident_each(&self) -> bool {
        self.incidents.iter().all(|o| o.opened_ms.len() == 1)
    }
}

/// Why a replay run failed.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    /// The replay could not be set up.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The pipeline could not be set up.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// What a replay run reports as it goes.
pub enum Raised<'a> {
    /// A point anomaly.
    Alert(&'a Anomaly),
    /// An incident opened, escalated or resolved.
    Incident(&'a Change),
}

/// Replays `replay` through a pipeline of `shards` shards, calling `on_raised` for every
/// alert and incident change (with the injected incident it belongs to, if any), and
/// scores the result.
pub fn run(
    replay: ReplayConfig,
    detection: DetectionConfig,
    shards: u32,
    mut on_raised: impl FnMut(Raised<'_>, Option<&Incident>),
) -> Result<ReplayOutcome, OutcomeError> {
    let replay = Replay::new(replay)?;
    let mut scoreboard = Scoreboard::new(replay.incidents());
    let span_ms = replay.end_ms() - replay.start_ms();
    let mut pipeline = Pipeline::new(shards, detection)?;
    let mut clean_events = 0;
    for labeled in replay {
        clean_events += u64::from(labeled.incident.is_none());
        let Ok(observation) = pipeline.ingest(labeled.event) else {
            continue;
        };
        for change in &observation.incidents {
            let injected = scoreboard.record_incident(change);
            on_raised(Raised::Incident(change), injected);
        }
        for alert in observation.anomalies {
            let incident = scoreboard.record(alert.clone());
            on_raised(Raised::Alert(&alert), incident);
        }
    }
    Ok(ReplayOutcome {
        incidents: scoreboard.incidents,
        false_alerts: scoreboard.false_alerts,
        false_incidents: scoreboard.false_incidents,
        notifications: scoreboard.notifications,
        clean_events,
        stats: pipeline.stats().clone(),
        span_ms,
    })
}
