//! Query parameters: a REST query string read into the typed query messages gRPC callers
//! send, their checks (every problem reported by parameter), the opaque cursors of paged
//! answers, and the merging of per-shard answers.

use std::collections::{BTreeSet, VecDeque};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sentinel_core::FieldError;
use sentinel_proto::v1::{
    AnomaliesQuery, BaselinesQuery, ClusterStatusQuery, Consistency, IncidentRef, IncidentsQuery,
    RecentAnomaliesQuery, SilencesQuery, TelemetryQuery,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most records one query answers (what a node answers per call).
pub const MAX_LIMIT: u32 = 10_000;
/// Most baselines one query answers (a baseline is about a kilobyte).
pub const MAX_BASELINES_LIMIT: u32 = 1_000;
/// Most incidents one query answers (an incident is a few kilobytes).
pub const MAX_INCIDENTS_LIMIT: u32 = 1_000;
/// Longest look-back of `hours` (a year).
const MAX_HOURS: f64 = 24.0 * 366.0;
/// Default look-back of `hours`.
const DEFAULT_HOURS: f64 = 24.0;

/// Parameters of `GET /api/v1/telemetry`.
pub const TELEMETRY_PARAMETERS: &[&str] = TelemetryQuery::PARAMETERS;
/// Parameters of `GET /api/v1/anomalies`.
pub const ANOMALIES_PARAMETERS: &[&str] = AnomaliesQuery::PARAMETERS;
/// Parameters of `GET /api/v1/anomalies/recent`.
pub const RECENT_ANOMALIES_PARAMETERS: &[&str] = RecentAnomaliesQuery::PARAMETERS;
/// Parameters of `GET /api/v1/baselines`.
pub const BASELINES_PARAMETERS: &[&str] = BaselinesQuery::PARAMETERS;
/// Parameters of `GET /api/v1/incidents`.
pub const INCIDENTS_PARAMETERS: &[&str] = IncidentsQuery::PARAMETERS;
/// Parameters of `GET /api/v1/incidents/{id}`.
pub const INCIDENT_PARAMETERS: &[&str] = IncidentRef::PARAMETERS;
/// Parameters of `GET /api/v1/silences`.
pub const SILENCES_PARAMETERS: &[&str] = SilencesQuery::PARAMETERS;

/// The parameters of one REST query as (name, value) pairs, in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query(pub Vec<(String, String)>);

impl From<Option<&str>> for Query {
    fn from(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }
}

/// A typed query message (the one gRPC callers send) that a REST query string fills in.
pub trait QueryFields: Default {
    /// The parameters the REST route takes.
    const PARAMETERS: &'static [&'static str];
    /// Sets `name`, one of [`Self::PARAMETERS`], from its non-empty text.
    fn set(&mut self, name: &str, text: &str) -> Result<(), String>;
    /// The fields that are set, as a query string in [`Self::PARAMETERS`] order: the same
    /// for the same query however it was written or sent.
    fn canonical(&self) -> String;
}

/// A field's value as a query parameter, if it is set.
trait Shown {
    fn shown(&self) -> Option<String>;
}

impl Shown for String {
    fn shown(&self) -> Option<String> {
        text(self)
    }
}

impl<T: ToString> Shown for Option<T> {
    fn shown(&self) -> Option<String> {
        self.as_ref().map(T::to_string)
    }
}

impl Shown for bool {
    fn shown(&self) -> Option<String> {
        self.then(|| "true".to_owned())
    }
}

/// The typed fields of a REST query, and the problems of its text: unknown and repeated
/// parameters, and values of the wrong type. Empty values count as absent.
pub fn fields_of<T: QueryFields>(query: impl Into<Query>) -> (T, Vec<FieldError>) {
    let mut fields = T::default();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, text) in query.into().0 {
        if !T::PARAMETERS.contains(&name.as_str()) {
            let taken = match T::PARAMETERS {
                [] => "no parameters".to_owned(),
                names => names.join(", "),
            };
            problems.push(FieldError::new(
                &name,
                format!("unknown parameter; this route takes {taken}"),
            ));
        } else if !seen.insert(name.clone()) {
            problems.push(FieldError::new(&name, "given more than once"));
        } else if !text.trim().is_empty() {
            if let Err(problem) = fields.set(&name, &text) {
                problems.push(FieldError::new(&name, problem));
            }
        }
    }
    (fields, problems)
}

