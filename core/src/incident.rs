//! Incidents: one per (service, model) key while evidence says the key misbehaves. An
//! incident groups every signal that moves with it, is graded by impact, and produces a
//! notification when it opens, escalates and resolves — never one per point anomaly.

use serde::{Deserialize, Serialize};

use crate::anomaly::Severity;
use crate::anomaly::{rfc3339, stable_uuid, Anomaly, AnomalyContext, AnomalyDetails, AnomalyType};
use crate::config::IncidentConfig;

/// Version of the notification payload; receivers can tell it from the point-alert payload.
pub const NOTIFICATION_SCHEMA_VERSION: u32 = 2;

/// At most this many anomaly ids are kept per incident.
const RELATED_KEPT: usize = 10;

/// Weight of the newest call in an incident's running shares (about the last 32 calls).
const SHARE_SMOOTHING: f64 = 1.0 / 32.0;

/// Whether an incident is still going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Evidence is still arriving, or has not been quiet for long enough.
    Open,
    /// Over.
    Resolved,
}

/// How an incident ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The key went back to its old baseline.
    Recovered,
    /// The key stayed at its new level, which became the baseline (e.g. a price change).
    Adapted,
    /// An operator resolved it.
    Manual,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An incident opened.
    Opened,
    /// An open incident became more severe.
    Escalated,
    /// An incident ended.
    Resolved,
}

impl NotificationKind {
    /// The kind's name in payloads and headers.
    pub fn name(self) -> &'static str {
        match self {
            NotificationKind::Opened => "opened",
            NotificationKind::Escalated => "escalated",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// Who did something to an incident, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// Who.
    pub by: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Why.
    pub comment: String,
}

/// One line of evidence inside an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentSignal {
    /// What kind of anomaly the evidence points to.
    pub anomaly_type: AnomalyType,
    /// Metric (`latency_ms`, `error_rate`, `request_rate`, ...).
    pub metric: String,
    /// The test that produced the evidence (`tail_share`, `error_share`, `cusum`, ...).
    pub method: String,
    /// First time the signal fired, Unix ms (event time).
    pub first_at_ms: i64,
    /// Latest time the signal fired, Unix ms (event time).
    pub last_at_ms: i64,
    /// The value behind the latest firing, in the metric's units.
    pub value: f64,
    /// The baseline it was judged against, in the metric's units.
    pub baseline: f64,
    /// Strength of the evidence when it fired (nats for share tests, score ratio otherwise).
    pub evidence: f64,
}

/// An incident on one (service, model) key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id (UUID form), the same on every replica and in every notification.
    pub incident_id: String,
    /// Affected service.
    pub service_name: String,
    /// Affected model.
    pub model: String,
    /// Open or resolved.
    pub status: IncidentStatus,
    /// Impact grade; it only rises while the incident is open.
    pub severity: Severity,
    /// Type of the signal that opened it.
    pub anomaly_type: AnomalyType,
    /// Opened at, Unix ms (event time of the call that completed the evidence).
    pub opened_at_ms: i64,
    /// Last call on the key while open, Unix ms.
    pub updated_at_ms: i64,
    /// Resolved at, Unix ms.
    pub resolved_at_ms: Option<i64>,
    /// How it ended.
    pub resolution: Option<Resolution>,
    /// Every signal that fired while it was open, in the order they first fired.
    pub signals: Vec<IncidentSignal>,
    /// Calls on the key since it opened.
    pub calls: u64,
    /// Of those, calls that were out of line (in a watched tail, or failed).
    pub affected_calls: u64,
    /// Share of recent calls out of line (about the last 32).
    pub affected_share: f64,
    /// Spend above the key's baseline cost per call since it opened, USD.
    pub excess_cost_usd: f64,
    /// Point anomalies raised on the key while it was open.
    pub anomalies: u64,
    /// Ids of the latest of those anomalies.
    pub related_alerts: Vec<String>,
    /// Set when an operator acknowledged it (no more escalation notifications).
    pub acknowledged: Option<Actor>,
    /// Set when an operator resolved it.
    pub resolved_by: Option<Actor>,
    /// The silence that kept its notifications back, if any.
    pub silenced_by: Option<String>,
    /// The highest severity notified so far (none while silenced).
    pub notified_severity: Option<Severity>,
}

