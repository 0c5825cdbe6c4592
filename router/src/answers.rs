//! The query operations the REST and gRPC APIs both answer (telemetry, anomalies,
//! baselines, incidents, silences, cluster status): typed query fields checked once,
//! shards asked and their pages merged, the answer as JSON, through the answer cache.

use axum::body::Bytes;
use sentinel_core::anomaly::now_ms;
use sentinel_core::FieldError;
use sentinel_proto::v1::{
    AnomaliesQuery, AnomaliesRequest, BaselinesQuery, BaselinesRequest, ClusterStatusReply,
    IncidentsQuery, IncidentsRequest, RecentAnomaliesQuery, SilencesQuery, TelemetryQuery,
    TelemetryRequest,
};
use serde_json::{json, Value};

use crate::cache::cache_key;
use crate::control;
use crate::query::{
    merge_baselines, merge_newest, merge_telemetry, page, AnomaliesParams, BaselinesParams,
    IncidentsParams, ShardPage, SilencesParams, TelemetryParams, ANOMALY_ORDER, INCIDENT_ORDER,
};
use crate::service::{fan_out, on_shard, records, shard_count, ApiError, ApiState};

/// A list query as either API asks it: its typed fields (the REST query string read into
/// the message gRPC callers send).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryInput {
    /// `GET /api/v1/telemetry`.
    Telemetry(TelemetryQuery),
    /// `GET /api/v1/anomalies`.
    Anomalies(AnomaliesQuery),
    /// `GET /api/v1/anomalies/recent`.
    RecentAnomalies(RecentAnomaliesQuery),
    /// `GET /api/v1/baselines`.
    Baselines(BaselinesQuery),
    /// `GET /api/v1/incidents`.
    Incidents(IncidentsQuery),
    /// `GET /api/v1/silences`.
    Silences(SilencesQuery),
}

impl QueryInput {
    /// The gRPC method of `sentinel.v1.Sentinel`.
    pub fn rpc(&self) -> &'static str {
        match self {
            QueryInput::Telemetry(_) => "Telemetry",
            QueryInput::Anomalies(_) => "Anomalies",
            QueryInput::RecentAnomalies(_) => "RecentAnomalies",
            QueryInput::Baselines(_) => "Baselines",
            QueryInput::Incidents(_) => "Incidents",
            QueryInput::Silences(_) => "Silences",
        }
    }

    /// The answer's list of records (`records`, `anomalies`, ...).
    pub fn list(&self) -> &'static str {
        match self {
            QueryInput::Telemetry(_) => "records",
            QueryInput::Anomalies(_) | QueryInput::RecentAnomalies(_) => "anomalies",
            QueryInput::Baselines(_) => "baselines",
            QueryInput::Incidents(_) => "incidents",
            QueryInput::Silences(_) => "silences",
        }
    }

    /// The key its answer is cached under, if it may be (see [`cache_key`]).
    fn cache_key(&self) -> Option<String> {
        match self {
            QueryInput::Telemetry(q) => cache_key("/api/v1/telemetry", q, &q.consistency),
            QueryInput::Anomalies(q) => cache_key("/api/v1/anomalies", q, &q.consistency),
            QueryInput::RecentAnomalies(q) => {
                cache_key("/api/v1/anomalies/recent", q, &q.consistency)
            }
            QueryInput::Baselines(q) => cache_key("/api/v1/baselines", q, &q.consistency),
            QueryInput::Incidents(q) => cache_key("/api/v1/incidents", q, &q.consistency),
            QueryInput::Silences(q) => cache_key("/api/v1/silences", q, &q.consistency),
        }
    }

    /// Its checked parameters (`problems`: those its REST text had), at `now_ms` on a
    /// cluster of `shards`.
    fn check(
        &self,
        problems: Vec<FieldError>,
        now_ms: i64,
        shards: u32,
    ) -> Result<Checked, Vec<FieldError>> {
        Ok(match self {
            QueryInput::Telemetry(q) => {
                Checked::Telemetry(TelemetryParams::check(q, problems, now_ms, shards)?)
            }
            QueryInput::Anomalies(q) => {
                Checked::Anomalies(AnomaliesParams::check(q, problems, now_ms)?)
            }
            QueryInput::RecentAnomalies(q) => {
                Checked::Anomalies(AnomaliesParams::check_recent(q, problems)?)
            }
            QueryInput::Baselines(q) => Checked::Baselines(BaselinesParams::check(q, problems)?),
            QueryInput::Incidents(q) => {
                Checked::Incidents(IncidentsParams::check(q, problems, now_ms)?)
            }
            QueryInput::Silences(q) => Checked::Silences(SilencesParams::check(q, problems)?),
        })
    }
}

/// A list query's checked parameters.
enum Checked {
    Telemetry(TelemetryParams),
    Anomalies(AnomaliesParams),
    Baselines(BaselinesParams),
    Incidents(IncidentsParams),
    Silences(SilencesParams),
}

/// The JSON answer of `input` (whose REST text had `problems`), from the cache when it
/// holds one. Parameters are checked first, so a bad query is refused even when a good
/// one of the same typed fields is cached.
pub async fn query_answer(
    api: &ApiState,
    input: &QueryInput,
    problems: Vec<FieldError>,
) -> Result<Bytes, ApiError> {
    let shards = shard_count(api)?;
    let checked = input
        .check(problems, now_ms(), shards)
        .map_err(ApiError::parameters)?;
    let compute = async {
        match checked {
            Checked::Telemetry(params) => telemetry_answer(api, params).await,
            Checked::Anomalies(params) => anomalies_answer(api, params, shards).await,
            Checked::Baselines(params) => baselines_answer(api, params, shards).await,
            Checked::Incidents(params) => incidents_answer(api, params, shards).await,
            Checked::Silences(params) => control::silences_answer(api, params).await,
        }
    };
    api.cache.answer(input.cache_key(), compute).await
}

