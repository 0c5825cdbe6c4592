//! Everything kept for one (service, model) key, and how one call becomes evidence for
//! the key's incident: tail shares per signal, an error share, request-rate streaks,
//! drift alarms and the user's caps.

use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyType, Finding};
use crate::config::{DetectionConfig, MetricConfig};
use crate::drift::Drift;
use crate::evidence::{beyond_tail, LinearFit, ShareCusum, Side};
use crate::incident::{CallEvidence, IncidentSignal, KeyTracker};
use crate::metric::{Metric, MetricValues};
use crate::onset::OnsetDetector;
use crate::rate::{ErrorRate, RequestRate, UserUsage};
use crate::window::Window;

/// Baseline and drift state of one metric of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetricState {
    pub window: Window,
    /// Created when CUSUM first runs on the metric.
    pub drift: Option<Drift>,
    /// Created when the onset detector first runs on the metric.
    pub onset: Option<Box<OnsetDetector>>,
    /// Calls flagged while the baseline was young and kept out of it.
    pub held_out: u32,
}

impl MetricState {
    fn new(cfg: &DetectionConfig) -> Self {
        MetricState {
            window: Window::new(cfg.window_size),
            drift: None,
            onset: None,
            held_out: 0,
        }
    }
}

/// Where a tail-share signal reads its value and baseline from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// The metric's own baseline.
    Metric(Metric),
    /// Latency against what the key's fit expects for the call's output tokens.
    LatencyGivenTokens,
    /// Cost against what the key's fit expects for the call's input and output tokens.
    CostGivenTokens,
}

/// A signal tested by the share of calls landing in one tail of a baseline.
struct ShareSignal {
    source: Source,
    side: Side,
    anomaly_type: AnomalyType,
    metric: Metric,
}

/// The tail-share signals, in the order their evidence is kept.
const SHARE_SIGNALS: [ShareSignal; 5] = [
    ShareSignal {
        source: Source::LatencyGivenTokens,
        side: Side::Upper,
        anomaly_type: AnomalyType::LatencySpike,
        metric: Metric::LatencyMs,
    },
    ShareSignal {
        source: Source::CostGivenTokens,
        side: Side::Upper,
        anomaly_type: AnomalyType::CostAnomaly,
        metric: Metric::CostUsd,
    },
    ShareSignal {
        source: Source::Metric(Metric::CompletionTokens),
        side: Side::Upper,
        anomaly_type: AnomalyType::TokenUsageSpike,
        metric: Metric::CompletionTokens,
    },
    ShareSignal {
        source: Source::Metric(Metric::CompletionTokens),
        side: Side::Lower,
        anomaly_type: AnomalyType::OutputDrift,
        metric: Metric::CompletionTokens,
    },
    ShareSignal {
        source: Source::Metric(Metric::PromptTokens),
        side: Side::Upper,
        anomaly_type: AnomalyType::TokenUsageSpike,
        metric: Metric::PromptTokens,
    },
];

/// The fewest hits in a row that take a share CUSUM from zero to `threshold`.
fn shortest_run(p0: f64, p1: f64, threshold: f64) -> u32 {
    (threshold / (p1 / p0).ln()).ceil().clamp(1.0, 32.0) as u32
}

/// Forgetting horizon of the per-key fits, in calls (one window's worth).
fn fit_memory(cfg: &DetectionConfig) -> f64 {
    cfg.window_size as f64
}

/// Added to latency (ms) and cost (USD) before taking the ratio to their fitted value.
const LATENCY_OFFSET_MS: f64 = 1.0;
const COST_OFFSET_USD: f64 = 1e-7;

/// Everything kept for one (service, model) key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyState {
    pub metrics: Vec<MetricState>,
    pub error_rate: ErrorRate,
    pub request_rate: RequestRate,
    pub users: UserUsage,
    pub events: u64,
    /// Latency (ms) ≈ a + b · output tokens: time to first token plus time per token.
    pub latency_fit: LinearFit,
    /// Cost (USD) ≈ a · input tokens + b · output tokens: the prices the key pays.
    pub cost_fit: LinearFit,
    /// ln of latency over its fitted value, per call.
    pub latency_residual: Window,
    /// ln of cost over its fitted value, per call.
    pub cost_residual: Window,
    /// Mean cost per successful call, exponentially weighted over about one window, USD.
    pub cost_mean: Option<f64>,
    /// Evidence of each of [`SHARE_SIGNALS`].
    pub shares: Vec<ShareCusum>,
    /// Evidence that calls fail more often than the baseline error rate.
    pub errors: ShareCusum,
    /// The key's incident.
    pub tracker: KeyTracker,
}

