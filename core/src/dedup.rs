//! Alert dedup: one alert per (service, model, metric, anomaly type) per incident, in event time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::AnomalyType;

/// What an alert is deduplicated on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DedupKey {
    /// Service of the alert.
    pub service: String,
    /// Model of the alert.
    pub model: String,
    /// Metric of the alert.
    pub metric: String,
    /// Anomaly type of the alert.
    pub anomaly_type: AnomalyType,
}

/// The alert currently open for a dedup key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Id of the alert that was raised.
    pub alert_id: String,
    /// Event time of the first hit.
    pub first_ms: i64,
    /// Event time of the latest hit.
    pub last_ms: i64,
    /// Hits folded into this alert, the first included.
    pub count: u64,
}

/// A hit folded into an already open alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    /// The open alert the hit belongs to.
    pub alert_id: String,
    /// Hits folded into it so far, the first included.
    pub count: u64,
    /// Event time of this hit.
    pub last_ms: i64,
}

/// Open alerts of a shard.
///
/// The first hit on a key raises an alert; hits within `window_ms` of it increase its
/// count; the first hit after the window raises a new alert, so a long incident is
/// reported again once per window and a stale alert never hides a new incident.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Dedup {
    open: BTreeMap<DedupKey, OpenAlert>,
}

impl Dedup {
    /// Folds a hit at `at_ms` into the open alert of `key`, if one is open; `None` means a new alert is due.
    pub fn fold(&mut self, key: &DedupKey, at_ms: i64, window_ms: i64) -> Option<Repeat> {
        let open = self.open.get_mut(key)?;
        if at_ms.saturating_sub(open.first_ms) > window_ms {
            return None;
        }
        open.count += 1;
        open.last_ms = open.last_ms.max(at_ms);
        Some(Repeat {
            alert_id: open.alert_id.clone(),
            count: open.count,
            last_ms: at_ms,
        })
    }

    /// Records a newly raised alert as the open one of `key`.
    pub fn open(&mut self, key: DedupKey, alert_id: String, at_ms: i64) {
        self.open.insert(
            key,
            OpenAlert {
                alert_id,
                first_ms: at_ms,
                last_ms: at_ms,
                count: 1,
            },
        );
    }

    /// Ids of alerts on `service`/`model` whose window is still open at `at_ms`, in key order.
    pub fn open_on(&self, service: &str, model: &str, at_ms: i64, window_ms: i64) -> Vec<String> {
        self.open
            .iter()
            .filter(|(k, a)| {
                k.service == service
                    && k.model == model
                    && at_ms.saturating_sub(a.first_ms) <= window_ms
            })
            .map(|(_, a)| a.alert_id.clone())
            .collect()
    }

    /// Forgets alerts raised before `before_ms`; returns how many.
    pub fn purge(&mut self, before_ms: i64) -> usize {
        let n = self.open.len();
        self.open.retain(|_, a| a.first_ms >= before_ms);
        n - self.open.len()
    }

    /// Number of alerts remembered.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no alert is remembered.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: &str) -> DedupKey {
        DedupKey {
            service: "chat".into(),
            model: "gpt-4o".into(),
            metric: metric.into(),
            anomaly_type: AnomalyType::LatencySpike,
        }
    }

    #[test]
    fn hits_within_the_window_fold_into_one_alert() {
        let mut d = Dedup::default();
        assert!(d.fold(&key("latency_ms"), 0, 300_000).is_none());
        d.open(key("latency_ms"), "a1".into(), 0);
        let r = d.fold(&key("latency_ms"), 200_000, 300_000).unwrap();
        assert_eq!((r.alert_id.as_str(), r.count), ("a1", 2));
        let r = d.fold(&key("latency_ms"), 300_000, 300_000).unwrap();
        assert_eq!(r.count, 3);
        // the window is counted from the alert: hits after it raise a new alert
        assert!(d.fold(&key("latency_ms"), 300_001, 300_000).is_none());
    }

    #[test]
    fn other_metrics_and_types_are_separate_incidents() {
        let mut d = Dedup::default();
        d.open(key("latency_ms"), "a1".into(), 0);
        assert!(d.fold(&key("cost_usd"), 1, 300_000).is_none());
        let mut other = key("latency_ms");
        other.anomaly_type = AnomalyType::LatencyDrift;
        assert!(d.fold(&other, 1, 300_000).is_none());
    }

    #[test]
    fn open_on_lists_only_live_alerts_of_the_pair() {
        let mut d = Dedup::default();
        d.open(key("latency_ms"), "a1".into(), 0);
        d.open(key("cost_usd"), "a2".into(), 100_000);
        // a hit on a1 at 200 s does not keep it open past its window
        d.fold(&key("latency_ms"), 200_000, 300_000);
        let mut elsewhere = key("latency_ms");
        elsewhere.service = "search".into();
        d.open(elsewhere, "a3".into(), 100_000);
        assert_eq!(d.open_on("chat", "gpt-4o", 350_000, 300_000), vec!["a2"]);
        assert_eq!(d.purge(50_000), 1);
        assert_eq!(d.len(), 2);
    }
}