impl Incident {
    /// Extra spend per hour since it opened (at least a minute of event time assumed).
    pub fn excess_usd_per_hour(&self) -> f64 {
        let span_ms = (self.updated_at_ms - self.opened_at_ms).max(60_000);
        self.excess_cost_usd * 3_600_000.0 / span_ms as f64
    }

    /// Adds `signal`, or refreshes the signal of the same type, metric and method.
    fn merge_signal(&mut self, signal: IncidentSignal) {
        match self.signals.iter_mut().find(|s| {
            s.anomaly_type == signal.anomaly_type
                && s.metric == signal.metric
                && s.method == signal.method
        }) {
            Some(known) => {
                known.last_at_ms = signal.last_at_ms;
                known.value = signal.value;
                known.evidence = known.evidence.max(signal.evidence);
            }
            None => self.signals.push(signal),
        }
    }
}

/// What one call told a key's tracker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallEvidence {
    /// Signals whose evidence crossed the threshold on this call.
    pub fired: Vec<IncidentSignal>,
    /// Signals whose evidence stands above half the threshold: (type, metric).
    pub building: Vec<(AnomalyType, &'static str)>,
    /// Whether the call itself was out of line.
    pub affected: bool,
    /// Share of out-of-line calls behind the signals that fired (since their evidence began).
    pub share: f64,
    /// Whether the call missed the latency objective.
    pub over_slo: bool,
    /// The call's cost above the key's baseline cost per call, USD (may be negative).
    pub excess_cost_usd: f64,
}

/// A silence: notifications of matching incidents are kept back between `starts_at_ms` and `ends_at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Id (UUID form).
    pub silence_id: String,
    /// Service it applies to (all when absent).
    pub service_name: Option<String>,
    /// Model it applies to (all when absent).
    pub model: Option<String>,
    /// Incident type it applies to (all when absent).
    pub anomaly_type: Option<AnomalyType>,
    /// Start, Unix ms.
    pub starts_at_ms: i64,
    /// End, Unix ms.
    pub ends_at_ms: i64,
    /// Who set it, when and why.
    pub created: Actor,
}

impl Silence {
    /// Whether it keeps back notifications of `incident` at `at_ms`.
    pub fn matches(&self, incident: &Incident, at_ms: i64) -> bool {
        (self.starts_at_ms..self.ends_at_ms).contains(&at_ms)
            && self
                .service_name
                .as_ref()
                .is_none_or(|s| *s == incident.service_name)
            && self.model.as_ref().is_none_or(|m| *m == incident.model)
            && self.anomaly_type.is_none_or(|t| t == incident.anomaly_type)
    }
}

/// The notification payload: the alert fields existing receivers read, describing the
/// incident's leading signal, plus the incident itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The alert fields (`alert_id` is unique per notification, stable across redelivery).
    #[serde(flatten)]
    pub alert: Anomaly,
    /// Payload version ([`NOTIFICATION_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Why it is sent.
    pub event: NotificationKind,
    /// The incident as it stands.
    pub incident: Incident,
}

