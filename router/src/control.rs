//! Operators' controls: one incident, acknowledging and resolving incidents by hand, and
//! silences. An incident lives on one shard but its id does not say which, so changes ask
//! every shard's leader; a silence is kept by every shard, so changes go to every one.

use std::collections::BTreeMap;

use sentinel_core::anomaly::now_ms;
use sentinel_core::incident::{Actor, Silence};
use sentinel_core::validate::is_unprintable;
use sentinel_core::{AnomalyType, FieldError};
use sentinel_proto::v1::{
    change_silence_request, node_client::NodeClient, ChangeIncidentRequest, ChangeSilenceRequest,
    Consistency, IncidentAction, IncidentsRequest, NewSilence, SilencesRequest,
};
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::error::CallError;
use crate::query::{page, SilencesParams};
use crate::service::{fan_out, shard_count, ApiError, ApiState};

/// Longest id, name or `by` taken.
const MAX_NAME_CHARS: usize = 256;
/// Longest comment taken.
const MAX_COMMENT_CHARS: usize = 4_096;
/// Longest silence (a year and a day).
const MAX_SILENCE_MS: i64 = 366 * 86_400_000;

/// Records problems field by field.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0.push(FieldError::new(field, problem));
    }

    /// Whether a problem with `field` is known already.
    fn has(&self, field: &str) -> bool {
        self.0.iter().any(|p| p.field == field)
    }

    /// Checks a name or id: at most [`MAX_NAME_CHARS`], nothing a terminal acts upon.
    fn name(&mut self, field: &str, value: &str) {
        self.text(field, value, MAX_NAME_CHARS);
        if let Some((at, c)) = value.chars().enumerate().find(|(_, c)| is_unprintable(*c)) {
            self.add(
                field,
                format!(
                    "holds the control or bidirectional formatting character U+{:04X} at character {at}",
                    u32::from(c)
                ),
            );
        }
    }

    /// Checks the length of a text.
    fn text(&mut self, field: &str, value: &str, max: usize) {
        let chars = value.chars().count();
        if chars > max {
            self.add(
                field,
                format!("length {chars} is above the maximum {max} characters"),
            );
        }
    }

    /// Checks a required name: present (unless it had a problem already), and a name.
    fn required(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            if !self.has(field) {
                self.add(field, "required");
            }
        } else {
            self.name(field, value);
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ApiError::fields(self.0))
        }
    }
}

/// Checks an incident or silence id taken from a path or a request.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let mut problems = Problems::default();
    problems.required(field, id);
    problems.finish(())
}

/// The fields of a JSON request body: an object whose members are all among `fields`.
struct Body {
    members: Map<String, Value>,
    problems: Problems,
}

impl Body {
    /// Reads `bytes` as a JSON object, noting members not among `fields`.
    fn parse(bytes: &[u8], fields: &[&str]) -> Result<Body, ApiError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::invalid_body(format!("the body is not JSON: {e}")))?;
        let Value::Object(members) = value else {
            return Err(ApiError::invalid_body("the body is not a JSON object"));
        };
        let mut problems = Problems::default();
        for name in members
            .keys()
            .filter(|name| !fields.contains(&name.as_str()))
        {
            problems.add(
                name,
                format!("unknown field; the body takes {}", fields.join(", ")),
            );
        }
        Ok(Body { members, problems })
    }

    /// A text member; absent and null count as empty.
    fn text(&mut self, name: &str) -> String {
        match self.members.remove(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text,
            Some(other) => {
                self.problems.add(name, format!("{other} is not a string"));
                String::new()
            }
        }
    }

    /// A number member; absent and null count as absent.
    fn number(&mut self, name: &str) -> Option<f64> {
        match self.members.remove(name) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => {
                self.problems.add(name, format!("{other} is not a number"));
                None
            }
        }
    }
}

/// Who acknowledges or resolves an incident, and why (`{by, comment}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorInput {
    /// Who (required).
    pub by: String,
    /// Why.
    pub comment: String,
}

