//! The rows that hold anomalies, incidents and queued notifications: written in the one
//! binary encoding (`sentinel_core::codec`), read also as the JSON an earlier version
//! wrote (its first byte, `{`, is never the format byte). JSON is made only where a
//! document leaves Sentinel: a query answer, a delivered notification, an export.

use std::borrow::Cow;

use sentinel_core::codec;
use sentinel_core::incident::Notification;
use sentinel_core::{Anomaly, Incident, NotificationKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{encode, Error};

/// A notification's row: its parts in order (the JSON form flattens the alert fields,
/// which a positional encoding cannot).
type NotificationRow = (Anomaly, u32, NotificationKind, Incident);

/// An anomaly's row value.
pub(crate) fn encode_anomaly(anomaly: &Anomaly) -> Vec<u8> {
    encode(anomaly)
}

/// An anomaly from its row value.
pub(crate) fn decode_anomaly(bytes: &[u8]) -> Result<Anomaly, Error> {
    decode_document("anomaly", bytes)
}

/// An incident's row value.
pub(crate) fn encode_incident(incident: &Incident) -> Vec<u8> {
    encode(incident)
}

/// An incident from its row value.
pub(crate) fn decode_incident(bytes: &[u8]) -> Result<Incident, Error> {
    decode_document("incident", bytes)
}

/// A queued notification's row value.
pub(crate) fn encode_notification(n: &Notification) -> Vec<u8> {
    encode(&(&n.alert, n.schema_version, &n.event, &n.incident))
}

/// A queued notification as delivery reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Queued {
    /// The notification as JSON, exactly as delivered.
    pub json: String,
    /// Its alert fields.
    pub alert: Anomaly,
    /// What happened to its incident (none for a point alert an earlier version queued).
    pub event: Option<NotificationKind>,
}

/// The JSON of an outbox row an earlier version wrote: the fields delivery reads.
#[derive(Deserialize)]
struct QueuedJson {
    #[serde(flatten)]
    alert: Anomaly,
    #[serde(default)]
    event: Option<NotificationKind>,
}

/// A queued notification from its row value.
pub(crate) fn decode_queued(bytes: &[u8]) -> Result<Queued, Error> {
    if codec::is_current(bytes) {
        let (alert, schema_version, event, incident): NotificationRow =
            codec::decode(bytes).map_err(|e| Error::corrupt("outbox", e))?;
        let notification = Notification {
            alert,
            schema_version,
            event,
            incident,
        };
        let json = serde_json::to_string(&notification).expect("notifications always serialise");
        return Ok(Queued {
            json,
            alert: notification.alert,
            event: Some(event),
        });
    }
    let json = String::from_utf8(bytes.to_vec()).map_err(|e| Error::corrupt("outbox", e))?;
    let QueuedJson { alert, event } =
        serde_json::from_str(&json).map_err(|e| Error::corrupt("outbox", e))?;
    Ok(Queued { json, alert, event })
}

/// A row value of a document table (`table` of `keys`) as this version writes it: what a
/// digest hashes, so replicas agree whichever version wrote a row. JSON rows are read
/// and encoded again (JSON numbers are parsed exactly, so the values are those the
/// earlier version held); a row that does not parse is hashed as it is.
pub(crate) fn document_in_current_form(table: u8, bytes: &[u8]) -> Cow<'_, [u8]> {
    if codec::is_current(bytes) {
        return Cow::Borrowed(bytes);
    }
    let current = match table {
        crate::keys::ANOMALIES => serde_json::from_slice(bytes)
            .ok()
            .map(|a| encode_anomaly(&a)),
        crate::keys::INCIDENTS => serde_json::from_slice(bytes)
            .ok()
            .map(|i| encode_incident(&i)),
        crate::keys::OUTBOX => serde_json::from_slice(bytes)
            .ok()
            .map(|n| encode_notification(&n)),
        _ => None,
    };
    current.map_or(Cow::Borrowed(bytes), Cow::Owned)
}