impl Notification {
    /// The notification of `kind` for `incident` at `at_ms`.
    pub fn of(
        kind: NotificationKind,
        incident: &Incident,
        at_ms: i64,
        runbook_base: Option<&str>,
    ) -> Self {
        let lead = incident
            .signals
            .iter()
            .find(|s| s.anomaly_type == incident.anomaly_type)
            .or(incident.signals.first());
        let (metric, value, baseline, method, evidence) =
            lead.map_or(("", 0.0, 0.0, "", 0.0), |s| {
                (
                    s.metric.as_str(),
                    s.value,
                    s.baseline,
                    s.method.as_str(),
                    s.evidence,
                )
            });
        let mut additional = std::collections::BTreeMap::new();
        additional.insert("affected_share".into(), incident.affected_share.into());
        additional.insert(
            "excess_usd_per_hour".into(),
            incident.excess_usd_per_hour().into(),
        );
        additional.insert("signals".into(), incident.signals.len().into());
        let alert_id = stable_uuid(
            b"sentinel-notification",
            &[
                incident.incident_id.as_bytes(),
                kind.name().as_bytes(),
                &at_ms.to_be_bytes(),
            ],
        );
        let anomaly_type = incident.anomaly_type;
        Notification {
            alert: Anomaly {
                alert_id,
                timestamp: rfc3339(at_ms),
                timestamp_ms: at_ms,
                severity: incident.severity,
                anomaly_type,
                service_name: incident.service_name.clone(),
                model: incident.model.clone(),
                detection_method: method.to_owned(),
                // 16 nats of evidence are odds of millions to one: confidence saturates fast.
                confidence: (1.0 - 0.5 * (-evidence / 8.0).exp()).clamp(0.5, 1.0),
                details: AnomalyDetails {
                    metric: metric.to_owned(),
                    value,
                    baseline,
                    threshold: baseline,
                    deviation_sigma: 0.0,
                    additional,
                },
                context: AnomalyContext {
                    trace_id: None,
                    user_id: None,
                    region: None,
                    time_window: format!("since {}", rfc3339(incident.opened_at_ms)),
                    sample_count: incident.calls,
                    additional: Default::default(),
                },
                root_cause: root_cause(incident),
                remediation: anomaly_type
                    .remediation()
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                related_alerts: incident.related_alerts.clone(),
                runbook_url: runbook_base
                    .map(|base| format!("{}/{}", base.trim_end_matches('/'), anomaly_type.name())),
                incident_id: Some(incident.incident_id.clone()),
            },
            schema_version: NOTIFICATION_SCHEMA_VERSION,
            event: kind,
            incident: incident.clone(),
        }
    }
}

/// The likely cause an incident's signals point to, when they tell one.
fn root_cause(incident: &Incident) -> Option<String> {
    let has = |t: AnomalyType| incident.signals.iter().any(|s| s.anomaly_type == t);
    if has(AnomalyType::ErrorRateIncrease) && incident.signals.len() > 1 {
        Some("failing calls: the latency and throughput signals follow from the error burst".into())
    } else if has(AnomalyType::TokenUsageSpike) && !has(AnomalyType::LatencySpike) {
        Some("longer generations: latency and cost are in line with the tokens produced".into())
    } else if has(AnomalyType::CostAnomaly) && !has(AnomalyType::TokenUsageSpike) {
        Some("cost per token changed: a pricing or model-routing change".into())
    } else {
        None
    }
}

/// Incident bookkeeping of one key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KeyTracker {
    /// The open incident, if any.
    pub open: Option<Incident>,
    /// Incidents opened on this key so far (names the next one).
    pub opened: u64,
    /// Event time of the latest evidence.
    last_evidence_ms: i64,
    /// Event time of the latest notification of the open incident.
    last_notified_ms: i64,
    /// Calls since the latest evidence.
    quiet_calls: u64,
    /// Running share of calls out of line.
    affected_share: f64,
    /// Running share of calls over the latency objective.
    over_slo_share: f64,
}

/// A change of an incident: what happened and whether receivers are told.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: NotificationKind,
    /// The incident after it.
    pub incident: Incident,
    /// Whether a notification goes out (not while silenced or acknowledged, never for an
    /// incident whose opening was kept back).
    pub notify: bool,
}

impl KeyTracker {
    /// Whether the key's baselines keep their pre-incident level at `at_ms`.
    pub fn holds(&self, at_ms: i64, cfg: &IncidentConfig) -> bool {
        self.open
            .as_ref()
            .is_some_and(|i| at_ms - i.opened_at_ms < cfg.hold_ms)
    }

