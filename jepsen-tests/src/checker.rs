//! The checker: from what the clients learned (the ledger), what the cluster holds after
//! healing (telemetry and baselines read through a router) and the history of reads, the
//! anomalies of a run. Pure functions; the run does the I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::alerts::Delivery;
use crate::workload::{api_of, base_id, through_kafka, Outcome};

/// How many ids of each anomaly a verdict lists.
const LISTED: usize = 20;

/// Lists `what` under `anomaly` among the first `LISTED` examples of a verdict part.
fn note(examples: &mut BTreeMap<&'static str, Vec<String>>, anomaly: &'static str, what: String) {
    let listed = examples.entry(anomaly).or_default();
    if listed.len() < LISTED {
        listed.push(what);
    }
}

/// What the final read found.
pub struct Final {
    /// The event id of every telemetry record, as stored.
    pub stored: Vec<String>,
    /// Each key's baseline event count.
    pub baselines: BTreeMap<usize, u64>,
    /// (service, model, event time in ms) of every stored call.
    pub calls: HashSet<(String, String, i64)>,
    /// The event ids the Kafka topic holds when read back from the beginning, with their
    /// partition and offset when the topic could be read.
    pub in_broker: HashMap<String, Option<(i32, i64)>>,
    /// Per partition, the offset ranges (inclusive) a router logged as skipped: it read
    /// past them without the broker delivering a message at any of them.
    pub skipped: BTreeMap<i32, Vec<(i64, i64)>>,
}

impl Final {
    /// Whether a router read past `offset` of `partition` without receiving it.
    fn skipped(&self, partition: i32, offset: i64) -> bool {
        self.skipped.get(&partition).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(from, to)| (from..=to).contains(&offset))
        })
    }
}

/// The events part of a verdict.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Events {
    pub sent: usize,
    pub acknowledged: usize,
    /// Acknowledged events by the API they were sent through (`http`, `grpc`, `kafka`).
    pub acknowledged_via: BTreeMap<String, usize>,
    pub unknown: usize,
    pub rejected: usize,
    /// Unknown events found applied once.
    pub unknown_applied: usize,
    /// Acknowledged, not stored.
    pub lost: usize,
    /// Acknowledged by the Kafka broker to its producer, then missing from the topic when
    /// read back: lost by the broker, before Sentinel could read them (not counted in `lost`).
    pub lost_by_broker: usize,
    /// Acknowledged by the broker and in the topic, never delivered to a router: a router
    /// read past its offset without receiving it (not counted in `lost`).
    pub skipped_by_broker: usize,
    /// Stored more than once (a derived id counts as another copy).
    pub applied_twice: usize,
    /// Stored, never sent.
    pub invented: usize,
    /// Rejected yet stored.
    pub rejected_applied: usize,
    /// Keys whose baseline counted other than the telemetry stored.
    pub baseline_mismatches: usize,
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Events {
    pub fn valid(&self) -> bool {
        self.lost
            + self.applied_twice
            + self.invented
            + self.rejected_applied
            + self.baseline_mismatches
            == 0
    }
}

