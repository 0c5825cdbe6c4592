//! The public gRPC API (`sentinel.v1.Sentinel`): the REST API's ingestion and queries
//! with the same parameters and answers, records as `google.protobuf.Struct`.

use sentinel_core::anomaly::now_ms;
use std::sync::Arc;

use prost_types::Struct;
use sentinel_proto::json::to_struct;
use sentinel_proto::leader_hint;
use sentinel_proto::v1::sentinel_server::Sentinel;
use sentinel_proto::v1::{
    AnomaliesQuery, BaselinesQuery, ClusterStatusQuery, DecommissionQuery, DecommissionReply,
    DecommissionRequest, FieldError, IncidentChange, IncidentRef, IncidentsQuery,
    IngestEventsReply, IngestEventsRequest, IngestedEvent, NewSilence, QueryReply,
    RecentAnomaliesQuery, SilenceRef, SilencesQuery, TelemetryQuery,
};
use serde_json::Value;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::answers::{cluster_status_answer, query_answer, QueryInput};
use crate::body::BodyError;
use crate::control::{self, ActorInput, Change};
use crate::ingest::Admission;
use crate::query;
use crate::service::{shard_count, ApiError, ApiState};

/// Trailer listing every bad parameter or event as a JSON array.
pub const DETAILS_TRAILER: &str = "sentinel-details";
/// NotLeader redirects a decommission follows towards the metadata leader.
const MAX_REDIRECTS: usize = 3;

/// The `sentinel.v1.Sentinel` service over the REST API's state.
pub struct PublicApi {
    api: Arc<ApiState>,
}

impl PublicApi {
    /// The service answering from `api`.
    pub fn new(api: Arc<ApiState>) -> PublicApi {
        PublicApi { api }
    }

