//! Runs a replay through the detection pipeline and scores what was raised against
//! the injected incidents: which were caught, how fast, and what fired on clean traffic.

use sentinel_core::{Anomaly, DetectionConfig};

use crate::pipeline::{Pipeline, PipelineError, PipelineStats};
use crate::replay::{Incident, Replay, ReplayConfig, ReplayError};

/// After an incident ends, alerts on its key still belong to it for this long (the
/// baseline needs a while to settle back).
pub const INCIDENT_GRACE_MS: i64 = 120_000;

/// How one injected incident was handled.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentOutcome {
    /// The incident.
    pub incident: Incident,
    /// First alert naming one of the incident's expected signals, if any.
    pub first_alert: Option<Anomaly>,
    /// Alerts raised on the incident's key while it lasted (and during the grace period).
    pub alerts: usize,
}

impl IncidentOutcome {
    /// Event time from the incident's start to its first matching alert.
    pub fn time_to_detect_ms(&self) -> Option<i64> {
        self.first_alert
            .as_ref()
            .map(|a| a.timestamp_ms - self.incident.start_ms)
    }
}

/// Everything a replay run produced.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    /// Per injected incident.
    pub incidents: Vec<IncidentOutcome>,
    /// Alerts raised outside every incident (false alarms).
    pub false_alerts: Vec<Anomaly>,
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

/// Whether `alert` belongs to `incident`: same key, inside the incident or its grace period.
fn belongs(alert: &Anomaly, incident: &Incident) -> bool {
    alert.service_name == incident.service
        && alert.model == incident.model
        && (incident.start_ms..incident.end_ms + INCIDENT_GRACE_MS).contains(&alert.timestamp_ms)
}

/// Whether `alert` names one of the signals expected of `incident`.
fn expected(alert: &Anomaly, incident: &Incident) -> bool {
    incident
        .signals
        .iter()
        .any(|s| s.metric == alert.details.metric && s.anomaly_type == alert.anomaly_type.name())
}

/// Scores alerts against the injected incidents as they are raised.
#[derive(Debug, Clone)]
pub struct Scoreboard {
    /// Per injected incident.
    pub incidents: Vec<IncidentOutcome>,
    /// Alerts raised outside every incident (false alarms).
    pub false_alerts: Vec<Anomaly>,
}

impl Scoreboard {
    /// A scoreboard of `incidents`, with nothing raised yet.
    pub fn new(incidents: &[Incident]) -> Scoreboard {
        Scoreboard {
            incidents: incidents
                .iter()
                .map(|i| IncidentOutcome {
                    incident: i.clone(),
                    first_alert: None,
                    alerts: 0,
                })
                .collect(),
            false_alerts: Vec::new(),
        }
    }

    /// Records `alert`; the incident it belongs to, if any.
    pub fn record(&mut self, alert: Anomaly) -> Option<&Incident> {
        match self
            .incidents
            .iter_mut()
            .find(|o| belongs(&alert, &o.incident))
        {
            Some(outcome) => {
                outcome.alerts += 1;
                if outcome.first_alert.is_none() && expected(&alert, &outcome.incident) {
                    outcome.first_alert = Some(alert);
                }
                Some(&outcome.incident)
            }
            None => {
                self.false_alerts.push(alert);
                None
            }
        }
    }
}

/// One line for an alert: event time, severity, type, key, metric, value against baseline
/// and what raised it, and the incident it belongs to (or `clean traffic`).
pub fn alert_line(alert: &Anomaly, incident: Option<&Incident>) -> String {
    let d = &alert.details;
    let tag = incident.map_or_else(
        || "clean traffic".to_owned(),
        |i| format!("{} {:?}", i.id, i.kind),
    );
    format!(
        "{} {:<8} {:<22} {:>17}/{:<18} {:<17} {:>10.2} vs {:>10.2} ({}) [{}]",
        alert.timestamp.get(11..23).unwrap_or(&alert.timestamp),
        alert.severity.name(),
        alert.anomaly_type.name(),
        alert.service_name,
        alert.model,
        d.metric,
        d.value,
        d.baseline,
        alert.detection_method,
        tag,
    )
}

/// A table of incidents: kind, key, time to detect (or `MISSED`), alerts, and the
/// first alert's type, metric and method.
pub fn incident_table(incidents: &[IncidentOutcome]) -> String {
    let mut table = format!(
        "{:<8} {:<13} {:<36} {:>9} {:>7}  first alert\n",
        "incident", "kind", "key", "detected", "alerts"
    );
    for o in incidents {
        let i = &o.incident;
        let detected = o.time_to_detect_ms().map_or_else(
            || "MISSED".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        );
        let first = o.first_alert.as_ref().map_or_else(String::new, |a| {
            format!(
                "{} {} via {}",
                a.anomaly_type.name(),
                a.details.metric,
                a.detection_method
            )
        });
        table.push_str(&format!(
            "{:<8} {:<13} {:<36} {:>9} {:>7}  {}\n",
            i.id.to_string(),
            format!("{:?}", i.kind),
            format!("{}/{}", i.service, i.model),
            detected,
            o.alerts,
            first
        ));
    }
    table
}

/// Replays `replay` through a pipeline of `shards` shards, calling `on_alert` for every
/// alert raised (with the incident it belongs to, if any), and scores the result.
pub fn run(
    replay: ReplayConfig,
    detection: DetectionConfig,
    shards: u32,
    mut on_alert: impl FnMut(&Anomaly, Option<&Incident>),
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
        for alert in observation.anomalies {
            let incident = scoreboard.record(alert.clone());
            on_alert(&alert, incident);
        }
    }
    Ok(ReplayOutcome {
        incidents: scoreboard.incidents,
        false_alerts: scoreboard.false_alerts,
        clean_events,
        stats: pipeline.stats().clone(),
        span_ms,
    })
}