/// A text parameter's value.
fn text_value(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

/// A number parameter's value.
fn number<T: FromStr>(text: &str) -> Result<Option<T>, String> {
    match text.trim().parse() {
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

/// A `true`/`false` parameter's value.
fn flag(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("`{other}` is not one of true, false")),
    }
}

/// Implements [`QueryFields`] for a query message: each parameter is the field of the
/// same name, read by the function named beside it.
macro_rules! query_fields {
    ($message:ty { $($field:ident: $read:ident),* $(,)? }) => {
        impl QueryFields for $message {
            const PARAMETERS: &'static [&'static str] = &[$(stringify!($field)),*];
            #[allow(unused_variables)] // a message without parameters reads nothing
            fn set(&mut self, name: &str, text: &str) -> Result<(), String> {
                $(if name == stringify!($field) {
                    self.$field = $read(text)?;
                })*
                Ok(())
            }

            fn canonical(&self) -> String {
                #[allow(unused_mut)] // a message without parameters shows nothing
                let mut query = form_urlencoded::Serializer::new(String::new());
                $(if let Some(value) = Shown::shown(&self.$field) {
                    query.append_pair(stringify!($field), &value);
                })*
                query.finish()
            }
        }
    };
}

query_fields!(TelemetryQuery {
    service: text_value,
    model: text_value,
    hours: number,
    limit: number,
    cursor: text_value,
    consistency: text_value,
});
query_fields!(AnomaliesQuery {
    severity: text_value,
    hours: number,
    limit: number,
    cursor: text_value,
    consistency: text_value,
});
query_fields!(RecentAnomaliesQuery {
    limit: number,
    cursor: text_value,
    consistency: text_value,
});
query_fields!(BaselinesQuery {
    service: text_value,
    model: text_value,
    limit: number,
    cursor: text_value,
    consistency: text_value,
});
query_fields!(IncidentsQuery {
    status: text_value,
    service: text_value,
    model: text_value,
    hours: number,
    limit: number,
    cursor: text_value,
    consistency: text_value,
});
query_fields!(IncidentRef {
    consistency: text_value,
});
query_fields!(SilencesQuery {
    active: flag,
    consistency: text_value,
});
query_fields!(ClusterStatusQuery {});

/// Checks the query of a route that takes no parameters (`GET /api/v1/cluster/status`).
pub fn no_parameters(query: impl Into<Query>) -> Result<(), Vec<FieldError>> {
    let (ClusterStatusQuery {}, problems) = fields_of(query);
    Check { problems }.finish(())
}

/// A text field's value; empty or blank counts as absent.
fn text(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|v| !v.trim().is_empty())
}

/// The checks of one query's typed fields, and the problems found so far.
struct Check {
    problems: Vec<FieldError>,
}

impl Check {
    fn problem(&mut self, field: &str, problem: impl Into<String>) {
        self.problems.push(FieldError::new(field, problem));
    }

    /// A number within `min..=max`, `default` when absent.
    fn within<T>(&mut self, name: &str, value: Option<T>, default: T, min: T, max: T) -> T
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        match value {
            None => default,
            Some(n) if n >= min && n <= max => n,
            Some(n) => {
                self.problem(name, format!("`{n}` is not between {min} and {max}"));
                default
            }
        }
    }

    fn limit(&mut self, value: Option<u32>, default: u32, max: u32) -> u32 {
        self.within("limit", value, default, 1, max)
    }

    /// A `cursor`, decoded (a problem when it is not one this API returned).
    fn cursor<C: DeserializeOwned>(&mut self, value: &str) -> Option<C> {
        let text = text(value)?;
        let cursor = decode_cursor(&text);
        if cursor.is_none() {
            self.problem("cursor", "not a cursor this API returned");
        }
        cursor
    }

    /// `hours` as the start of the look-back, in ms since the Unix epoch.
    fn since(&mut self, hours: Option<f64>, now_ms: i64) -> i64 {
        let hours = self.within("hours", hours, DEFAULT_HOURS, 0.0, MAX_HOURS);
        if hours <= 0.0 && self.problems.iter().all(|p| p.field != "hours") {
            self.problem("hours", "must be above 0");
        }
        now_ms - (hours * 3_600_000.0) as i64
    }

    fn consistency(&mut self, value: &str) -> Consistency {
        match text(value).as_deref().map(str::trim) {
            None | Some("linearizable") => Consistency::Linearizable,
            Some("stale") => Consistency::StaleOk,
            Some(other) => {
                self.problem(
                    "consistency",
                    format!("`{other}` is not one of linearizable, stale"),
                );
                Consistency::Linearizable
            }
        }
    }

    /// `service` and `model`, where a model needs a service.
    fn service_model(&mut self, service: &str, model: &str) -> (Option<String>, Option<String>) {
        let (service, model) = (text(service), text(model));
        if service.is_none() && model.is_some() {
            self.problem("model", "needs service");
        }
        (service, model)
    }

    /// A choice among `allowed`, in lower case.
    fn one_of(&mut self, name: &str, value: &str, allowed: &[&str]) -> Option<String> {
        let value = text(value)?.to_ascii_lowercase();
        if !allowed.contains(&value.as_str()) {
            let names = allowed.join(", ");
            self.problem(name, format!("`{value}` is not one of {names}"));
        }
        Some(value)
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.problems)
        }
    }
}

