//! `docs/notification.schema.json` describes the notifications a shard really queues: the
//! opened, escalated and resolved ones of a sustained latency spike, and the one of an
//! incident resolved by hand, each checked by a JSON Schema (draft 2020-12) validator.

use jsonschema::Validator;
use sentinel_core::incident::{Actor, Resolution};
use sentinel_core::{
    DetectionConfig, Event, Metric, MetricValues, Notification, NotificationKind, ShardDetector,
};
use serde_json::Value;

/// The schema, relative to this crate.
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/notification.schema.json"
);

/// The schema file, checked against the draft 2020-12 meta-schema, as a validator that also
/// checks formats (`date-time`).
fn validator() -> Validator {
    let text = std::fs::read_to_string(SCHEMA).expect("docs/notification.schema.json is readable");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the schema declares draft 2020-12"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema is not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

/// Every way `payload` breaks the schema, one line each.
fn violations(validator: &Validator, payload: &Value) -> Vec<String> {
    validator
        .iter_errors(payload)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Calls of one key, 10 a second, latency log-normal around 800 ms, from a fixed seed.
struct Traffic {
    state: u64,
    at: i64,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            state: 0x5eed,
            at: 1_767_600_000_000,
        }
    }

    /// A uniform draw in (0, 1) (SplitMix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }

    /// The next call on `service`, its latency multiplied by `factor`.
    fn next(&mut self, service: &str, factor: f64) -> (Event, MetricValues) {
        self.at += 100;
        let latency = 800.0 * (0.3 * self.normal()).exp() * factor;
        let prompt = (500.0 * (0.2 * self.normal()).exp()).round();
        let completion = (200.0 * (0.2 * self.normal()).exp()).round();
        let event = Event {
            timestamp_ms: self.at,
            service: service.into(),
            model: "gpt-4o".into(),
            latency_ms: latency,
            ..Event::default()
        };
        let mut values = MetricValues::default();
        values.set(Metric::LatencyMs, Some(latency));
        values.set(Metric::PromptTokens, Some(prompt));
        values.set(Metric::CompletionTokens, Some(completion));
        values.set(Metric::TotalTokens, Some(prompt + completion));
        values.set(Metric::CostUsd, Some(prompt * 2.5e-6 + completion * 1e-5));
        (event, values)
    }

    /// `n` calls on `service`, every `every`-th one `factor` times slower; the
    /// notifications they queued.
    fn run(
        &mut self,
        detector: &mut ShardDetector,
        service: &str,
        n: usize,
        (factor, every): (f64, usize),
    ) -> Vec<Notification> {
        (0..n)
            .flat_map(|i| {
                let slow = if i % every == 0 { factor } else { 1.0 };
                let (event, values) = self.next(service, slow);
                detector.observe(&event, &values).notifications
            })
            .collect()
    }
}

/// Calls at their usual latency.
const STEADY: (f64, usize) = (1.0, 1);

/// A detector whose incidents resolve after 10 s of quiet calls.
fn detector() -> ShardDetector {
    let mut config = DetectionConfig::default();
    config.incidents.resolve_after_ms = 10_000;
    ShardDetector::new(3, config).unwrap()
}

#[test]
fn notifications_of_a_sustained_latency_spike_match_the_schema() {
    let validator = validator();
    let mut detector = detector();
    let mut traffic = Traffic::new();
    assert!(traffic.run(&mut detector, "chat", 1500, STEADY).is_empty());
    // One call in four slow, then every call: the incident opens, then escalates.
    let mut sent = traffic.run(&mut detector, "chat", 200, (10.0, 4));
    sent.extend(traffic.run(&mut detector, "chat", 200, (10.0, 1)));
    sent.extend(traffic.run(&mut detector, "chat", 1500, STEADY));

    let events: Vec<NotificationKind> = sent.iter().map(|n| n.event).collect();
    assert_eq!(
        events.first(),
        Some(&NotificationKind::Opened),
        "{events:?}"
    );
    assert!(events.contains(&NotificationKind::Escalated), "{events:?}");
    assert_eq!(
        events.last(),
        Some(&NotificationKind::Resolved),
        "{events:?}"
    );
    let last = &sent[sent.len() - 1].incident;
    assert_eq!(last.resolution, Some(Resolution::Recovered));
    assert!(
        sent.iter()
            .all(|n| n.incident.incident_id == last.incident_id),
        "one incident"
    );

    for notification in &sent {
        let payload = serde_json::to_value(notification).unwrap();
        let problems = violations(&validator, &payload);
        assert!(
            problems.is_empty(),
            "{} notification breaks the schema:\n{}\n{payload:#}",
            notification.event.name(),
            problems.join("\n")
        );
    }
}

#[test]
fn a_notification_of_an_incident_resolved_by_hand_matches_the_schema() {
    let validator = validator();
    let mut config = DetectionConfig::default();
    config.incidents.latency_cap_ms = Some(10_000.0);
    let mut detector = ShardDetector::new(3, config).unwrap();
    let mut traffic = Traffic::new();
    traffic.run(&mut detector, "search", 50, STEADY);
    let opened = traffic.run(&mut detector, "search", 1, (100.0, 1));
    assert_eq!(opened.len(), 1, "a call over the cap opens an incident");
    let incident_id = opened[0].incident.incident_id.clone();

    let actor = Actor {
        by: "oncall@example.com".into(),
        at_ms: traffic.at + 5_000,
        comment: "provider confirmed the outage is over".into(),
    };
    let (change, notification) = detector.resolve_incident(&incident_id, actor).unwrap();
    assert_eq!(change.incident.resolution, Some(Resolution::Manual));
    let notification = notification.expect("receivers told of the opening are told of the end");
    assert_eq!(notification.event, NotificationKind::Resolved);
    let payload = serde_json::to_value(&notification).unwrap();
    let problems = violations(&validator, &payload);
    assert!(problems.is_empty(), "{}\n{payload:#}", problems.join("\n"));
}

/// A change that makes a payload one the schema must refuse.
type Breaks = fn(&mut Value);

#[test]
fn payloads_the_schema_does_not_describe_are_refused() {
    let validator = validator();
    let mut config = DetectionConfig::default();
    config.incidents.latency_cap_ms = Some(10_000.0);
    let mut detector = ShardDetector::new(3, config).unwrap();
    let mut traffic = Traffic::new();
    let opened = traffic.run(&mut detector, "support", 1, (100.0, 1));
    let payload = serde_json::to_value(&opened[0]).unwrap();
    assert!(violations(&validator, &payload).is_empty());

    let broken: [(&str, Breaks); 6] = [
        ("an unknown event", |p| p["event"] = "reopened".into()),
        ("another version", |p| p["schema_version"] = 1.into()),
        ("no incident", |p| {
            p.as_object_mut().unwrap().remove("incident");
        }),
        ("an opened event of a resolved incident", |p| {
            p["incident"]["status"] = "resolved".into()
        }),
        ("a resolved event without a resolution", |p| {
            p["event"] = "resolved".into();
            p["incident"]["status"] = "resolved".into();
            p["incident"]["resolved_at_ms"] = 1.into();
        }),
        ("a timestamp that is not RFC 3339", |p| {
            p["timestamp"] = "yesterday".into()
        }),
    ];
    for (what, breaks) in broken {
        let mut wrong = payload.clone();
        breaks(&mut wrong);
        assert!(
            !violations(&validator, &wrong).is_empty(),
            "{what} passes the schema"
        );
    }
}
