//! One ingestion request, REST or gRPC alike: its events admitted one document at a time
//! within the per-request limits, the accepted ones forwarded to their shards, and a
//! report per event listing at most `ingest.max_listed_problems` problems, with a count
//! of the rest. A request's memory stays a small multiple of its body: no more than
//! `ingest.max_events_per_request` events are read, and unlisted problems are dropped as
//! soon as they are found.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use sentinel_core::{Event, FieldError, Intake};
use sentinel_proto::ErrorCode;
use serde::Serialize;

use crate::body::{BodyError, JsonDocument};
use crate::error::http_status;
use crate::forward::{Delivery, Forwarder, Outgoing};

/// One parsed event, or every problem with it.
pub type EventResult = Result<Event, Vec<FieldError>>;

/// How much one ingestion request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most events in one request; a request with more is refused whole.
    pub max_events: usize,
    /// Most problems one answer lists; the rest are counted.
    pub max_listed_problems: usize,
}

/// Event ids for events that arrive without one: a prefix random to this router process
/// and a counter, so no two routers, nor two runs of one, hand out the same id.
pub struct IdGenerator {
    prefix: String,
    next: AtomicU64,
}

impl Default for IdGenerator {
    fn default() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = (std::process::id(), std::time::SystemTime::now());
        IdGenerator {
            prefix: format!("rt-{:016x}", RandomState::new().hash_one(seed)),
            next: AtomicU64::new(0),
        }
    }
}

impl IdGenerator {
    /// A fresh id.
    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The outcome of one event of a request.
#[derive(Debug, Serialize)]
pub struct EventReport {
    /// Position of the event in the request.
    pub index: usize,
    /// Its `event_id` (the router's own when the event came without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `pending` until forwarded, then `applied`, `duplicate`, `rejected` or `failed`.
    pub status: &'static str,
    /// The derived id an `applied` event is stored under, when an event of other content
    /// had taken its `event_id` (the idempotency rule in docs/api.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_as: Option<String>,
    /// Why it was rejected, field by field (only the problems the answer lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How many more problems an answer lists, and how many it leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemBudget {
    left: usize,
    omitted: usize,
}

impl ProblemBudget {
    /// A budget listing at most `max` problems.
    pub fn new(max: usize) -> ProblemBudget {
        ProblemBudget {
            left: max,
            omitted: 0,
        }
    }

    /// The problems of one event that the answer lists; the others are only counted.
    pub fn take(&mut self, mut problems: Vec<FieldError>) -> Vec<FieldError> {
        let keep = problems.len().min(self.left);
        self.omitted += problems.len() - keep;
        self.left -= keep;
        problems.truncate(keep);
        problems.shrink_to_fit();
        problems
    }

    /// How many problems were left out.
    pub fn omitted(&self) -> usize {
        self.omitted
    }
}

/// The events of one request as they are read: what to forward, and a report per event.
pub struct Admission<'a> {
    intake: &'a Intake,
    ids: &'a IdGenerator,
    shards: u32,
    max_events: usize,
    admitted: Admitted,
}

/// A request's admitted events: the accepted ones to forward and a report per event.
pub struct Admitted {
    /// The accepted events, in request order, to send to their shards.
    pub outgoing: Vec<Outgoing>,
    /// One per event of the request; the accepted ones are `pending`.
    pub reports: Vec<EventReport>,
    /// The problems still to be listed and those left out.
    pub problems: ProblemBudget,
}

impl<'a> Admission<'a> {
    /// An empty request of a cluster of `shards` shards, checked by `intake`.
    pub fn new(
        intake: &'a Intake,
        ids: &'a IdGenerator,
        shards: u32,
        limits: RequestLimits,
    ) -> Admission<'a> {
        Admission {
            intake,
            ids,
            shards,
            max_events: limits.max_events,
            admitted: Admitted {
                outgoing: Vec::new(),
                reports: Vec::new(),
                problems: ProblemBudget::new(limits.max_listed_problems),
            },
        }
    }

    /// Admits the events of one document, or notes why it is not JSON; refuses the
    /// request once it holds more than the most events one request may.
    pub fn document(&mut self, document: JsonDocument) -> Result<(), BodyError> {
        let events = match document {
            Ok(value) => self.intake.prepare_document(&value),
            Err(problem) => vec![Err(vec![FieldError::new("", problem)])],
        };
        self.events(events)
    }

    /// Admits parsed events, refusing the request once it holds more than the most
    /// events one request may.
    pub fn events(&mut self, events: Vec<EventResult>) -> Result<(), BodyError> {
        if self.admitted.reports.len() + events.len() > self.max_events {
            return Err(BodyError::TooManyEvents {
                limit: self.max_events,
            });
        }
        for event in events {
            self.event(event);
        }
        Ok(())
    }

    fn event(&mut self, event: EventResult) {
        let index = self.admitted.reports.len();
        let report = match event {
            Ok(mut event) => {
                // An id of the router's own makes a retried batch idempotent on the shard.
                event.event_id.get_or_insert_with(|| self.ids.next());
                self.admitted
                    .outgoing
                    .push(Outgoing::new(&event, self.shards, None));
                EventReport {
                    index,
                    event_id: event.event_id,
                    status: "pending",
                    applied_as: None,
                    errors: Vec::new(),
                    message: None,
                }
            }
            Err(errors) => EventReport {
                index,
                event_id: None,
                status: "rejected",
                applied_as: None,
                errors: self.admitted.problems.take(errors),
                message: None,
            },
        };
        self.admitted.reports.push(report);
    }

    /// The admitted events.
    pub fn finish(self) -> Admitted {
        self.admitted
    }
}