/// A document from its row value: the binary encoding, or JSON written earlier.
fn decode_document<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    if codec::is_current(bytes) {
        codec::decode(bytes).map_err(|e| Error::corrupt(what, e))
    } else {
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use sentinel_core::anomaly::{AnomalyContext, AnomalyDetails, AnomalyType};
    use sentinel_core::incident::{IncidentSignal, IncidentStatus};
    use sentinel_core::Severity;
    use serde_json::json;

    fn anomaly(region: Option<&str>) -> Anomaly {
        Anomaly {
            alert_id: "a-1".into(),
            timestamp: "2026-03-14T09:26:53.412Z".into(),
            timestamp_ms: 1_773_480_413_412,
            severity: Severity::High,
            anomaly_type: AnomalyType::LatencySpike,
            service_name: "checkout".into(),
            model: "gpt-4o".into(),
            detection_method: "z_score".into(),
            confidence: 0.612_606_322_013_224_1,
            details: AnomalyDetails {
                metric: "latency_ms".into(),
                value: 61_240.0,
                baseline: 812.345_678_901_234_5,
                threshold: 3_000.1,
                deviation_sigma: 7.123_456_789_012_345,
                additional: [
                    ("baseline_stddev".to_owned(), json!(0.1 + 0.2)),
                    ("signals".to_owned(), json!(18_446_744_073_709_551_615u64)),
                ]
                .into(),
            },
            context: AnomalyContext {
                trace_id: Some("t".into()),
                user_id: None,
                region: region.map(str::to_owned),
                time_window: "last 1000 samples".into(),
                sample_count: 1000,
                additional: [("nested".to_owned(), json!({"a": [1, null, -2.5]}))].into(),
            },
            root_cause: None,
            remediation: vec!["Check the provider".into()],
            related_alerts: vec![],
            runbook_url: None,
            incident_id: Some("i-1".into()),
        }
    }

    #[test]
    fn anomalies_round_trip_in_both_forms_and_json_rows_hash_as_binary_ones() {
        for region in [None, Some("eu-west-1")] {
            let a = anomaly(region);
            let row = encode_anomaly(&a);
            assert!(codec::is_current(&row));
            assert_eq!(decode_anomaly(&row).unwrap(), a);
            let json = serde_json::to_vec(&a).unwrap();
            assert_eq!(decode_anomaly(&json).unwrap(), a, "a row written earlier");
            assert_eq!(
                document_in_current_form(keys::ANOMALIES, &json)[..],
                row[..]
            );
            assert_eq!(document_in_current_form(keys::ANOMALIES, &row)[..], row[..]);
        }
        let bad = b"{not json";
        assert_eq!(document_in_current_form(keys::ANOMALIES, bad)[..], bad[..]);
        assert!(decode_anomaly(bad).is_err());
    }

    #[test]
    fn queued_notifications_deliver_the_same_json_and_json_rows_hash_as_binary_ones() {
        let incident = Incident {
            incident_id: "i-1".into(),
            service_name: "checkout".into(),
            model: "gpt-4o".into(),
            status: IncidentStatus::Open,
            severity: Severity::Medium,
            anomaly_type: AnomalyType::LatencySpike,
            opened_at_ms: 1_773_480_413_412,
            updated_at_ms: 1_773_480_419_000,
            resolved_at_ms: None,
            resolution: None,
            signals: vec![IncidentSignal {
                anomaly_type: AnomalyType::LatencySpike,
                metric: "latency_ms".into(),
                method: "tail_share".into(),
                first_at_ms: 1_773_480_413_412,
                last_at_ms: 1_773_480_419_000,
                value: 4_321.987_654_321,
                baseline: 812.345_678_901_234_5,
                evidence: 9.876_543_210_987_654,
            }],
            calls: 40,
            affected_calls: 12,
            affected_share: 0.3,
            excess_cost_usd: 0.012_345_678_9,
            anomalies: 2,
            related_alerts: vec!["a-1".into()],
            acknowledged: None,
            resolved_by: None,
            silenced_by: None,
            notified_severity: Some(Severity::Medium),
        };
        let notification = Notification::of(
            NotificationKind::Opened,
            &incident,
            1_773_480_419_000,
            Some("https://runbooks.example/sentinel"),
        );
        let json = serde_json::to_string(&notification).unwrap();
        let row = encode_notification(&notification);
        let queued = decode_queued(&row).unwrap();
        assert_eq!(
            queued.json, json,
            "delivered as the earlier version delivered it"
        );
        assert_eq!(queued.alert, notification.alert);
        assert_eq!(queued.event, Some(NotificationKind::Opened));
        assert_eq!(
            decode_queued(json.as_bytes()).unwrap(),
            queued,
            "a row written earlier"
        );
        assert_eq!(
            document_in_current_form(keys::OUTBOX, json.as_bytes())[..],
            row[..]
        );
        let stored = encode_incident(&incident);
        assert_eq!(decode_incident(&stored).unwrap(), incident);
        let earlier = serde_json::to_vec(&incident).unwrap();
        assert_eq!(decode_incident(&earlier).unwrap(), incident);
        assert_eq!(
            document_in_current_form(keys::INCIDENTS, &earlier)[..],
            stored[..]
        );
    }
}