impl ActorInput {
    /// Reads the JSON body `{by, comment}`.
    pub fn from_body(bytes: &[u8]) -> Result<ActorInput, ApiError> {
        let mut body = Body::parse(bytes, &["by", "comment"])?;
        let input = ActorInput {
            by: body.text("by"),
            comment: body.text("comment"),
        };
        let mut problems = body.problems;
        input.check(&mut problems);
        problems.finish(input)
    }

    /// Notes the problems of each field.
    fn check(&self, problems: &mut Problems) {
        problems.required("by", &self.by);
        problems.text("comment", &self.comment, MAX_COMMENT_CHARS);
    }
}

/// The fields of a new silence (REST body and gRPC message alike).
const SILENCE_FIELDS: &[&str] = &[
    "service",
    "model",
    "anomaly_type",
    "starts_at",
    "ends_at",
    "duration_s",
    "created_by",
    "comment",
];

/// The silence the JSON body of `POST /api/v1/silences` describes (the fields of
/// `NewSilence`), as [`silence`] makes it; every problem with the body's fields otherwise.
pub fn silence_from_body(
    bytes: &[u8],
    silence_id: String,
    now_ms: i64,
) -> Result<Silence, ApiError> {
    let mut body = Body::parse(bytes, SILENCE_FIELDS)?;
    let new = NewSilence {
        service: body.text("service"),
        model: body.text("model"),
        anomaly_type: body.text("anomaly_type"),
        starts_at: body.text("starts_at"),
        ends_at: body.text("ends_at"),
        duration_s: body.number("duration_s"),
        created_by: body.text("created_by"),
        comment: body.text("comment"),
    };
    checked_silence(new, silence_id, now_ms, body.problems)
}

/// An RFC 3339 time in ms since the Unix epoch, or the problem with it.
fn rfc3339_ms(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e})"))
}

/// The silence `new` describes, with id `silence_id`, set at `now_ms`; every problem
/// with its fields otherwise.
pub fn silence(new: NewSilence, silence_id: String, now_ms: i64) -> Result<Silence, ApiError> {
    checked_silence(new, silence_id, now_ms, Problems::default())
}

/// [`silence`], adding to the `problems` found so far.
fn checked_silence(
    new: NewSilence,
    silence_id: String,
    now_ms: i64,
    mut problems: Problems,
) -> Result<Silence, ApiError> {
    problems.name("service", &new.service);
    problems.name("model", &new.model);
    let anomaly_type = match new.anomaly_type.trim() {
        "" => None,
        name => serde_json::from_value::<AnomalyType>(Value::String(name.to_owned()))
            .map_err(|_| {
                problems.add(
                    "anomaly_type",
                    format!(
                        "`{}` is not an anomaly type (latency_spike, error_rate_increase, cost_anomaly, ...)",
                        name.escape_debug()
                    ),
                )
            })
            .ok(),
    };
    let starts_at_ms = match new.starts_at.trim() {
        "" => Some(now_ms),
        text => rfc3339_ms(text)
            .map_err(|problem| problems.add("starts_at", problem))
            .ok(),
    };
    let ends_at_ms = match (new.ends_at.trim(), new.duration_s) {
        ("", None) => {
            if !problems.has("duration_s") {
                problems.add("ends_at", "required, or duration_s");
            }
            None
        }
        (_, Some(_)) if !new.ends_at.trim().is_empty() => {
            problems.add("duration_s", "give ends_at or duration_s, not both");
            None
        }
        (text, None) => rfc3339_ms(text)
            .map_err(|problem| problems.add("ends_at", problem))
            .ok(),
        (_, Some(seconds)) => {
            let limit = (MAX_SILENCE_MS / 1_000) as f64;
            if seconds.is_finite() && seconds > 0.0 && seconds <= limit {
                starts_at_ms.map(|start| start + (seconds * 1_000.0) as i64)
            } else {
                problems.add(
                    "duration_s",
                    format!("{seconds} is not above 0 and at most {limit}"),
                );
                None
            }
        }
    };
    if let (Some(start), Some(end)) = (starts_at_ms, ends_at_ms) {
        if end <= start {
            problems.add("ends_at", "must be after starts_at");
        } else if end <= now_ms {
            problems.add("ends_at", "is already past");
        } else if end - start > MAX_SILENCE_MS {
            problems.add("ends_at", "the silence would last more than 366 days");
        }
    }
    problems.required("created_by", &new.created_by);
    problems.text("comment", &new.comment, MAX_COMMENT_CHARS);
    let silence = Silence {
        silence_id,
        service_name: Some(new.service).filter(|s| !s.trim().is_empty()),
        model: Some(new.model).filter(|s| !s.trim().is_empty()),
        anomaly_type,
        starts_at_ms: starts_at_ms.unwrap_or_default(),
        ends_at_ms: ends_at_ms.unwrap_or_default(),
        created: Actor {
            by: new.created_by,
            at_ms: now_ms,
            comment: new.comment,
        },
    };
    problems.finish(silence)
}