impl Admitted {
    /// Forwards the accepted events and records what became of each.
    pub async fn forward(mut self, forwarder: &Forwarder) -> Admitted {
        let outgoing = std::mem::take(&mut self.outgoing);
        let deliveries = forwarder.forward(None, outgoing).await;
        let pending = self.reports.iter_mut().filter(|r| r.status == "pending");
        for (report, delivery) in pending.zip(deliveries) {
            report.status = match delivery {
                Delivery::Applied => "applied",
                Delivery::AppliedAs(derived) => {
                    report.applied_as = Some(derived);
                    "applied"
                }
                Delivery::DuplicateOffset | Delivery::DuplicateEventId => "duplicate",
                Delivery::Rejected(errors) => {
                    report.errors = self.problems.take(errors);
                    "rejected"
                }
                Delivery::Failed(message) => {
                    report.message = Some(message);
                    "failed"
                }
            };
        }
        self
    }

    /// How many events ended with `status`.
    pub fn tally(&self, status: &str) -> usize {
        self.reports.iter().filter(|r| r.status == status).count()
    }
}

/// One entry of an answer's `details`: a problem of the event at `index`.
#[derive(Debug, Serialize)]
pub struct Detail<'a> {
    /// Position of the event in the request.
    pub index: usize,
    /// The field at fault (absent for an event that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
    /// What is wrong.
    pub problem: &'a str,
}

/// The verdict of an ingestion answer: unless every event was accepted, the error code,
/// message and details.
pub struct Verdict<'a> {
    /// `{code, message, details}` of an answer that is not 200.
    pub error: Option<(ErrorCode, String, Vec<Detail<'a>>)>,
}

impl Verdict<'_> {
    /// 200, 400 (some rejected) or 503 (some failed): the status of the error's code.
    pub fn status(&self) -> StatusCode {
        self.error
            .as_ref()
            .map_or(StatusCode::OK, |(code, _, _)| http_status(*code))
    }
}

/// The status and error of the answer to `admitted` (forwarded): 503 when some events got
/// no acknowledgement, otherwise 400 when some were rejected, otherwise 200. `details`
/// holds at most `max_details` entries.
pub fn verdict(admitted: &Admitted, max_details: usize) -> Verdict<'_> {
    let total = admitted.reports.len();
    let (failed, rejected) = (admitted.tally("failed"), admitted.tally("rejected"));
    let omitted = admitted.problems.omitted();
    if failed > 0 {
        let details = admitted
            .reports
            .iter()
            .filter_map(|r| {
                let problem = r.message.as_deref()?;
                Some(Detail {
                    index: r.index,
                    field: None,
                    problem,
                })
            })
            .take(max_details)
            .collect();
        let message = format!(
            "{failed} of {total} events got no acknowledgement (their shard is unavailable); send them again"
        );
        return Verdict {
            error: Some((ErrorCode::Unavailable, message, details)),
        };
    }
    if rejected > 0 {
        let details = admitted
            .reports
            .iter()
            .flat_map(|r| {
                r.errors.iter().map(|e| Detail {
                    index: r.index,
                    field: Some(&e.field),
                    problem: &e.problem,
                })
            })
            .collect();
        let mut message = rejected_message(rejected, total);
        if omitted > 0 {
            message += &match omitted {
                1 => "; 1 more problem is not listed".to_owned(),
                _ => format!("; {omitted} more problems are not listed"),
            };
        }
        return Verdict {
            error: Some((ErrorCode::InvalidEvents, message, details)),
        };
    }
    Verdict { error: None }
}