/// Whether a query's `consistency` asks explicitly for linearizable reads.
pub fn explicitly_linearizable(consistency: &str) -> bool {
    consistency.trim() == "linearizable"
}

/// `GET /api/v1/telemetry` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryParams {
    /// Only this service.
    pub service: Option<String>,
    /// Only this model (with a service).
    pub model: Option<String>,
    /// Where to resume (also fixes the look-back of the first page).
    pub cursor: TelemetryCursor,
    /// Records per page.
    pub limit: u32,
    /// Read freshness.
    pub consistency: Consistency,
}

impl TelemetryParams {
    /// Checks `q` (whose text had `problems`) at `now_ms` on a cluster of `shards`.
    pub fn check(
        q: &TelemetryQuery,
        problems: Vec<FieldError>,
        now_ms: i64,
        shards: u32,
    ) -> Result<TelemetryParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let (service, model) = p.service_model(&q.service, &q.model);
        let since = p.since(q.hours, now_ms);
        let limit = p.limit(q.limit, 100, MAX_LIMIT);
        let consistency = p.consistency(&q.consistency);
        let cursor = match text(&q.cursor) {
            Some(text) => TelemetryCursor::decode(&text, shards).unwrap_or_else(|problem| {
                p.problem("cursor", problem);
                TelemetryCursor::start(since, [])
            }),
            None => {
                let shards: Vec<u32> = match (&service, &model) {
                    (Some(service), Some(model)) => {
                        vec![sentinel_core::shard::shard_of(service, model, shards)]
                    }
                    _ => (0..shards).collect(),
                };
                TelemetryCursor::start(since, shards)
            }
        };
        p.finish(TelemetryParams {
            service,
            model,
            cursor,
            limit,
            consistency,
        })
    }
}

/// `GET /api/v1/anomalies` and `/api/v1/anomalies/recent` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomaliesParams {
    /// Only this severity.
    pub severity: Option<String>,
    /// Raised at or after, ms since the Unix epoch (fixed by the first page).
    pub since_ms: i64,
    /// Most anomalies answered.
    pub limit: u32,
    /// Only anomalies after the last one of the previous page (newest first).
    pub after: Option<NewestPosition>,
    /// Read freshness.
    pub consistency: Consistency,
}

impl AnomaliesParams {
    /// Checks `q` of `/api/v1/anomalies` (whose text had `problems`) at `now_ms`.
    pub fn check(
        q: &AnomaliesQuery,
        problems: Vec<FieldError>,
        now_ms: i64,
    ) -> Result<AnomaliesParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let severity = p.one_of(
            "severity",
            &q.severity,
            &["low", "medium", "high", "critical"],
        );
        let since_ms = p.since(q.hours, now_ms);
        let limit = p.limit(q.limit, 100, MAX_LIMIT);
        let cursor: Option<NewestCursor> = p.cursor(&q.cursor);
        let consistency = p.consistency(&q.consistency);
        p.finish(AnomaliesParams {
            severity,
            since_ms: cursor.as_ref().map_or(since_ms, |c| c.since_ms),
            limit,
            after: cursor.map(|c| c.after),
            consistency,
        })
    }

    /// Checks `q` of `/api/v1/anomalies/recent` (any age, any severity).
    pub fn check_recent(
        q: &RecentAnomaliesQuery,
        problems: Vec<FieldError>,
    ) -> Result<AnomaliesParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let limit = p.limit(q.limit, 20, MAX_LIMIT);
        let cursor: Option<NewestCursor> = p.cursor(&q.cursor);
        let consistency = p.consistency(&q.consistency);
        p.finish(AnomaliesParams {
            severity: None,
            since_ms: 0,
            limit,
            after: cursor.map(|c| c.after),
            consistency,
        })
    }
}

/// `GET /api/v1/baselines` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselinesParams {
    /// Only this service.
    pub service: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Most baselines answered.
    pub limit: u32,
    /// Only keys after this one (the last of the previous page).
    pub after: Option<BaselineCursor>,
    /// Read freshness (`stale` may read any replica).
    pub consistency: Consistency,
}

impl BaselinesParams {
    /// Checks `q` (whose text had `problems`).
    pub fn check(
        q: &BaselinesQuery,
        problems: Vec<FieldError>,
    ) -> Result<BaselinesParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let (service, model) = (text(&q.service), text(&q.model));
        let limit = p.limit(q.limit, 100, MAX_BASELINES_LIMIT);
        let after = p.cursor(&q.cursor);
        let consistency = p.consistency(&q.consistency);
        p.finish(BaselinesParams {
            service,
            model,
            limit,
            after,
            consistency,
        })
    }
}