/// Checks the set workload: every acknowledged event stored exactly once, unknown ones at
/// most once, rejected and never-sent ones not at all, and each key's baseline counting
/// exactly the events stored for it.
pub fn check_events(ledger: &HashMap<String, (usize, Outcome)>, found: &Final) -> Events {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    let mut verdict = Events {
        sent: ledger.len(),
        ..Events::default()
    };
    for stored in &found.stored {
        *copies.entry(base_id(stored)).or_default() += 1;
    }
    let mut stored_per_key: BTreeMap<usize, u64> = BTreeMap::new();
    for (id, &n) in &copies {
        match ledger.get(*id) {
            None => {
                verdict.invented += 1;
                note(&mut verdict.examples, "invented", id.to_string());
            }
            Some((key, _)) => *stored_per_key.entry(*key).or_default() += n as u64,
        }
        if n > 1 {
            verdict.applied_twice += 1;
            note(&mut verdict.examples, "applied_twice", id.to_string());
        }
    }
    let mut ids: Vec<(&String, &(usize, Outcome))> = ledger.iter().collect();
    ids.sort_by_key(|(id, _)| *id);
    for (id, (_, outcome)) in ids {
        let n = copies.get(id.as_str()).copied().unwrap_or(0);
        match outcome {
            Outcome::Acknowledged => {
                verdict.acknowledged += 1;
                *verdict
                    .acknowledged_via
                    .entry(api_of(id).to_owned())
                    .or_default() += 1;
                let in_broker = found.in_broker.get(id.as_str());
                // Its partition and offset, when the topic holds it and could be read.
                let at = in_broker.copied().flatten();
                if n == 0 && through_kafka(id) && in_broker.is_none() {
                    verdict.lost_by_broker += 1;
                    note(&mut verdict.examples, "lost_by_broker", id.to_string());
                } else if n == 0 && at.is_some_and(|(p, o)| found.skipped(p, o)) {
                    verdict.skipped_by_broker += 1;
                    note(&mut verdict.examples, "skipped_by_broker", id.to_string());
                } else if n == 0 {
                    verdict.lost += 1;
                    let example = match at {
                        Some((partition, offset)) => {
                            format!("{id} (partition {partition} offset {offset})")
                        }
                        None => id.to_string(),
                    };
                    note(&mut verdict.examples, "lost", example);
                }
            }
            Outcome::Unknown | Outcome::Pending => {
                verdict.unknown += 1;
                verdict.unknown_applied += usize::from(n > 0);
            }
            Outcome::Rejected => {
                verdict.rejected += 1;
                if n > 0 {
                    verdict.rejected_applied += 1;
                    note(&mut verdict.examples, "rejected_applied", id.to_string());
                }
            }
        }
    }
    let keys: BTreeSet<usize> = stored_per_key
        .keys()
        .chain(found.baselines.keys())
        .copied()
        .collect();
    for key in keys {
        let (stored, counted) = (
            stored_per_key.get(&key).copied().unwrap_or(0),
            found.baselines.get(&key).copied().unwrap_or(0),
        );
        if stored != counted {
            verdict.baseline_mismatches += 1;
            let what = format!("key {key}: {stored} stored, baseline counted {counted}");
            note(&mut verdict.examples, "baseline_mismatch", what);
        }
    }
    verdict
}

/// The reads part of a verdict.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Reads {
    pub ok: usize,
    pub failed_retryable: usize,
    /// Failed with an error a client cannot act on (anything but 503/504, timeouts, refusals).
    pub failed_other: usize,
    /// Answers missing an event acknowledged before the read began.
    pub stale: usize,
    /// Answers holding an event never sent.
    pub invented: usize,
    /// Line numbers (1-based) of the first anomalous completions in the history.
    pub lines: Vec<usize>,
}

impl Reads {
    pub fn valid(&self) -> bool {
        self.failed_other + self.stale + self.invented == 0
    }
}

/// Checks every read of the history (JSON lines): each either failed retryably or held
/// everything acknowledged before it and nothing invented.
pub fn check_reads(history: &str) -> Reads {
    let mut reads = Reads::default();
    for (number, line) in history.lines().enumerate() {
        let Ok(op) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if op["f"] != "read" {
            continue;
        }
        let bad = match op["type"].as_str() {
            Some("ok") => {
                reads.ok += 1;
                let stale = op["missing"].as_array().is_some_and(|m| !m.is_empty());
                let invented = op["invented"].as_array().is_some_and(|m| !m.is_empty());
                reads.stale += usize::from(stale);
                reads.invented += usize::from(invented);
                stale || invented
            }
            Some("fail") if op["retryable"] == true => {
                reads.failed_retryable += 1;
                false
            }
            Some("fail") => {
                reads.failed_other += 1;
                true
            }
            _ => false,
        };
        if bad && reads.lines.len() < LISTED {
            reads.lines.push(number + 1);
        }
    }
    reads
}