    /// Folds one call's evidence in; opens, escalates or resolves the key's incident.
    ///
    /// `new_id` names an incident opened now; `silence` finds a silence matching it.
    pub fn step(
        &mut self,
        at_ms: i64,
        (service, model): (&str, &str),
        evidence: CallEvidence,
        cfg: &IncidentConfig,
        new_id: impl FnOnce(u64) -> String,
        silence: impl Fn(&Incident) -> Option<String>,
    ) -> Vec<Change> {
        let blend =
            |share: f64, on: bool| share + SHARE_SMOOTHING * (f64::from(u8::from(on)) - share);
        self.affected_share = blend(self.affected_share, evidence.affected).max(evidence.share);
        self.over_slo_share = blend(self.over_slo_share, evidence.over_slo);
        // Evidence keeps an incident open if it fired, or builds on one of its signals.
        let active = !evidence.fired.is_empty()
            || self.open.as_ref().is_some_and(|incident| {
                evidence.building.iter().any(|&(t, metric)| {
                    incident
                        .signals
                        .iter()
                        .any(|s| s.anomaly_type == t && s.metric == metric)
                })
            });
        if active {
            self.last_evidence_ms = at_ms;
            self.quiet_calls = 0;
        } else {
            self.quiet_calls += 1;
        }
        let mut out = Vec::new();
        if self.open.is_none() && !evidence.fired.is_empty() {
            let first = &evidence.fired[0];
            let incident = Incident {
                incident_id: new_id(self.opened),
                service_name: service.to_owned(),
                model: model.to_owned(),
                status: IncidentStatus::Open,
                severity: Severity::Low,
                anomaly_type: first.anomaly_type,
                opened_at_ms: at_ms,
                updated_at_ms: at_ms,
                resolved_at_ms: None,
                resolution: None,
                signals: Vec::new(),
                calls: 0,
                affected_calls: 0,
                affected_share: 0.0,
                excess_cost_usd: 0.0,
                anomalies: 0,
                related_alerts: Vec::new(),
                acknowledged: None,
                resolved_by: None,
                silenced_by: None,
                notified_severity: None,
            };
            self.opened += 1;
            self.open = Some(incident);
        }
        let Some(incident) = self.open.as_mut() else {
            return out;
        };
        let opening = incident.calls == 0;
        incident.calls += 1;
        incident.affected_calls += u64::from(evidence.affected);
        incident.affected_share = self.affected_share;
        incident.excess_cost_usd += evidence.excess_cost_usd;
        incident.updated_at_ms = at_ms;
        for signal in evidence.fired {
            incident.merge_signal(signal);
        }
        let mut severity = cfg
            .severity
            .severity(incident.affected_share, incident.excess_usd_per_hour());
        if cfg.latency_slo_ms.is_some() && self.over_slo_share >= 0.5 {
            severity = severity.max(Severity::High);
        }
        incident.severity = incident.severity.max(severity);
        if opening {
            incident.silenced_by = silence(incident);
            let notify = incident.silenced_by.is_none();
            if notify {
                incident.notified_severity = Some(incident.severity);
                self.last_notified_ms = at_ms;
            }
            out.push(Change {
                kind: NotificationKind::Opened,
                incident: incident.clone(),
                notify,
            });
        } else if incident.silenced_by.is_none()
            && incident.acknowledged.is_none()
            && incident
                .notified_severity
                .is_some_and(|n| incident.severity > n)
            && (incident.severity == Severity::Critical
                || at_ms - self.last_notified_ms >= cfg.escalation_interval_ms)
        {
            incident.notified_severity = Some(incident.severity);
            self.last_notified_ms = at_ms;
            out.push(Change {
                kind: NotificationKind::Escalated,
                incident: incident.clone(),
                notify: true,
            });
        }
        if !active
            && at_ms - self.last_evidence_ms >= cfg.resolve_after_ms
            && self.quiet_calls >= cfg.resolve_min_calls
        {
            let outlasted_hold = self.last_evidence_ms - incident.opened_at_ms >= cfg.hold_ms;
            let resolution = if outlasted_hold {
                Resolution::Adapted
            } else {
                Resolution::Recovered
            };
            out.extend(self.close(at_ms, resolution, None));
        }
        out
    }

    /// Resolves the open incident; receivers are told if they were told of its opening.
    pub fn close(
        &mut self,
        at_ms: i64,
        resolution: Resolution,
        by: Option<Actor>,
    ) -> Option<Change> {
        let mut incident = self.open.take()?;
        incident.status = IncidentStatus::Resolved;
        incident.resolved_at_ms = Some(at_ms);
        incident.resolution = Some(resolution);
        incident.resolved_by = by;
        Some(Change {
            kind: NotificationKind::Resolved,
            notify: incident.notified_severity.is_some(),
            incident,
        })
    }

    /// Links a point anomaly raised on the key to the open incident; its id, if one is open.
    pub fn link(&mut self, alert_id: &str) -> Option<String> {
        let incident = self.open.as_mut()?;
        incident.anomalies += 1;
        if incident.related_alerts.len() == RELATED_KEPT {
            incident.related_alerts.remove(0);
        }
        incident.related_alerts.push(alert_id.to_owned());
        Some(incident.incident_id.clone())
    }
}