/// A fresh silence id (UUID version 4).
pub fn new_silence_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One incident, from whichever shard has it; 404 when none has.
pub async fn incident(
    api: &ApiState,
    incident_id: &str,
    consistency: Consistency,
) -> Result<Value, ApiError> {
    check_id("id", incident_id)?;
    let shards = shard_count(api)?;
    let request = |shard| IncidentsRequest {
        shard,
        incident_id: incident_id.to_owned(),
        limit: 1,
        consistency: consistency as i32,
        ..IncidentsRequest::default()
    };
    let answers = fan_out(
        api,
        0..shards,
        consistency,
        request,
        |mut client, r| async move { Ok(client.incidents(r).await?.map(|reply| reply.incidents)) },
    );
    answers
        .await?
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no incident {incident_id}")))
}

/// What an operator does to an open incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Acknowledge it.
    Acknowledge,
    /// Resolve it by hand.
    Resolve,
}

/// Acknowledges or resolves the open incident `incident_id` on whichever shard has it
/// open (every shard leader is asked); 404 when none has.
pub async fn change_incident(
    api: &ApiState,
    incident_id: &str,
    change: Change,
    actor: ActorInput,
) -> Result<Value, ApiError> {
    let mut problems = Problems::default();
    problems.required("id", incident_id);
    actor.check(&mut problems);
    problems.finish(())?;
    let action = match change {
        Change::Acknowledge => IncidentAction::Acknowledge,
        Change::Resolve => IncidentAction::Resolve,
    };
    let at_ms = now_ms();
    let answers = on_every_leader(
        api,
        |shard| ChangeIncidentRequest {
            shard,
            incident_id: incident_id.to_owned(),
            action: action as i32,
            actor: Some(sentinel_proto::v1::Actor {
                by: actor.by.clone(),
                comment: actor.comment.clone(),
                at_ms,
            }),
        },
        |mut client, r| async move {
            Ok(client
                .change_incident(r)
                .await?
                .map(|reply| reply.found.then_some(reply.incident)))
        },
    )
    .await?;
    match found(answers)? {
        Some(json) => parse(&json),
        None => Err(ApiError::not_found(format!(
            "no open incident {incident_id}"
        ))),
    }
}

/// Calls every shard's leader with its `request` at once; each shard's answer.
async fn on_every_leader<R, T, F, Fut>(
    api: &ApiState,
    request: impl Fn(u32) -> R,
    call: F,
) -> Result<Vec<Result<Option<T>, CallError>>, ApiError>
where
    R: Clone,
    F: Fn(NodeClient<Channel>, R) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<Option<T>>, tonic::Status>>,
{
    let shards = shard_count(api)?;
    let calls = (0..shards).map(|shard| {
        let request = request(shard);
        async move {
            api.table
                .call_leader(shard, |client| call(client, request.clone()))
                .await
        }
    });
    Ok(futures::future::join_all(calls).await)
}