/// The history lines that show what happened to event `id`: its invocations and
/// completions, and every fault from its first invocation to its last completion.
pub fn slice_for(history: &str, id: &str) -> Vec<String> {
    let quoted = format!("\"{id}\"");
    let lines: Vec<&str> = history.lines().collect();
    let mentions: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(&quoted))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first), Some(&last)) = (mentions.first(), mentions.last()) else {
        return Vec::new();
    };
    (first..=last)
        .filter(|i| mentions.contains(i) || lines[*i].contains("\"process\":\"nemesis\""))
        .map(|i| lines[i].to_owned())
        .collect()
}

/// The alerts part of a verdict.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Alerts {
    /// Incidents the cluster recorded.
    pub incidents: usize,
    /// Distinct notifications delivered (by `alert_id`, any receiver).
    pub notifications: usize,
    /// Deliveries per receiver, repeats included.
    pub deliveries: BTreeMap<&'static str, usize>,
    /// Deliveries of a notification a receiver already had (allowed: at least once).
    pub repeats: usize,
    /// Notifications delivered twice with different content under one `alert_id`.
    pub conflicting: usize,
    /// An incident's `opened` (or, once resolved, `resolved`) notification missing at a receiver.
    pub undelivered: usize,
    /// Notifications of an incident the cluster has no record of.
    pub invented: usize,
    /// Notifications whose call (key and event time) is not among the stored events.
    pub without_applied_call: usize,
    /// Notifications still in the shards' outboxes when the run ended (none: unread).
    pub outbox_pending: Option<i64>,
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Alerts {
    pub fn valid(&self) -> bool {
        self.conflicting + self.undelivered + self.invented + self.without_applied_call == 0
            && self.outbox_pending == Some(0)
    }
}