/// `GET /api/v1/incidents` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentsParams {
    /// Only incidents in this state (`open` or `resolved`).
    pub status: Option<String>,
    /// Only this service.
    pub service: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Opened at or after, ms since the Unix epoch (fixed by the first page).
    pub since_ms: i64,
    /// Most incidents answered.
    pub limit: u32,
    /// Only incidents after the last one of the previous page (newest opening first).
    pub after: Option<NewestPosition>,
    /// Read freshness.
    pub consistency: Consistency,
}

impl IncidentsParams {
    /// Checks `q` (whose text had `problems`) at `now_ms`.
    pub fn check(
        q: &IncidentsQuery,
        problems: Vec<FieldError>,
        now_ms: i64,
    ) -> Result<IncidentsParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let status = p.one_of("status", &q.status, &["open", "resolved"]);
        let (service, model) = (text(&q.service), text(&q.model));
        let since_ms = p.since(q.hours, now_ms);
        let limit = p.limit(q.limit, 100, MAX_INCIDENTS_LIMIT);
        let cursor: Option<NewestCursor> = p.cursor(&q.cursor);
        let consistency = p.consistency(&q.consistency);
        p.finish(IncidentsParams {
            status,
            service,
            model,
            since_ms: cursor.as_ref().map_or(since_ms, |c| c.since_ms),
            limit,
            after: cursor.map(|c| c.after),
            consistency,
        })
    }
}

/// Checks the `consistency` of `GET /api/v1/incidents/{id}` (whose text had `problems`).
pub fn incident_consistency(
    q: &IncidentRef,
    problems: Vec<FieldError>,
) -> Result<Consistency, Vec<FieldError>> {
    let mut p = Check { problems };
    let consistency = p.consistency(&q.consistency);
    p.finish(consistency)
}

/// `GET /api/v1/silences` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SilencesParams {
    /// Only silences active now.
    pub active: bool,
    /// Read freshness.
    pub consistency: Consistency,
}

impl SilencesParams {
    /// Checks `q` (whose text had `problems`).
    pub fn check(
        q: &SilencesQuery,
        problems: Vec<FieldError>,
    ) -> Result<SilencesParams, Vec<FieldError>> {
        let mut p = Check { problems };
        let consistency = p.consistency(&q.consistency);
        p.finish(SilencesParams {
            active: q.active,
            consistency,
        })
    }
}

/// One page of a list answer: `{count, <list>, next_cursor}` (`next_cursor` null on the
/// last page), as REST answers it and gRPC reads it.
pub fn page(list: &str, records: Vec<Value>, next_cursor: Option<String>) -> Value {
    let mut page = serde_json::Map::new();
    page.insert("count".into(), records.len().into());
    page.insert(list.into(), Value::Array(records));
    page.insert("next_cursor".into(), next_cursor.into());
    Value::Object(page)
}

/// The opaque text form of a cursor.
fn encode_cursor(cursor: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).expect("cursors serialize"))
}

/// A cursor from its text form; `None` when it is not one [`encode_cursor`] made.
fn decode_cursor<C: DeserializeOwned>(text: &str) -> Option<C> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A record's place in a newest-first list (anomalies, incidents): its time and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewestPosition {
    /// When it was raised or opened, ms since the Unix epoch.
    #[serde(rename = "t")]
    pub at_ms: i64,
    /// Its alert or incident id.
    #[serde(rename = "a")]
    pub id: String,
}

/// Where a paged newest-first query stands: the last record answered, and the look-back
/// start of the first page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewestCursor {
    /// Start of the look-back, fixed by the first page.
    #[serde(rename = "f")]
    pub since_ms: i64,
    /// The last record answered.
    #[serde(rename = "l")]
    pub after: NewestPosition,
}

impl NewestCursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        encode_cursor(self)
    }
}

/// Where a paged baselines query stands: the last key answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineCursor {
    /// Its service.
    #[serde(rename = "s")]
    pub service: String,
    /// Its model.
    #[serde(rename = "m")]
    pub model: String,
}

impl BaselineCursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        encode_cursor(self)
    }
}

/// Where a paged telemetry query stands on each shard not yet exhausted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryCursor {
    /// Start of the look-back, fixed by the first page.
    #[serde(rename = "f")]
    pub from_ms: i64,
    /// Per shard still to read.
    #[serde(rename = "p")]
    pub positions: Vec<ShardPosition>,
}