/// What some shard found, else the first failure, else nothing: a change that some shard
/// made is answered even when another shard failed.
fn found<T>(answers: Vec<Result<Option<T>, CallError>>) -> Result<Option<T>, ApiError> {
    let mut failure = None;
    for answer in answers {
        match answer {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(None),
    }
}

/// Every shard's answer, or the first failure (a change every shard must make).
fn all<T>(answers: Vec<Result<Option<T>, CallError>>) -> Result<Vec<Option<T>>, ApiError> {
    answers
        .into_iter()
        .map(|answer| answer.map_err(ApiError::from))
        .collect()
}

/// A node's JSON answer.
fn parse(json: &str) -> Result<Value, ApiError> {
    serde_json::from_str(json).map_err(|e| ApiError::node_error(e.to_string()))
}

/// Adds `silence` on every shard; the silence as the shards hold it.
pub async fn add_silence(api: &ApiState, silence: &Silence) -> Result<Value, ApiError> {
    let json = serde_json::to_string(silence).expect("silences serialize");
    let answers = on_every_leader(
        api,
        |shard| ChangeSilenceRequest {
            shard,
            change: Some(change_silence_request::Change::Add(json.clone())),
            at_ms: 0,
        },
        silence_reply,
    )
    .await?;
    merged_silence(all(answers)?)
        .ok_or_else(|| ApiError::node_error("no shard answered the silence"))
}

/// Ends the silence `silence_id` now on every shard; 404 when no shard has it.
pub async fn expire_silence(api: &ApiState, silence_id: &str) -> Result<Value, ApiError> {
    check_id("id", silence_id)?;
    let at_ms = now_ms();
    let answers = on_every_leader(
        api,
        |shard| ChangeSilenceRequest {
            shard,
            change: Some(change_silence_request::Change::Expire(
                silence_id.to_owned(),
            )),
            at_ms,
        },
        silence_reply,
    )
    .await?;
    merged_silence(all(answers)?)
        .ok_or_else(|| ApiError::not_found(format!("no silence {silence_id}")))
}

async fn silence_reply(
    mut client: NodeClient<Channel>,
    request: ChangeSilenceRequest,
) -> Result<tonic::Response<Option<String>>, tonic::Status> {
    Ok(client
        .change_silence(request)
        .await?
        .map(|reply| reply.found.then_some(reply.silence)))
}

/// The silence the shards answered, merged (see [`merge_silences`]).
fn merged_silence(answers: Vec<Option<String>>) -> Option<Value> {
    let parsed = answers
        .into_iter()
        .flatten()
        .filter_map(|json| serde_json::from_str(&json).ok())
        .collect();
    merge_silences(vec![parsed]).into_values().next()
}

/// Silences of several shards by id: the same silence held by several shards once, with
/// the earliest end any shard holds (an expiry that reached only some shards counts).
fn merge_silences(shards: Vec<Vec<Value>>) -> BTreeMap<String, Value> {
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for silence in shards.into_iter().flatten() {
        let Some(id) = silence["silence_id"].as_str().map(str::to_owned) else {
            continue;
        };
        let ends = |s: &Value| s["ends_at_ms"].as_i64().unwrap_or(i64::MAX);
        match merged.get(&id) {
            Some(known) if ends(known) <= ends(&silence) => {}
            _ => {
                merged.insert(id, silence);
            }
        }
    }
    merged
}

/// `{count, silences, next_cursor}`: the silences of every shard, in id order (only
/// those active now with `active`).
pub async fn silences_answer(api: &ApiState, params: SilencesParams) -> Result<Value, ApiError> {
    let shards = shard_count(api)?;
    let request = |shard| SilencesRequest {
        shard,
        consistency: params.consistency as i32,
    };
    let answers = fan_out(
        api,
        0..shards,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.silences(r).await?.map(|reply| reply.silences)) },
    );
    let now = now_ms();
    let silences: Vec<Value> = merge_silences(answers.await?)
        .into_values()
        .filter(|s| {
            !params.active
                || (s["starts_at_ms"].as_i64().unwrap_or(i64::MAX)
                    ..s["ends_at_ms"].as_i64().unwrap_or(0))
                    .contains(&now)
        })
        .collect();
    Ok(page("silences", silences, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_proto::ErrorCode;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn fields(error: ApiError) -> Vec<String> {
        error
            .details
            .iter()
            .map(|d| d["field"].as_str().unwrap().to_owned())
            .collect()
    }

    fn new(duration_s: Option<f64>, ends_at: &str) -> NewSilence {
        NewSilence {
            service: "chat".into(),
            duration_s,
            ends_at: ends_at.into(),
            created_by: "alice".into(),
            ..NewSilence::default()
        }
    }

    #[test]
    fn a_silence_takes_a_duration_or_an_end() {
        let silence = silence(new(Some(7200.0), ""), "s-1".into(), NOW).unwrap();
        assert_eq!(
            (silence.starts_at_ms, silence.ends_at_ms),
            (NOW, NOW + 7_200_000)
        );
        assert_eq!(silence.service_name.as_deref(), Some("chat"));
        assert_eq!((silence.model, silence.anomaly_type), (None, None));
        let until = super::silence(new(None, "2027-01-15T10:00:00Z"), "s".into(), NOW).unwrap();
        assert_eq!(
            until.ends_at_ms,
            NOW + 7_200_000,
            "NOW is 2027-01-15T08:00:00Z"
        );
        assert_eq!(
            fields(super::silence(new(None, "2027-01-15T08:00:00Z"), "s".into(), NOW).unwrap_err()),
            ["ends_at"],
            "an end that is now is past"
        );
    }

    #[test]
    fn every_bad_field_of_a_silence_is_listed() {
        let bad = NewSilence {
            service: "chat\u{1b}[2J".into(),
            anomaly_type: "outage".into(),
            starts_at: "tomorrow".into(),
            ends_at: "2020-01-01T00:00:00Z".into(),
            duration_s: Some(60.0),
            created_by: " ".into(),
            comment: "x".repeat(5_000),
            ..NewSilence::default()
        };
        let mut named = fields(silence(bad, "s".into(), NOW).unwrap_err());
        named.sort();
        assert_eq!(
            named,
            [
                "anomaly_type",
                "comment",
                "created_by",
                "duration_s",
                "service",
                "starts_at"
            ]
        );
        let missing = fields(silence(new(None, ""), "s".into(), NOW).unwrap_err());
        assert_eq!(missing, ["ends_at"]);
        let past = fields(silence(new(None, "2020-01-01T00:00:00Z"), "s".into(), NOW).unwrap_err());
        assert_eq!(past, ["ends_at"]);
        for seconds in [0.0, -1.0, f64::NAN, 1e12] {
            let problems = fields(silence(new(Some(seconds), ""), "s".into(), NOW).unwrap_err());
            assert_eq!(problems, ["duration_s"], "{seconds}");
        }
    }

    #[test]
    fn bodies_are_read_field_by_field() {
        let actor = ActorInput::from_body(br#"{"by": "bob", "comment": "looking"}"#).unwrap();
        assert_eq!(actor.by, "bob");
        let error = ActorInput::from_body(br#"{"by": 7, "colour": "red"}"#).unwrap_err();
        assert_eq!(fields(error), ["colour", "by"]);
        assert_eq!(fields(ActorInput::from_body(b"{}").unwrap_err()), ["by"]);
        for bad in [&b"[]"[..], b"nope", b""] {
            assert_eq!(
                ActorInput::from_body(bad).unwrap_err().code,
                ErrorCode::InvalidBody
            );
        }
        let silence = silence_from_body(
            br#"{"service": "chat", "duration_s": 60, "created_by": "alice", "model": null}"#,
            "s-1".into(),
            NOW,
        )
        .unwrap();
        assert_eq!(silence.ends_at_ms, NOW + 60_000);
        assert_eq!(silence.created.by, "alice");
        let error =
            silence_from_body(br#"{"duration_s": "1h", "x": 1}"#, "s".into(), NOW).unwrap_err();
        assert_eq!(fields(error), ["x", "duration_s", "created_by"]);
    }

    #[test]
    fn silences_merge_by_id_keeping_the_earliest_end() {
        let silence = |id: &str, ends: i64| json!({"silence_id": id, "ends_at_ms": ends});
        let merged = merge_silences(vec![
            vec![silence("b", 10), silence("a", 50)],
            vec![silence("a", 20), silence("c", 5)],
        ]);
        let ends: Vec<(&str, i64)> = merged
            .iter()
            .map(|(id, s)| (id.as_str(), s["ends_at_ms"].as_i64().unwrap()))
            .collect();
        assert_eq!(ends, [("a", 20), ("b", 10), ("c", 5)]);
        assert_eq!(merged_silence(vec![None, None]), None);
    }
}
