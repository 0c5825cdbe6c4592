//! The query operations the REST and gRPC APIs both answer (telemetry, anomalies,
//! baselines, incidents, silences, cluster status): parameters checked by one parser,
//! shards asked and their pages merged, the answer as JSON, through the answer cache.

use axum::body::Bytes;
use sentinel_core::anomaly::now_ms;
use sentinel_proto::v1::{
    AnomaliesRequest, BaselinesRequest, ClusterStatusReply, IncidentsRequest, TelemetryRequest,
};
use serde_json::{json, Value};

use crate::control;
use crate::query::{
    merge_baselines, merge_newest, merge_telemetry, AnomaliesParams, BaselinesParams,
    IncidentsParams, Query, ShardPage, SilencesParams, TelemetryParams, ANOMALY_ORDER,
    INCIDENT_ORDER,
};
use crate::service::{fan_out, on_shard, records, shard_count, ApiError, ApiState};

/// A query route: the REST and gRPC query operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRoute {
    /// `GET /api/v1/telemetry`.
    Telemetry,
    /// `GET /api/v1/anomalies`.
    Anomalies,
    /// `GET /api/v1/anomalies/recent`.
    RecentAnomalies,
    /// `GET /api/v1/baselines`.
    Baselines,
    /// `GET /api/v1/incidents`.
    Incidents,
    /// `GET /api/v1/silences`.
    Silences,
}

impl QueryRoute {
    /// The gRPC method of `sentinel.v1.Sentinel`.
    pub fn rpc(self) -> &'static str {
        match self {
            QueryRoute::Telemetry => "Telemetry",
            QueryRoute::Anomalies => "Anomalies",
            QueryRoute::RecentAnomalies => "RecentAnomalies",
            QueryRoute::Baselines => "Baselines",
            QueryRoute::Incidents => "Incidents",
            QueryRoute::Silences => "Silences",
        }
    }

    /// The REST path.
    pub fn path(self) -> &'static str {
        match self {
            QueryRoute::Telemetry => "/api/v1/telemetry",
            QueryRoute::Anomalies => "/api/v1/anomalies",
            QueryRoute::RecentAnomalies => "/api/v1/anomalies/recent",
            QueryRoute::Baselines => "/api/v1/baselines",
            QueryRoute::Incidents => "/api/v1/incidents",
            QueryRoute::Silences => "/api/v1/silences",
        }
    }
}

/// The JSON answer of `query` on `route`, from the cache when it holds one.
pub async fn query_answer(
    api: &ApiState,
    route: QueryRoute,
    query: Query,
) -> Result<Bytes, ApiError> {
    let compute = async {
        match route {
            QueryRoute::Telemetry => telemetry_answer(api, query.clone()).await,
            QueryRoute::Anomalies => {
                anomalies_answer(api, anomalies_params(query.clone(), false)?).await
            }
            QueryRoute::RecentAnomalies => {
                anomalies_answer(api, anomalies_params(query.clone(), true)?).await
            }
            QueryRoute::Baselines => baselines_answer(api, query.clone()).await,
            QueryRoute::Incidents => incidents_answer(api, query.clone()).await,
            QueryRoute::Silences => {
                let params = SilencesParams::parse(query.clone()).map_err(ApiError::parameters)?;
                control::silences_answer(api, params).await
            }
        }
    };
    api.cache.answer(route.path(), &query, compute).await
}

/// `{count, records, next_cursor}`: one page of telemetry, merged across shards.
async fn telemetry_answer(api: &ApiState, query: Query) -> Result<Value, ApiError> {
    let shards = shard_count(api)?;
    let params = TelemetryParams::parse(query, now_ms(), shards).map_err(ApiError::parameters)?;
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
    Ok(json!({
        "count": records.len(),
        "records": records,
        "next_cursor": next.map(|c| c.encode()),
    }))
}

/// `{count, anomalies, next_cursor}`: one page of the newest anomalies matching
/// `params`, merged across shards.
async fn anomalies_answer(api: &ApiState, params: AnomaliesParams) -> Result<Value, ApiError> {
    let shards = shard_count(api)?;
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
    Ok(json!({
        "count": anomalies.len(),
        "anomalies": anomalies,
        "next_cursor": next.map(|c| c.encode()),
    }))
}

/// The parameters of `/api/v1/anomalies` (`recent`: of `/api/v1/anomalies/recent`).
fn anomalies_params(query: Query, recent: bool) -> Result<AnomaliesParams, ApiError> {
    let params = if recent {
        AnomaliesParams::parse_recent(query)
    } else {
        AnomaliesParams::parse(query, now_ms())
    };
    params.map_err(ApiError::parameters)
}

/// `{count, baselines, next_cursor}`: one page of the baselines of one key or of every key.
async fn baselines_answer(api: &ApiState, query: Query) -> Result<Value, ApiError> {
    let params = BaselinesParams::parse(query).map_err(ApiError::parameters)?;
    let shards = shard_count(api)?;
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
    Ok(json!({
        "count": baselines.len(),
        "baselines": baselines,
        "next_cursor": next.map(|c| c.encode()),
    }))
}

/// `{count, incidents, next_cursor}`: one page of incidents, newest opening first, merged
/// across shards.
async fn incidents_answer(api: &ApiState, query: Query) -> Result<Value, ApiError> {
    let params = IncidentsParams::parse(query, now_ms()).map_err(ApiError::parameters)?;
    let shards = shard_count(api)?;
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
    Ok(json!({
        "count": incidents.len(),
        "incidents": incidents,
        "next_cursor": next.map(|c| c.encode()),
    }))
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