/// What the answer says of `rejected` events of `total`: no "others" when there are none,
/// and the verb agrees with the count.
fn rejected_message(rejected: usize, total: usize) -> String {
    let accepted = total - rejected;
    match (rejected, accepted) {
        (1, 0) => "the event was rejected".to_owned(),
        (_, 0) => format!("all {total} events were rejected"),
        (1, 1) => format!("1 of {total} events was rejected; the other was accepted"),
        (1, _) => format!("1 of {total} events was rejected; the other {accepted} were accepted"),
        (_, 1) => format!("{rejected} of {total} events were rejected; the other was accepted"),
        _ => format!(
            "{rejected} of {total} events were rejected; the other {accepted} were accepted"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use proptest::prelude::*;
    use sentinel_core::{RedactionConfig, ValidationBounds};

    fn intake() -> Intake {
        Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap()
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_events: 100,
        max_listed_problems: 5,
    };

    /// The admitted events of a body read as `ndjson` says.
    fn admit(body: &[u8], ndjson: bool, limits: RequestLimits) -> Result<Admitted, BodyError> {
        let (intake, ids) = (intake(), IdGenerator::default());
        let mut admission = Admission::new(&intake, &ids, 8, limits);
        body::for_each_document(body, ndjson, |document| admission.document(document))?;
        Ok(admission.finish())
    }

    #[test]
    fn generated_event_ids_never_repeat_within_or_across_routers() {
        let (a, b) = (IdGenerator::default(), IdGenerator::default());
        let ids: std::collections::BTreeSet<String> =
            (0..100).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 200);
    }

    #[test]
    fn every_event_of_a_body_gets_a_slot() {
        let good = r#"{"service_name": "chat", "model_name": "m", "latency_ms": 5, "timestamp": "2026-01-01T00:00:00Z"}"#;
        let body = format!("{good}\n{{oops\n[1]\n{good}\n");
        let admitted = admit(body.as_bytes(), false, LIMITS).unwrap();
        let statuses: Vec<&str> = admitted.reports.iter().map(|r| r.status).collect();
        assert_eq!(statuses, ["pending", "rejected", "rejected", "pending"]);
        assert_eq!(admitted.outgoing.len(), 2);
        assert!(
            admitted.reports[0].event_id.is_some(),
            "an id of the router's own"
        );
    }

    #[test]
    fn a_request_with_too_many_events_is_refused_before_it_is_read_whole() {
        let limits = RequestLimits {
            max_events: 3,
            max_listed_problems: 5,
        };
        for (body, ndjson) in [
            ("[{},{},{},{}]", false),
            ("{}\n{}\n{}\n{}\n", false),
            ("{}\n{}\n{}\n{}\n", true),
        ] {
            assert_eq!(
                admit(body.as_bytes(), ndjson, limits).err(),
                Some(BodyError::TooManyEvents { limit: 3 }),
                "{body}"
            );
        }
        assert_eq!(
            admit(b"[{},{},{}]", false, limits).unwrap().reports.len(),
            3
        );
    }

    #[test]
    fn an_answer_lists_at_most_the_budget_of_problems_and_counts_the_rest() {
        let admitted = admit(b"[{},{},{},{},{},{}]", false, LIMITS).unwrap();
        let listed: usize = admitted.reports.iter().map(|r| r.errors.len()).sum();
        assert_eq!(listed, 5);
        assert!(admitted.problems.omitted() > 0);
        assert_eq!(
            admitted.reports.len(),
            6,
            "every event still has its report"
        );
        let verdict = verdict(&admitted, 5);
        assert_eq!(verdict.status(), StatusCode::BAD_REQUEST);
        let (code, message, details) = verdict.error.unwrap();
        assert_eq!(code, ErrorCode::InvalidEvents);
        assert_eq!(details.len(), 5);
        assert!(
            message.ends_with(&format!(
                "{} more problems are not listed",
                admitted.problems.omitted()
            )),
            "{message}"
        );
    }

    #[test]
    fn the_answer_status_follows_the_worst_event() {
        let report = |index, status: &'static str| EventReport {
            index,
            event_id: None,
            status,
            applied_as: None,
            errors: if status == "rejected" {
                vec![FieldError::new("latency_ms", "below 0.1")]
            } else {
                Vec::new()
            },
            message: (status == "failed").then(|| "shard 3 is unavailable".to_owned()),
        };
        let status = |statuses: [&'static str; 2]| {
            let admitted = Admitted {
                outgoing: Vec::new(),
                reports: vec![report(0, statuses[0]), report(1, statuses[1])],
                problems: ProblemBudget::new(10),
            };
            verdict(&admitted, 10).status()
        };
        assert_eq!(status(["applied", "duplicate"]), StatusCode::OK);
        assert_eq!(status(["applied", "rejected"]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(["failed", "rejected"]),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn the_rejection_message_counts_in_plain_words() {
        for (rejected, total, message) in [
            (1, 1, "the event was rejected"),
            (3, 3, "all 3 events were rejected"),
            (1, 2, "1 of 2 events was rejected; the other was accepted"),
            (
                1,
                5,
                "1 of 5 events was rejected; the other 4 were accepted",
            ),
            (2, 3, "2 of 3 events were rejected; the other was accepted"),
            (
                2,
                5,
                "2 of 5 events were rejected; the other 3 were accepted",
            ),
        ] {
            assert_eq!(rejected_message(rejected, total), message);
        }
    }

    proptest! {
        #[test]
        fn body_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), ndjson: bool) {
            let _ = admit(&body, ndjson, LIMITS);
            let _ = body::decode(Some("gzip"), &body, 1 << 16);
        }

        #[test]
        fn json_like_bodies_never_panic(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just(r#"{"service_name":"a","model":"m","latency_ms":1,"timestamp":"2026-01-01T00:00:00Z"}"#.to_string()),
                    Just(r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[]}]}]}]}"#.to_string()),
                    Just("[".to_string()), Just("]".to_string()), Just("null".to_string()),
                    "[{}\\[\\]\",:0-9a-z ]{0,40}",
                ],
                0..6,
            ),
            ndjson: bool,
        ) {
            let _ = admit(lines.join("\n").as_bytes(), ndjson, LIMITS);
        }
    }
}