impl KeyState {
    pub fn new(cfg: &DetectionConfig) -> Self {
        KeyState {
            metrics: Metric::ALL.iter().map(|_| MetricState::new(cfg)).collect(),
            error_rate: ErrorRate::default(),
            request_rate: RequestRate::new(cfg.request_rate.baseline_buckets),
            users: UserUsage::new(cfg.user_usage.baseline_samples),
            events: 0,
            latency_fit: LinearFit::default(),
            cost_fit: LinearFit::default(),
            latency_residual: Window::new(cfg.window_size),
            cost_residual: Window::new(cfg.window_size),
            cost_mean: None,
            shares: vec![ShareCusum::default(); SHARE_SIGNALS.len()],
            errors: ShareCusum::default(),
            tracker: KeyTracker::default(),
        }
    }

    /// The conditional residuals of a call: ln(value / fitted value) for latency and cost,
    /// once the fit has a window's worth of calls.
    fn residuals(&self, values: &MetricValues, cfg: &DetectionConfig) -> [Option<f64>; 2] {
        let ready = |fit: &LinearFit| fit.weight() >= cfg.min_samples as f64;
        let prompt = values.get(Metric::PromptTokens);
        let completion = values.get(Metric::CompletionTokens);
        let latency = values
            .get(Metric::LatencyMs)
            .zip(completion)
            .and_then(|(l, c)| {
                let fitted = self.latency_fit.predict([1.0, c])?.max(0.0);
                ready(&self.latency_fit)
                    .then(|| ((l + LATENCY_OFFSET_MS) / (fitted + LATENCY_OFFSET_MS)).ln())
            });
        let cost = values
            .get(Metric::CostUsd)
            .zip(prompt.zip(completion))
            .and_then(|(cost, (p, c))| {
                let fitted = self.cost_fit.predict([p, c])?.max(0.0);
                ready(&self.cost_fit)
                    .then(|| ((cost + COST_OFFSET_USD) / (fitted + COST_OFFSET_USD)).ln())
            });
        [latency, cost]
    }

    /// Judges a successful call's values against the tail-share signals (before they are
    /// learnt) and adds to `evidence`; then, unless `hold`, learns the fits and residuals.
    pub fn value_evidence(
        &mut self,
        values: &MetricValues,
        metric_configs: &[MetricConfig],
        cfg: &DetectionConfig,
        at: i64,
        hold: bool,
        evidence: &mut CallEvidence,
    ) {
        let ic = &cfg.incidents;
        let [latency_r, cost_r] = self.residuals(values, cfg);
        let min_len = cfg.min_samples.max((2.0 / ic.tail).ceil() as usize);
        let (p0, p1, cap) = (ic.tail, ic.tail * ic.share_factor, 2.0 * ic.threshold);
        let mut residual_hits = [false; 2];
        for (i, signal) in SHARE_SIGNALS.iter().enumerate() {
            let Some(raw) = values.get(signal.metric).filter(|v| v.is_finite()) else {
                continue;
            };
            let scale = metric_configs[signal.metric.index()].scale;
            let own = &self.metrics[signal.metric.index()].window;
            // Judged given the call's tokens where the fit and its residuals are ready, on
            // the metric's own baseline otherwise (a call without token counts, say).
            let conditional = match signal.source {
                Source::LatencyGivenTokens if ic.conditional => {
                    latency_r.map(|t| (&self.latency_residual, t, 0))
                }
                Source::CostGivenTokens if ic.conditional => {
                    cost_r.map(|t| (&self.cost_residual, t, 1))
                }
                _ => None,
            };
            let (window, t, residual) = match conditional {
                Some((window, t, r)) if window.len() >= min_len => (window, t, Some(r)),
                _ => (own, scale.forward(raw), None),
            };
            if window.len() < min_len {
                continue;
            }
            let hit = beyond_tail(window, t, signal.side, ic.tail, ic.min_deviation);
            if let (true, Some(r)) = (hit, residual) {
                residual_hits[r] = true;
            }
            let before = self.shares[i].statistic;
            let after = self.shares[i].update(hit, p0, p1, cap);
            evidence.affected |= hit;
            if after >= ic.threshold / 2.0 {
                evidence
                    .building
                    .push((signal.anomaly_type, signal.metric.name()));
            }
            if before < ic.threshold && after >= ic.threshold {
                evidence.share = evidence.share.max(self.shares[i].recent_share(shortest_run(
                    p0,
                    p1,
                    ic.threshold,
                )));
                let baseline = match residual {
                    Some(0) => self
                        .latency_fit
                        .predict([1.0, values.get(Metric::CompletionTokens).unwrap_or(0.0)]),
                    Some(_) => self.cost_fit.predict([
                        values.get(Metric::PromptTokens).unwrap_or(0.0),
                        values.get(Metric::CompletionTokens).unwrap_or(0.0),
                    ]),
                    None => own.median().map(|m| scale.inverse(m)),
                };
                evidence.fired.push(IncidentSignal {
                    anomaly_type: signal.anomaly_type,
                    metric: signal.metric.name().to_owned(),
                    method: format!("tail_share_{}", signal.side.name()),
                    first_at_ms: at,
                    last_at_ms: at,
                    value: raw,
                    baseline: baseline.unwrap_or(raw),
                    evidence: after,
                });
            }
        }
        let cost = values.get(Metric::CostUsd).filter(|c| c.is_finite());
        if let (Some(cost), Some(mean)) = (cost, self.cost_mean) {
            evidence.excess_cost_usd = cost - mean;
        }
        if hold {
            return;
        }
        if let Some(cost) = cost {
            let mean = self.cost_mean.get_or_insert(cost);
            *mean += (cost - *mean) / fit_memory(cfg);
        }
        let prompt = values.get(Metric::PromptTokens);
        let completion = values.get(Metric::CompletionTokens);
        let memory = fit_memory(cfg);
        if let (Some(l), Some(c)) = (values.get(Metric::LatencyMs), completion) {
            if let Some(r) = latency_r {
                self.latency_residual.push(r);
            }
            if !residual_hits[0] {
                self.latency_fit.add([1.0, c], l, memory);
            }
        }
        if let (Some(cost), Some(p), Some(c)) = (values.get(Metric::CostUsd), prompt, completion) {
            if let Some(r) = cost_r {
                self.cost_residual.push(r);
            }
            if !residual_hits[1] {
                self.cost_fit.add([p, c], cost, memory);
            }
        }
    }