/// Where a paged query stands on one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPosition {
    /// The shard.
    #[serde(rename = "s")]
    pub shard: u32,
    /// The node's cursor of the page being read (empty: the first page).
    #[serde(rename = "c", default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// Records of that page already answered.
    #[serde(rename = "k", default, skip_serializing_if = "is_zero")]
    pub skip: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TelemetryCursor {
    /// The first page of `shards`, looking back to `from_ms`.
    pub fn start(from_ms: i64, shards: impl IntoIterator<Item = u32>) -> TelemetryCursor {
        TelemetryCursor {
            from_ms,
            positions: shards
                .into_iter()
                .map(|shard| ShardPosition {
                    shard,
                    cursor: String::new(),
                    skip: 0,
                })
                .collect(),
        }
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        encode_cursor(self)
    }

    /// Reads the text form, checking it against a cluster of `shards` shards.
    pub fn decode(text: &str, shards: u32) -> Result<TelemetryCursor, String> {
        let invalid = || "not a cursor this API returned".to_string();
        let cursor: TelemetryCursor = decode_cursor(text).ok_or_else(invalid)?;
        if cursor.positions.is_empty()
            || cursor
                .positions
                .iter()
                .any(|p| p.shard >= shards || p.skip > MAX_LIMIT)
        {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

/// One shard's answer to a telemetry page request made from `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPage {
    /// Where the request started.
    pub position: ShardPosition,
    /// The records, in the node's order.
    pub records: Vec<Value>,
    /// The node's cursor after these records (empty: none left).
    pub next_cursor: String,
}

fn telemetry_key(record: &Value) -> (&str, &str, i64) {
    let event = &record["event"];
    (
        event["service"].as_str().unwrap_or(""),
        event["model"].as_str().unwrap_or(""),
        event["timestamp_ms"].as_i64().unwrap_or(0),
    )
}

/// Merges shard pages into one page of at most `limit` records in (service, model, time)
/// order, and the cursor of the rest (`None` when nothing is left).
pub fn merge_telemetry(
    from_ms: i64,
    pages: Vec<ShardPage>,
    limit: usize,
) -> (Vec<Value>, Option<TelemetryCursor>) {
    let mut heads: Vec<(ShardPage, VecDeque<Value>)> = pages
        .into_iter()
        .map(|mut page| {
            let records: VecDeque<Value> = std::mem::take(&mut page.records)
                .into_iter()
                .skip(page.position.skip as usize)
                .collect();
            (page, records)
        })
        .collect();
    let mut taken = vec![0u32; heads.len()];
    let mut merged = Vec::new();
    while merged.len() < limit {
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (_, records))| records.front().map(|r| (i, telemetry_key(r))))
            .min_by(|a, b| a.1.cmp(&b.1))
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        merged.extend(heads[i].1.pop_front());
        taken[i] += 1;
    }
    let positions: Vec<ShardPosition> = heads
        .into_iter()
        .zip(taken)
        .filter_map(|((page, rest), taken)| {
            if !rest.is_empty() {
                Some(ShardPosition {
                    skip: page.position.skip + taken,
                    ..page.position
                })
            } else if page.next_cursor.is_empty() {
                None
            } else {
                Some(ShardPosition {
                    shard: page.position.shard,
                    cursor: page.next_cursor,
                    skip: 0,
                })
            }
        })
        .collect();
    let cursor = (!positions.is_empty()).then_some(TelemetryCursor { from_ms, positions });
    (merged, cursor)
}

/// Merges pages that shards answered with at most `limit` records each, sorted by
/// `key`: the first `limit` records, and the last one's key when more may follow (some
/// shard filled its page, or records were left out).
fn merge_pages<K: Ord>(
    shards: Vec<Vec<Value>>,
    limit: usize,
    key: impl Fn(&Value) -> K,
) -> (Vec<Value>, Option<K>) {
    let full = shards.iter().any(|page| page.len() >= limit);
    let mut all: Vec<Value> = shards.into_iter().flatten().collect();
    all.sort_by_key(&key);
    let more = full || all.len() > limit;
    all.truncate(limit);
    let last = all.last().filter(|_| more).map(key);
    (all, last)
}

/// The time and id fields of a newest-first list's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewestOrder {
    /// The time field (ms since the Unix epoch).
    pub time: &'static str,
    /// The id field (ties between equal times).
    pub id: &'static str,
}

/// Anomalies, by the time they were raised.
pub const ANOMALY_ORDER: NewestOrder = NewestOrder {
    time: "timestamp_ms",
    id: "alert_id",
};
/// Incidents, by the time they opened.
pub const INCIDENT_ORDER: NewestOrder = NewestOrder {
    time: "opened_at_ms",
    id: "incident_id",
};