    /// The answer of `input`, its records taken from its list.
    async fn reply(&self, input: QueryInput) -> Result<Response<QueryReply>, Status> {
        let answered = async {
            let json = query_answer(&self.api, &input, Vec::new()).await?;
            let answer =
                serde_json::from_slice(&json).map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(query_reply(answer, input.list())))
        };
        self.counted(input.rpc(), answered.await)
    }

    /// Counts a finished call in `sentinel_router_requests_total` as
    /// `route="/sentinel.v1.Sentinel/<method>"` and `status=<gRPC code>`.
    fn counted<T>(&self, method: &str, result: Result<T, Status>) -> Result<T, Status> {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.api
            .metrics
            .requests
            .with_label_values(&[
                &format!("/sentinel.v1.Sentinel/{method}"),
                &format!("{code:?}"),
            ])
            .inc();
        result
    }

    /// A call answering one JSON object, counted as `method`.
    fn object(
        &self,
        method: &str,
        answer: Result<Value, ApiError>,
    ) -> Result<Response<Struct>, Status> {
        self.counted(
            method,
            answer
                .map(|value| Response::new(to_struct(value)))
                .map_err(Status::from),
        )
    }

    /// `AcknowledgeIncident` or `ResolveIncident`, counted as `method`.
    async fn change_incident(
        &self,
        method: &str,
        request: IncidentChange,
        change: Change,
    ) -> Result<Response<Struct>, Status> {
        let actor = ActorInput {
            by: request.by,
            comment: request.comment,
        };
        let answer = control::change_incident(&self.api, &request.incident_id, change, actor).await;
        self.object(method, answer)
    }

    /// `IngestEvents`, before it is counted.
    async fn ingest(&self, events: Vec<String>) -> Result<Response<IngestEventsReply>, Status> {
        let shards = shard_count(&self.api)?;
        let limit = self.api.limits.max_events;
        if events.len() > limit {
            return Err(ApiError::from(BodyError::TooManyEvents { limit }).into());
        }
        let api = self.api.clone();
        let admitted = tokio::task::spawn_blocking(move || {
            let mut admission = Admission::new(&api.intake, &api.ids, shards, api.limits);
            for event in events {
                admission
                    .document(serde_json::from_str(&event).map_err(|e| format!("not JSON: {e}")))?;
            }
            Ok::<_, BodyError>(admission.finish())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(ApiError::from)?;
        let admitted = admitted.forward(&self.api.forwarder).await;
        self.api
            .metrics
            .events_rejected
            .inc_by(admitted.tally("rejected") as u64);
        let (applied, duplicates) = (admitted.tally("applied"), admitted.tally("duplicate"));
        Ok(Response::new(IngestEventsReply {
            accepted: (applied + duplicates) as u32,
            applied: applied as u32,
            duplicates: duplicates as u32,
            rejected: admitted.tally("rejected") as u32,
            failed: admitted.tally("failed") as u32,
            omitted_problems: admitted.problems.omitted() as u32,
            results: admitted
                .reports
                .into_iter()
                .map(|report| IngestedEvent {
                    index: report.index as u32,
                    event_id: report.event_id.unwrap_or_default(),
                    status: report.status.to_owned(),
                    errors: report
                        .errors
                        .into_iter()
                        .map(|e| FieldError {
                            field: e.field,
                            problem: e.problem,
                        })
                        .collect(),
                    message: report.message.unwrap_or_default(),
                    applied_as: report.applied_as.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    /// `Decommission`, before it is counted: asks the metadata leader (as the cluster
    /// status names it, then following NotLeader hints) to drain `node_id`.
    async fn drain(&self, node_id: u64) -> Result<DecommissionReply, Status> {
        let status = self
            .api
            .table
            .cluster_status()
            .await
            .map_err(|e| Status::from(ApiError::from(e)))?;
        let leader = status
            .metadata_leader
            .and_then(|id| status.nodes.iter().find(|node| node.id == id));
        let mut address = leader
            .or(status.nodes.first())
            .map(|node| node.address.clone())
            .ok_or_else(|| Status::unavailable("the cluster has no nodes"))?;
        for _ in 0..=MAX_REDIRECTS {
            let answer = self
                .api
                .table
                .client(&address)?
                .decommission(DecommissionRequest { node_id })
                .await;
            let refused = match answer {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(refused) => refused,
            };
            match leader_hint(&refused) {
                Some((_, hinted)) if hinted != address => address = hinted,
                _ if refused.code() == tonic::Code::NotFound => {
                    return Err(Status::not_found(refused.message()))
                }
                _ => {
                    return Err(Status::new(
                        refused.code(),
                        format!("node {address}: {}", refused.message()),
                    ))
                }
            }
        }
        Err(Status::unavailable(format!(
            "the metadata leader moved {MAX_REDIRECTS} times in a row; try again"
        )))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let code = error.code.grpc_code();
        let mut message = error.message;
        for detail in &error.details {
            if let (Some(field), Some(problem)) =
                (detail["field"].as_str(), detail["problem"].as_str())
            {
                message += &format!("; {field}: {problem}");
            }
        }
        let mut status = Status::new(code, message);
        if !error.details.is_empty() {
            if let Ok(value) = MetadataValue::try_from(Value::Array(error.details).to_string()) {
                status.metadata_mut().insert(DETAILS_TRAILER, value);
            }
        }
        status
    }
}

/// A REST query answer as a [`QueryReply`]: its count, the records under `list`, and
/// its next cursor.
fn query_reply(mut answer: Value, list: &str) -> QueryReply {
    let records = match answer[list].take() {
        Value::Array(records) => records.into_iter().map(to_struct).collect(),
        _ => Vec::new(),
    };
    QueryReply {
        count: answer["count"].as_u64().unwrap_or(0) as u32,
        records,
        next_cursor: answer["next_cursor"].as_str().unwrap_or("").to_owned(),
    }
}

#[tonic::async_trait]
impl Sentinel for PublicApi {
    async fn ingest_events(
        &self,
        request: Request<IngestEventsRequest>,
    ) -> Result<Response<IngestEventsReply>, Status> {
        let answered = self.ingest(request.into_inner().events).await;
        self.counted("IngestEvents", answered)
    }

    async fn telemetry(
        &self,
        request: Request<TelemetryQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::Telemetry(request.into_inner()))
            .await
    }

    async fn anomalies(
        &self,
        request: Request<AnomaliesQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::Anomalies(request.into_inner()))
            .await
    }

    async fn recent_anomalies(
        &self,
        request: Request<RecentAnomaliesQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::RecentAnomalies(request.into_inner()))
            .await
    }

    async fn baselines(
        &self,
        request: Request<BaselinesQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::Baselines(request.into_inner()))
            .await
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusQuery>,
    ) -> Result<Response<Struct>, Status> {
        let answered = cluster_status_answer(&self.api).await;
        self.object("ClusterStatus", answered)
    }

    async fn incidents(
        &self,
        request: Request<IncidentsQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::Incidents(request.into_inner()))
            .await
    }

    async fn get_incident(
        &self,
        request: Request<IncidentRef>,
    ) -> Result<Response<Struct>, Status> {
        let q = request.into_inner();
        let answer = async {
            let consistency =
                query::incident_consistency(&q, Vec::new()).map_err(ApiError::parameters)?;
            control::incident(&self.api, &q.incident_id, consistency).await
        };
        self.object("GetIncident", answer.await)
    }

    async fn acknowledge_incident(
        &self,
        request: Request<IncidentChange>,
    ) -> Result<Response<Struct>, Status> {
        self.change_incident(
            "AcknowledgeIncident",
            request.into_inner(),
            Change::Acknowledge,
        )
        .await
    }

    async fn resolve_incident(
        &self,
        request: Request<IncidentChange>,
    ) -> Result<Response<Struct>, Status> {
        self.change_incident("ResolveIncident", request.into_inner(), Change::Resolve)
            .await
    }

    async fn silences(
        &self,
        request: Request<SilencesQuery>,
    ) -> Result<Response<QueryReply>, Status> {
        self.reply(QueryInput::Silences(request.into_inner())).await
    }

    async fn add_silence(&self, request: Request<NewSilence>) -> Result<Response<Struct>, Status> {
        let answer = async {
            let silence =
                control::silence(request.into_inner(), control::new_silence_id(), now_ms())?;
            control::add_silence(&self.api, &silence).await
        };
        self.object("AddSilence", answer.await)
    }

    async fn expire_silence(
        &self,
        request: Request<SilenceRef>,
    ) -> Result<Response<Struct>, Status> {
        let answer = control::expire_silence(&self.api, &request.into_inner().silence_id).await;
        self.object("ExpireSilence", answer)
    }

    async fn decommission(
        &self,
        request: Request<DecommissionQuery>,
    ) -> Result<Response<DecommissionReply>, Status> {
        let answered = self.drain(request.into_inner().node_id).await;
        self.counted("Decommission", answered.map(Response::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;
    use serde_json::json;

    #[test]
    fn answers_keep_every_field_as_json() {
        let answer = json!({
            "count": 1,
            "anomalies": [{"alert_id": "a-1", "confidence": 0.9, "details": {"metric": "latency_ms"},
                           "remediation": ["scale"], "root_cause": null, "ok": true}],
        });
        let reply = query_reply(answer, "anomalies");
        assert_eq!(reply.count, 1);
        assert_eq!(reply.next_cursor, "");
        let record = &reply.records[0].fields;
        assert_eq!(
            record["alert_id"].kind,
            Some(Kind::StringValue("a-1".into()))
        );
        assert_eq!(record["confidence"].kind, Some(Kind::NumberValue(0.9)));
        assert_eq!(record["root_cause"].kind, Some(Kind::NullValue(0)));
        let Some(Kind::StructValue(details)) = &record["details"].kind else {
            panic!("details is an object");
        };
        assert_eq!(
            details.fields["metric"].kind,
            Some(Kind::StringValue("latency_ms".into()))
        );
    }

    #[test]
    fn bad_parameters_become_invalid_argument_listing_each() {
        let error = ApiError::parameters(vec![
            sentinel_core::FieldError::new("limit", "`0` is not between 1 and 10000"),
            sentinel_core::FieldError::new("severity", "`urgent` is not one of low"),
        ]);
        let status = Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("limit: `0`"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("severity: `urgent`"));
        let details: Value = serde_json::from_str(
            status
                .metadata()
                .get(DETAILS_TRAILER)
                .unwrap()
                .to_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(details.as_array().unwrap().len(), 2);
    }
}