/// Checks the alerts: every incident's `opened` notification (and `resolved`, once it
/// resolved) reached every receiver in `sinks`; repeats carry the same body; every
/// notification belongs to a recorded incident and to a call that was applied.
pub fn check_alerts(
    incidents: &[Value],
    deliveries: &[Delivery],
    sinks: &[&'static str],
    calls: &HashSet<(String, String, i64)>,
) -> Alerts {
    let mut alerts = Alerts {
        incidents: incidents.len(),
        ..Alerts::default()
    };
    let mut bodies: HashMap<(&str, &str), &[u8]> = HashMap::new();
    let mut first: HashMap<&str, Value> = HashMap::new();
    for delivery in deliveries {
        *alerts.deliveries.entry(delivery.sink).or_default() += 1;
        match bodies.insert((delivery.sink, &delivery.alert_id), &delivery.body) {
            Some(earlier) if earlier != delivery.body.as_slice() => {
                alerts.conflicting += 1;
                note(
                    &mut alerts.examples,
                    "conflicting",
                    delivery.alert_id.clone(),
                );
            }
            Some(_) => alerts.repeats += 1,
            None => {}
        }
        if !first.contains_key(delivery.alert_id.as_str()) {
            let body = serde_json::from_slice(&delivery.body).unwrap_or(Value::Null);
            first.insert(&delivery.alert_id, body);
        }
    }
    alerts.notifications = first.len();
    let recorded: HashMap<&str, &Value> = incidents
        .iter()
        .filter_map(|i| Some((i["incident_id"].as_str()?, i)))
        .collect();
    // (sink, incident, event) of every delivery.
    let mut delivered: HashSet<(&str, &str, &str)> = HashSet::new();
    for delivery in deliveries {
        let body = &first[delivery.alert_id.as_str()];
        let (Some(incident), Some(event)) = (body["incident_id"].as_str(), body["event"].as_str())
        else {
            continue;
        };
        delivered.insert((delivery.sink, incident, event));
    }
    for (alert_id, body) in &first {
        let incident = body["incident_id"].as_str().unwrap_or_default();
        if !recorded.contains_key(incident) {
            alerts.invented += 1;
            note(
                &mut alerts.examples,
                "invented",
                format!("{alert_id} (incident {incident})"),
            );
        }
        let manual = body["incident"]["resolution"] == "manual";
        let call = (
            body["service_name"].as_str().unwrap_or_default().to_owned(),
            body["model"].as_str().unwrap_or_default().to_owned(),
            body["timestamp_ms"].as_i64().unwrap_or_default(),
        );
        if !manual && !calls.contains(&call) {
            alerts.without_applied_call += 1;
            note(
                &mut alerts.examples,
                "without_applied_call",
                format!("{alert_id} ({} {} at {} ms)", call.0, call.1, call.2),
            );
        }
    }
    for (id, incident) in &recorded {
        let mut expected = vec!["opened"];
        if incident["status"] == "resolved" {
            expected.push("resolved");
        }
        for sink in sinks {
            for event in &expected {
                if !delivered.contains(&(*sink, *id, *event)) {
                    alerts.undelivered += 1;
                    note(
                        &mut alerts.examples,
                        "undelivered",
                        format!("{event} of incident {id} at {sink}"),
                    );
                }
            }
        }
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(entries: &[(&str, usize, Outcome)]) -> HashMap<String, (usize, Outcome)> {
        entries
            .iter()
            .map(|(id, key, o)| (id.to_string(), (*key, *o)))
            .collect()
    }

    #[test]
    fn a_clean_run_is_valid_and_unknown_events_may_be_applied_once() {
        let sent = ledger(&[
            ("a", 0, Outcome::Acknowledged),
            ("b", 1, Outcome::Unknown),
            ("c", 1, Outcome::Unknown),
        ]);
        let found = Final {
            stored: vec!["a".into(), "b".into()],
            baselines: [(0, 1), (1, 1)].into(),
            calls: HashSet::new(),
            in_broker: HashMap::new(),
            skipped: BTreeMap::new(),
        };
        let verdict = check_events(&sent, &found);
        assert!(verdict.valid(), "{verdict:?}");
        assert_eq!(
            (
                verdict.acknowledged,
                verdict.unknown,
                verdict.unknown_applied
            ),
            (1, 2, 1)
        );
    }

    #[test]
    fn lost_doubled_invented_and_miscounted_events_are_each_anomalies() {
        let sent = ledger(&[
            ("lost", 0, Outcome::Acknowledged),
            ("twice", 0, Outcome::Acknowledged),
            ("refused", 1, Outcome::Rejected),
            ("kafka-0-9", 2, Outcome::Acknowledged),
            ("kafka-0-10", 2, Outcome::Acknowledged),
            ("kafka-0-11", 2, Outcome::Acknowledged),
        ]);
        let stored = ["twice", "twice~00ff00ff00ff00ff", "ghost", "refused"]
            .map(String::from)
            .to_vec();
        let found = Final {
            stored,
            baselines: [(0, 2), (1, 2)].into(),
            calls: HashSet::new(),
            in_broker: [
                ("kafka-0-10".to_owned(), Some((1, 40))),
                ("kafka-0-11".to_owned(), Some((1, 44))),
            ]
            .into(),
            skipped: [(1, vec![(39, 41)])].into(),
        };
        let verdict = check_events(&sent, &found);
        assert_eq!(
            (
                verdict.lost,
                verdict.applied_twice,
                verdict.invented,
                verdict.rejected_applied,
                verdict.baseline_mismatches
            ),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(
            verdict.examples["lost"],
            ["kafka-0-11 (partition 1 offset 44)", "lost"]
        );
        assert_eq!(verdict.lost_by_broker, 1);
        assert_eq!(verdict.examples["skipped_by_broker"], ["kafka-0-10"]);
        assert!(!verdict.valid());
    }

    #[test]
    fn reads_fail_retryably_or_hold_what_was_acknowledged_before_them() {
        let history = [
            r#"{"t":1,"process":"read","type":"ok","f":"read","missing":[],"invented":[]}"#,
            r#"{"t":2,"process":"read","type":"fail","f":"read","retryable":true}"#,
            r#"{"t":3,"process":"read","type":"ok","f":"read","missing":["x"],"invented":[]}"#,
            r#"{"t":4,"process":"read","type":"fail","f":"read","retryable":false}"#,
        ]
        .join("\n");
        let reads = check_reads(&history);
        assert_eq!(
            (
                reads.ok,
                reads.failed_retryable,
                reads.failed_other,
                reads.stale
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(reads.lines, [3, 4]);
    }

    #[test]
    fn the_slice_of_an_event_holds_its_operations_and_the_faults_between_them() {
        let history = [
            r#"{"process":"nemesis","f":"kill"}"#,
            r#"{"process":"http-0","type":"invoke","ids":["e1"]}"#,
            r#"{"process":"nemesis","f":"partition"}"#,
            r#"{"process":"http-0","type":"info","failed":["e1"]}"#,
            r#"{"process":"nemesis","f":"heal"}"#,
        ]
        .join("\n");
        assert_eq!(slice_for(&history, "e1").len(), 3);
    }

    fn notification(alert: &str, incident: &str, event: &str, at: i64) -> Vec<u8> {
        let body = serde_json::json!({"alert_id": alert, "incident_id": incident, "event": event,
            "service_name": "svc-0", "model": "gpt-4o", "timestamp_ms": at, "incident": {"resolution": null}});
        body.to_string().into_bytes()
    }

    fn delivery(sink: &'static str, alert: &str, body: Vec<u8>) -> Delivery {
        Delivery {
            sink,
            alert_id: alert.into(),
            body,
        }
    }

    #[test]
    fn alerts_delivered_at_least_once_everywhere_with_stable_ids_are_valid() {
        let incidents = [serde_json::json!({"incident_id": "i1", "status": "resolved"})];
        let (opened, resolved) = (
            notification("a1", "i1", "opened", 10),
            notification("a2", "i1", "resolved", 20),
        );
        let deliveries = [
            delivery("webhook", "a1", opened.clone()),
            delivery("rabbitmq", "a1", opened.clone()),
            delivery("rabbitmq", "a1", opened),
            delivery("webhook", "a2", resolved.clone()),
            delivery("rabbitmq", "a2", resolved),
        ];
        let calls = [
            ("svc-0".to_owned(), "gpt-4o".to_owned(), 10),
            ("svc-0".to_owned(), "gpt-4o".to_owned(), 20),
        ]
        .into();
        let mut alerts = check_alerts(&incidents, &deliveries, &["webhook", "rabbitmq"], &calls);
        alerts.outbox_pending = Some(0);
        assert!(alerts.valid(), "{alerts:?}");
        assert_eq!((alerts.notifications, alerts.repeats), (2, 1));
    }

    #[test]
    fn missing_conflicting_invented_and_causeless_alerts_are_each_anomalies() {
        let incidents = [serde_json::json!({"incident_id": "i1", "status": "open"})];
        let deliveries = [
            delivery("webhook", "a1", notification("a1", "i1", "opened", 10)),
            delivery("webhook", "a1", notification("a1", "i1", "opened", 11)),
            delivery("webhook", "a9", notification("a9", "ghost", "opened", 10)),
        ];
        let calls = [("svc-0".to_owned(), "gpt-4o".to_owned(), 10)].into();
        let alerts = check_alerts(&incidents, &deliveries, &["webhook", "rabbitmq"], &calls);
        assert_eq!(
            (alerts.conflicting, alerts.undelivered, alerts.invented),
            (1, 1, 1)
        );
        let causeless = check_alerts(&incidents, &deliveries[..1], &["webhook"], &HashSet::new());
        assert_eq!(causeless.without_applied_call, 1);
        assert!(!causeless.valid());
    }
}