/// Merges shard pages of a newest-first list ordered by `order`: newest first (ties by
/// id, highest first), at most `limit`, and the cursor of the next page (`None` on the
/// last one) keeping `since_ms`.
pub fn merge_newest(
    order: NewestOrder,
    since_ms: i64,
    shards: Vec<Vec<Value>>,
    limit: usize,
) -> (Vec<Value>, Option<NewestCursor>) {
    let (records, last) = merge_pages(shards, limit, |record| {
        std::cmp::Reverse((
            record[order.time].as_i64().unwrap_or(0),
            record[order.id].as_str().unwrap_or("").to_owned(),
        ))
    });
    let cursor = last.map(|std::cmp::Reverse((at_ms, id))| NewestCursor {
        since_ms,
        after: NewestPosition { at_ms, id },
    });
    (records, cursor)
}

/// Merges shard pages of baselines in (service, model) order: at most `limit`, and the
/// cursor of the next page (`None` on the last one).
pub fn merge_baselines(
    shards: Vec<Vec<Value>>,
    limit: usize,
) -> (Vec<Value>, Option<BaselineCursor>) {
    let (baselines, last) = merge_pages(shards, limit, |baseline| {
        let text = |field: &str| baseline[field].as_str().unwrap_or("").to_owned();
        (text("service_name"), text("model"))
    });
    let cursor = last.map(|(service, model)| BaselineCursor { service, model });
    (baselines, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    // Each route's REST query text read into its typed fields and checked, as the routes do.
    impl TelemetryParams {
        fn parse(
            query: impl Into<Query>,
            now_ms: i64,
            shards: u32,
        ) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check(&q, problems, now_ms, shards)
        }
    }

    impl AnomaliesParams {
        fn parse(query: impl Into<Query>, now_ms: i64) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check(&q, problems, now_ms)
        }

        fn parse_recent(query: impl Into<Query>) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check_recent(&q, problems)
        }
    }

    impl BaselinesParams {
        fn parse(query: impl Into<Query>) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check(&q, problems)
        }
    }

    impl IncidentsParams {
        fn parse(query: impl Into<Query>, now_ms: i64) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check(&q, problems, now_ms)
        }
    }

    impl SilencesParams {
        fn parse(query: impl Into<Query>) -> Result<Self, Vec<FieldError>> {
            let (q, problems) = fields_of(query);
            Self::check(&q, problems)
        }
    }

    fn consistency_of(query: &str) -> Result<Consistency, Vec<FieldError>> {
        let (q, problems) = fields_of(Some(query));
        incident_consistency(&q, problems)
    }

    fn fields(problems: &[FieldError]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn telemetry_parameters_have_defaults_and_a_single_shard_for_a_key() {
        let params = TelemetryParams::parse(Query::default(), NOW, 8).unwrap();
        assert_eq!(params.limit, 100);
        assert_eq!(params.cursor.from_ms, NOW - 24 * 3_600_000);
        assert_eq!(params.cursor.positions.len(), 8);
        assert_eq!(params.consistency, Consistency::Linearizable);
        let params = TelemetryParams::parse(
            Some("service=chat&model=gpt-4o&hours=0.5&limit=7&consistency=stale"),
            NOW,
            8,
        )
        .unwrap();
        assert_eq!(params.cursor.positions.len(), 1);
        assert_eq!(
            params.cursor.positions[0].shard,
            sentinel_core::shard::shard_of("chat", "gpt-4o", 8)
        );
        assert_eq!(params.cursor.from_ms, NOW - 1_800_000);
        assert_eq!(
            (params.limit, params.consistency),
            (7, Consistency::StaleOk)
        );
    }

    #[test]
    fn every_bad_parameter_is_listed() {
        let problems = TelemetryParams::parse(
            Some("model=m&hours=-1&limit=abc&cursor=zzz&consistency=eventual&colour=red&limit=2"),
            NOW,
            8,
        )
        .unwrap_err();
        let mut named = fields(&problems);
        named.sort();
        assert_eq!(
            named,
            [
                "colour",
                "consistency",
                "cursor",
                "hours",
                "limit",
                "limit",
                "model"
            ]
        );
        let problems =
            AnomaliesParams::parse(Some("severity=urgent&limit=0&hours=0"), NOW).unwrap_err();
        assert_eq!(fields(&problems), ["severity", "hours", "limit"]);
        let problems = AnomaliesParams::parse_recent(Some("limit=10001")).unwrap_err();
        assert!(problems[0].problem.contains("between 1 and 10000"));
        let problems = no_parameters(Some("verbose=1")).unwrap_err();
        assert_eq!(
            problems[0].problem,
            "unknown parameter; this route takes no parameters"
        );
        assert_eq!(no_parameters(None), Ok(()));
        let problems = BaselinesParams::parse(Some("consistency=weak&x=1")).unwrap_err();
        assert_eq!(fields(&problems).len(), 2);
        let params = AnomaliesParams::parse(Some("severity=HIGH&limit=5"), NOW).unwrap();
        assert_eq!(params.severity.as_deref(), Some("high"));
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = TelemetryCursor {
            from_ms: 42,
            positions: vec![
                ShardPosition {
                    shard: 3,
                    cursor: "node-cursor".into(),
                    skip: 5,
                },
                ShardPosition {
                    shard: 0,
                    cursor: String::new(),
                    skip: 0,
                },
            ],
        };
        let text = cursor.encode();
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(TelemetryCursor::decode(&text, 8).unwrap(), cursor);
        assert!(TelemetryCursor::decode(&text, 3).is_err());
        assert!(TelemetryCursor::decode("e30", 8).is_err());
        assert!(TelemetryCursor::decode("!!", 8).is_err());
        let params =
            TelemetryParams::parse(Some(format!("cursor={text}&hours=1").as_str()), NOW, 8)
                .unwrap();
        assert_eq!(params.cursor, cursor);
    }

    fn record(service: &str, t: i64) -> Value {
        json!({"event": {"service": service, "model": "m", "timestamp_ms": t}, "values": {}})
    }

    fn page(shard: u32, skip: u32, records: Vec<Value>, next: &str) -> ShardPage {
        ShardPage {
            position: ShardPosition {
                shard,
                cursor: "c0".into(),
                skip,
            },
            records,
            next_cursor: next.into(),
        }
    }

    #[test]
    fn telemetry_pages_merge_in_key_order_and_resume_exactly() {
        let pages = vec![
            page(
                0,
                1,
                vec![record("a", 0), record("a", 1), record("c", 1)],
                "n0",
            ),
            page(1, 0, vec![record("b", 1), record("b", 2)], ""),
            page(2, 0, vec![record("d", 1)], ""),
        ];
        let (merged, cursor) = merge_telemetry(9, pages, 3);
        let keys: Vec<_> = merged.iter().map(telemetry_key).collect();
        assert_eq!(keys, [("a", "m", 1), ("b", "m", 1), ("b", "m", 2)]);
        let cursor = cursor.unwrap();
        assert_eq!(cursor.from_ms, 9);
        assert_eq!(
            cursor.positions,
            [
                ShardPosition {
                    shard: 0,
                    cursor: "c0".into(),
                    skip: 2
                },
                ShardPosition {
                    shard: 2,
                    cursor: "c0".into(),
                    skip: 0
                },
            ]
        );
        let (merged, cursor) = merge_telemetry(9, vec![page(0, 0, vec![record("a", 0)], "n0")], 5);
        assert_eq!(merged.len(), 1);
        assert_eq!(cursor.unwrap().positions[0].cursor, "n0");
        let (_, cursor) = merge_telemetry(9, vec![page(0, 0, vec![record("a", 0)], "")], 5);
        assert_eq!(cursor, None);
    }

    #[test]
    fn anomalies_merge_newest_first_within_the_limit() {
        let alert = |id: &str, t: i64| json!({"alert_id": id, "timestamp_ms": t});
        let (merged, cursor) = merge_newest(
            ANOMALY_ORDER,
            5,
            vec![
                vec![alert("a", 30), alert("b", 10)],
                vec![alert("c", 20), alert("d", 30)],
            ],
            3,
        );
        let ids: Vec<_> = merged
            .iter()
            .map(|a| a["alert_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["d", "a", "c"]);
        let cursor = cursor.expect("one more anomaly");
        assert_eq!(
            (
                cursor.since_ms,
                cursor.after.at_ms,
                cursor.after.id.as_str()
            ),
            (5, 20, "c")
        );
        let (_, last) = merge_newest(ANOMALY_ORDER, 5, vec![vec![alert("a", 30)], vec![]], 3);
        assert_eq!(last, None, "nothing left out and no shard filled its page");
        let (_, full) = merge_newest(
            ANOMALY_ORDER,
            5,
            vec![vec![alert("a", 30), alert("b", 1)]],
            2,
        );
        assert!(full.is_some(), "a shard that filled its page may have more");
        let (baselines, next) = merge_baselines(
            vec![
                vec![json!({"service_name": "b", "model": "m"})],
                vec![json!({"service_name": "a", "model": "z"})],
            ],
            1,
        );
        assert_eq!(baselines[0]["service_name"], "a");
        assert_eq!(
            next,
            Some(BaselineCursor {
                service: "a".into(),
                model: "z".into()
            })
        );
    }

    #[test]
    fn list_cursors_round_trip_fix_the_look_back_and_foreign_ones_are_refused() {
        let cursor = NewestCursor {
            since_ms: 42,
            after: NewestPosition {
                at_ms: 99,
                id: "al-7".into(),
            },
        };
        let params = AnomaliesParams::parse(
            Some(format!("cursor={}&hours=1", cursor.encode()).as_str()),
            NOW,
        )
        .unwrap();
        assert_eq!((params.since_ms, params.after), (42, Some(cursor.after)));
        let after = BaselineCursor {
            service: "chat".into(),
            model: "gpt-4o".into(),
        };
        let params =
            BaselinesParams::parse(Some(format!("cursor={}&limit=5", after.encode()).as_str()))
                .unwrap();
        assert_eq!((params.limit, params.after), (5, Some(after)));
        for query in ["cursor=zzz", "cursor=e30"] {
            assert_eq!(
                fields(&BaselinesParams::parse(Some(query)).unwrap_err()),
                ["cursor"]
            );
            assert_eq!(
                fields(&AnomaliesParams::parse_recent(Some(query)).unwrap_err()),
                ["cursor"]
            );
        }
        assert!(BaselinesParams::parse(Some("limit=1001")).is_err());
    }

    #[test]
    fn incident_and_silence_parameters_are_checked_one_by_one() {
        let params = IncidentsParams::parse(Query::default(), NOW).unwrap();
        assert_eq!(
            (params.status, params.since_ms, params.limit),
            (None, NOW - 24 * 3_600_000, 100)
        );
        let params =
            IncidentsParams::parse(Some("status=Resolved&model=m&limit=1000"), NOW).unwrap();
        assert_eq!(params.status.as_deref(), Some("resolved"));
        assert_eq!((params.model.as_deref(), params.service), (Some("m"), None));
        let problems =
            IncidentsParams::parse(Some("status=closed&limit=1001&hours=0&cursor=x&y=1"), NOW)
                .unwrap_err();
        let mut named = fields(&problems);
        named.sort();
        assert_eq!(named, ["cursor", "hours", "limit", "status", "y"]);
        let cursor = NewestCursor {
            since_ms: 7,
            after: NewestPosition {
                at_ms: 9,
                id: "i-1".into(),
            },
        };
        let params =
            IncidentsParams::parse(Some(format!("cursor={}", cursor.encode()).as_str()), NOW)
                .unwrap();
        assert_eq!((params.since_ms, params.after), (7, Some(cursor.after)));
        assert_eq!(
            consistency_of("consistency=stale"),
            Ok(Consistency::StaleOk)
        );
        assert_eq!(
            fields(&consistency_of("status=open").unwrap_err()),
            ["status"]
        );
        assert!(SilencesParams::parse(Some("active=true")).unwrap().active);
        assert!(!SilencesParams::parse(None).unwrap().active);
        assert_eq!(
            fields(&SilencesParams::parse(Some("active=yes&consistency=x")).unwrap_err()),
            ["active", "consistency"]
        );
    }

    #[test]
    fn incidents_merge_newest_opening_first() {
        let incident = |id: &str, t: i64| json!({"incident_id": id, "opened_at_ms": t});
        let (merged, cursor) = merge_newest(
            INCIDENT_ORDER,
            1,
            vec![
                vec![incident("b", 5), incident("a", 2)],
                vec![incident("c", 5)],
            ],
            2,
        );
        let ids: Vec<_> = merged
            .iter()
            .map(|i| i["incident_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "b"]);
        let after = cursor.expect("one more incident").after;
        assert_eq!((after.at_ms, after.id.as_str()), (5, "b"));
    }

    proptest! {
        #[test]
        fn query_parsing_never_panics(query in ".{0,200}", shards in 1u32..64) {
            let _ = TelemetryParams::parse(Some(query.as_str()), NOW, shards);
            let _ = AnomaliesParams::parse(Some(query.as_str()), NOW);
            let _ = AnomaliesParams::parse_recent(Some(query.as_str()));
            let _ = BaselinesParams::parse(Some(query.as_str()));
            let _ = IncidentsParams::parse(Some(query.as_str()), NOW);
            let _ = SilencesParams::parse(Some(query.as_str()));
            let _ = TelemetryCursor::decode(&query, shards);
        }

        #[test]
        fn structured_queries_never_panic(
            pairs in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("service".to_string()), Just("model".to_string()),
                        Just("hours".to_string()), Just("limit".to_string()),
                        Just("cursor".to_string()), Just("severity".to_string()),
                        Just("consistency".to_string()), "[a-z]{1,5}",
                    ],
                    prop_oneof![
                        "-?[0-9]{0,25}(\\.[0-9]{0,5})?", "[A-Za-z0-9_-]{0,40}",
                        Just("NaN".to_string()), Just("inf".to_string()), Just("1e308".to_string()),
                    ],
                ),
                0..8,
            ),
        ) {
            let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let query = query.join("&");
            let _ = TelemetryParams::parse(Some(query.as_str()), NOW, 16);
            let _ = AnomaliesParams::parse(Some(query.as_str()), NOW);
        }
    }
}
