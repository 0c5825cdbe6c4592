//! Scores what a run raised against the injected incidents: which were caught, how fast,
//! and what fired on clean traffic.

use sentinel_core::incident::{Change, NotificationKind};
use sentinel_core::Anomaly;

use crate::replay::Incident;

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
    /// Open times of the Sentinel incidents opened on its key while it lasted (and during the grace period).
    pub opened_ms: Vec<i64>,
}

impl IncidentOutcome {
    /// Event time from the incident's start to its first matching alert.
    pub fn time_to_detect_ms(&self) -> Option<i64> {
        self.first_alert
            .as_ref()
            .map(|a| a.timestamp_ms - self.incident.start_ms)
    }

    /// Event time from the incident's start to the first Sentinel incident on its key.
    pub fn time_to_open_ms(&self) -> Option<i64> {
        self.opened_ms.first().map(|at| at - self.incident.start_ms)
    }
}

/// Whether something raised on (service, model) at `at_ms` belongs to `incident`: same key,
/// inside the incident or its grace period.
fn belongs(service: &str, model: &str, at_ms: i64, incident: &Incident) -> bool {
    service == incident.service
        && model == incident.model
        && (incident.start_ms..incident.end_ms + INCIDENT_GRACE_MS).contains(&at_ms)
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
    /// Sentinel incidents opened outside every injected incident.
    pub false_incidents: Vec<(i64, String, String, String)>,
    /// Notifications sent.
    pub notifications: u64,
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
                    opened_ms: Vec::new(),
                })
                .collect(),
            false_alerts: Vec::new(),
            false_incidents: Vec::new(),
            notifications: 0,
        }
    }

    /// Records an incident change; the injected incident it belongs to, if any.
    pub fn record_incident(&mut self, change: &Change) -> Option<&Incident> {
        self.notifications += u64::from(change.notify);
        let i = &change.incident;
        let Some(outcome) = self
            .incidents
            .iter_mut()
            .find(|o| belongs(&i.service_name, &i.model, i.opened_at_ms, &o.incident))
        else {
            if change.kind == NotificationKind::Opened {
                self.false_incidents.push((
                    i.opened_at_ms,
                    i.service_name.clone(),
                    i.model.clone(),
                    i.anomaly_type.name().to_owned(),
                ));
            }
            return None;
        };
        if change.kind == NotificationKind::Opened {
            outcome.opened_ms.push(i.opened_at_ms);
        }
        Some(&outcome.incident)
    }

    /// Records `alert`; the incident it belongs to, if any.
    pub fn record(&mut self, alert: Anomaly) -> Option<&Incident> {
        match self.incidents.iter_mut().find(|o| {
            belongs(
                &alert.service_name,
                &alert.model,
                alert.timestamp_ms,
                &o.incident,
            )
        }) {
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

/// One line for an incident change: event time, what happened, severity, type, key,
/// signals, and the injected incident it belongs to (or `clean traffic`).
pub fn incident_line(change: &Change, injected: Option<&Incident>) -> String {
    let i = &change.incident;
    let tag = injected.map_or_else(
        || "clean traffic".to_owned(),
        |inj| format!("{} {:?}", inj.id, inj.kind),
    );
    let at = if change.kind == NotificationKind::Resolved {
        i.resolved_at_ms.unwrap_or(i.updated_at_ms)
    } else {
        i.updated_at_ms
    };
    let signals: Vec<String> = i
        .signals
        .iter()
        .map(|s| format!("{} {} via {}", s.anomaly_type.name(), s.metric, s.method))
        .collect();
    let resolution = i
        .resolution
        .map(|r| format!(" ({r:?})").to_lowercase())
        .unwrap_or_default();
    format!(
        "{} incident {:<9}{} {:<8} {:<22} {:>17}/{:<18} {:>5.0}% affected{} [{}] {}",
        sentinel_core::anomaly::rfc3339(at)
            .get(11..23)
            .unwrap_or_default(),
        change.kind.name(),
        if change.notify { " " } else { "*" },
        i.severity.name(),
        i.anomaly_type.name(),
        i.service_name,
        i.model,
        100.0 * i.affected_share,
        resolution,
        tag,
        signals.join(", "),
    )
}

/// A table of injected incidents: kind, key, incidents opened, time to open the first (or
/// `MISSED`), time to the first point alert of an expected signal (or `none`: point
/// alerts wait while a baseline is young), point alerts, and the first alert's type,
/// metric and method.
pub fn incident_table(incidents: &[IncidentOutcome]) -> String {
    let mut table = format!(
        "{:<8} {:<13} {:<36} {:>8} {:>9} {:>9} {:>7}  first alert\n",
        "incident", "kind", "key", "opened", "to open", "to alert", "alerts"
    );
    for o in incidents {
        let i = &o.incident;
        let detected = o.time_to_detect_ms().map_or_else(
            || "none".to_owned(),
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
        let opened = o.time_to_open_ms().map_or_else(
            || "MISSED".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        );
        table.push_str(&format!(
            "{:<8} {:<13} {:<36} {:>8} {:>9} {:>9} {:>7}  {}\n",
            i.id.to_string(),
            format!("{:?}", i.kind),
            format!("{}/{}", i.service, i.model),
            o.opened_ms.len(),
            opened,
            detected,
            o.alerts,
            first
        ));
    }
    table
}