/// `{count, records, next_cursor}`: one page of telemetry, merged across shards.
async fn telemetry_answer(api: &ApiState, params: TelemetryParams) -> Result<Value, ApiError> {
    let from_ms = params.cursor.from_ms;
    let calls = params.cursor.positions.iter().map(|position| {
        let request = TelemetryRequest {
            shard: position.shard,
            service: params.service.clone().unwrap_or_default(),
            model: params.model.clone().unwrap_or_default(),
            from_ms,
            until_ms: 0,
            cursor: position.cursor.clone(),
            limit: position.skip + params.limit,
            consistency: params.consistency as i32,
        };
        async move {
            let reply = on_shard(api, position.shard, params.consistency, |mut client| {
                let request = request.clone();
                async move { client.telemetry(request).await }
            })
            .await?;
            Ok::<_, ApiError>(ShardPage {
                position: position.clone(),
                records: records(reply.records)?,
                next_cursor: reply.next_cursor,
            })
        }
    });
    let pages = futures::future::try_join_all(calls).await?;
    let (records, next) = merge_telemetry(from_ms, pages, params.limit as usize);
    Ok(page("records", records, next.map(|c| c.encode())))
}

/// `{count, anomalies, next_cursor}`: one page of the newest anomalies matching
/// `params`, merged across shards.
async fn anomalies_answer(
    api: &ApiState,
    params: AnomaliesParams,
    shards: u32,
) -> Result<Value, ApiError> {
    let request = |shard| AnomaliesRequest {
        shard,
        severity: params.severity.clone().unwrap_or_default(),
        since_ms: params.since_ms,
        limit: params.limit,
        consistency: params.consistency as i32,
        before_ms: params.after.as_ref().map(|a| a.at_ms),
        before_alert_id: params
            .after
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default(),
    };
    let answers = fan_out(
        api,
        0..shards,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.anomalies(r).await?.map(|reply| reply.alerts)) },
    );
    let (anomalies, next) = merge_newest(
        ANOMALY_ORDER,
        params.since_ms,
        answers.await?,
        params.limit as usize,
    );
    Ok(page("anomalies", anomalies, next.map(|c| c.encode())))
}

/// `{count, baselines, next_cursor}`: one page of the baselines of one key or of every key.
async fn baselines_answer(
    api: &ApiState,
    params: BaselinesParams,
    shards: u32,
) -> Result<Value, ApiError> {
    let targets: Vec<u32> = match (&params.service, &params.model) {
        (Some(service), Some(model)) => {
            vec![sentinel_core::shard::shard_of(service, model, shards)]
        }
        _ => (0..shards).collect(),
    };
    let request = |shard| BaselinesRequest {
        shard,
        service: params.service.clone().unwrap_or_default(),
        model: params.model.clone().unwrap_or_default(),
        consistency: params.consistency as i32,
        limit: params.limit,
        after_service: params
            .after
            .as_ref()
            .map(|a| a.service.clone())
            .unwrap_or_default(),
        after_model: params
            .after
            .as_ref()
            .map(|a| a.model.clone())
            .unwrap_or_default(),
    };
    let answers = fan_out(
        api,
        targets,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.baselines(r).await?.map(|reply| reply.baselines)) },
    );
    let (baselines, next) = merge_baselines(answers.await?, params.limit as usize);
    Ok(page("baselines", baselines, next.map(|c| c.encode())))
}

/// `{count, incidents, next_cursor}`: one page of incidents, newest opening first, merged
/// across shards.
async fn incidents_answer(
    api: &ApiState,
    params: IncidentsParams,
    shards: u32,
) -> Result<Value, ApiError> {
    let request = |shard| IncidentsRequest {
        shard,
        status: params.status.clone().unwrap_or_default(),
        service: params.service.clone().unwrap_or_default(),
        model: params.model.clone().unwrap_or_default(),
        since_ms: params.since_ms,
        limit: params.limit,
        consistency: params.consistency as i32,
        before_ms: params.after.as_ref().map(|a| a.at_ms),
        before_incident_id: params
            .after
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default(),
        incident_id: String::new(),
    };
    let answers = fan_out(
        api,
        0..shards,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.incidents(r).await?.map(|reply| reply.incidents)) },
    );
    let (incidents, next) = merge_newest(
        INCIDENT_ORDER,
        params.since_ms,
        answers.await?,
        params.limit as usize,
    );
    Ok(page("incidents", incidents, next.map(|c| c.encode())))
}

/// The cluster layout: nodes, shards, leaders and lag.
pub async fn cluster_status_answer(api: &ApiState) -> Result<Value, ApiError> {
    Ok(status_json(&api.table.cluster_status().await?))
}

/// The cluster status as JSON, with the field names of the gRPC message.
fn status_json(status: &ClusterStatusReply) -> Value {
    json!({
        "shard_count": status.shard_count,
        "replication_factor": status.replication_factor,
        "metadata_leader": status.metadata_leader,
        "nodes": status.nodes.iter().map(|n| json!({
            "id": n.id, "ordinal": n.ordinal, "address": n.address, "state": n.state,
        })).collect::<Vec<_>>(),
        "shards": status.shards.iter().map(|s| json!({
            "shard": s.shard,
            "leader": s.leader,
            "term": s.term,
            "desired": s.desired,
            "replicas": s.replicas.iter().map(|r| json!({
                "node": r.node, "role": r.role, "applied_index": r.applied_index, "lag": r.lag,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