    /// Adds the call's success or failure to the error-share evidence.
    pub fn error_evidence(
        &mut self,
        failed: bool,
        cfg: &DetectionConfig,
        at: i64,
        evidence: &mut CallEvidence,
    ) {
        let ic = &cfg.incidents;
        let ((requests, errors), (history_requests, history_errors)) = self.error_rate.counts();
        if history_requests < u64::from(cfg.error_rate.min_requests) {
            return;
        }
        let floor = cfg.error_rate.baseline_floor;
        let p0 = (history_errors as f64 / history_requests as f64).clamp(floor, 0.5);
        let p1 = (p0 * ic.share_factor)
            .max(p0 + cfg.error_rate.min_increase)
            .min(0.95);
        let before = self.errors.statistic;
        let after = self.errors.update(failed, p0, p1, 2.0 * ic.threshold);
        evidence.affected |= failed;
        if after >= ic.threshold / 2.0 {
            evidence
                .building
                .push((AnomalyType::ErrorRateIncrease, "error_rate"));
        }
        if before < ic.threshold && after >= ic.threshold {
            evidence.share =
                evidence
                    .share
                    .max(self.errors.recent_share(shortest_run(p0, p1, ic.threshold)));
            evidence.fired.push(IncidentSignal {
                anomaly_type: AnomalyType::ErrorRateIncrease,
                metric: "error_rate".to_owned(),
                method: "error_share".to_owned(),
                first_at_ms: at,
                last_at_ms: at,
                value: f64::from(errors) / f64::from(requests.max(1)),
                baseline: p0,
                evidence: after,
            });
        }
    }

    /// Adds the findings of the bucketed detectors that are evidence on their own: a drift
    /// alarm, a request rate out of line for `rate_buckets` buckets, a user far above others.
    pub fn finding_evidence(
        &self,
        findings: &[Finding],
        cfg: &DetectionConfig,
        at: i64,
        evidence: &mut CallEvidence,
    ) {
        for f in findings {
            let counts = match f.method {
                "cusum" => cfg
                    .incidents
                    .drift_metrics
                    .iter()
                    .any(|m| m.name() == f.metric),
                "onset" => true,
                "request_rate" => self.request_rate.streak() >= cfg.incidents.rate_buckets,
                "user_rate" => self.users.streak() >= cfg.incidents.rate_buckets,
                _ => false,
            };
            if counts {
                evidence.fired.push(IncidentSignal {
                    anomaly_type: f.anomaly_type,
                    metric: f.metric.to_owned(),
                    method: f.method.to_owned(),
                    first_at_ms: at,
                    last_at_ms: at,
                    value: f.value,
                    baseline: f.baseline,
                    evidence: f.ratio,
                });
            }
        }
    }
}

/// Adds a breach of the user's latency or cost cap by one call to `evidence`.
pub(crate) fn cap_evidence(
    values: &MetricValues,
    cfg: &DetectionConfig,
    at: i64,
    evidence: &mut CallEvidence,
) {
    let ic = &cfg.incidents;
    for (metric, cap, anomaly_type, method) in [
        (
            Metric::LatencyMs,
            ic.latency_cap_ms,
            AnomalyType::LatencySpike,
            "latency_cap",
        ),
        (
            Metric::CostUsd,
            ic.cost_cap_usd,
            AnomalyType::CostAnomaly,
            "cost_cap",
        ),
    ] {
        let (Some(cap), Some(value)) = (cap, values.get(metric)) else {
            continue;
        };
        if value > cap {
            evidence.affected = true;
            evidence.fired.push(IncidentSignal {
                anomaly_type,
                metric: metric.name().to_owned(),
                method: method.to_owned(),
                first_at_ms: at,
                last_at_ms: at,
                value,
                baseline: cap,
                evidence: value / cap,
            });
        }
    }
    if let (Some(slo), Some(latency)) = (ic.latency_slo_ms, values.get(Metric::LatencyMs)) {
        evidence.over_slo = latency > slo;
    }
}
