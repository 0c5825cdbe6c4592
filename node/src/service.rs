//! The node's gRPC services: Raft transport between nodes, and the shard API (ingest,
//! queries, cluster management) used by routers, the CLI and other nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use sentinel_core::incident::{Actor, IncidentStatus, Silence};
use sentinel_core::{FieldError, Severity};
use sentinel_proto::not_leader;
use sentinel_proto::v1::bootstrap_server::Bootstrap;
use sentinel_proto::v1::node_server::Node;
use sentinel_proto::v1::raft_transport_server::RaftTransport;
use sentinel_proto::v1::{
    self as pb, change_silence_request, AnomaliesReply, AnomaliesRequest, BaselinesReply,
    BaselinesRequest, CampaignReply, CampaignRequest, ChangeIncidentReply, ChangeIncidentRequest,
    ChangeSilenceReply, ChangeSilenceRequest, ClusterStatusReply, ClusterStatusRequest,
    Consistency, DecommissionReply, DecommissionRequest, EventResult, IdentifyReply,
    IdentifyRequest, IncidentAction, IncidentsReply, IncidentsRequest, IngestReply, IngestRequest,
    JoinReply, JoinRequest, LocalStatusReply, LocalStatusRequest, Outcome, RaftMessage,
    SilencesReply, SilencesRequest, TelemetryReply, TelemetryRequest,
};
use sentinel_proto::ErrorCode;
use sentinel_storage_engine::{
    Command, EventOutcome, IncidentQuery, IngestBatch, IngestEvent, Response as ShardResponse,
    SourcePartition, TelemetryQuery, TypeConfig,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::host::{known_leader, leads, Host, Replica};
use crate::metrics::NodeMetrics;
use crate::registry::{MetaConfig, METADATA_GROUP};
use crate::transport::{decode, encode};
use crate::{membership, status};

/// Most records one query answers.
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// The gRPC services of one node.
#[derive(Clone)]
pub struct NodeService {
    host: Arc<Host>,
    metrics: NodeMetrics,
}

impl NodeService {
    /// Services over `host`.
    pub fn new(host: Arc<Host>, metrics: NodeMetrics) -> NodeService {
        NodeService { host, metrics }
    }

    /// The shard's local replica, or the status sending the caller elsewhere.
    fn replica(&self, shard: u32) -> Result<Arc<Replica>, Status> {
        let shards = self.host.shard_count();
        if shard >= shards {
            return Err(ErrorCode::InvalidParameters.status(format!(
                "shard: {shard} does not exist (the cluster has {shards} shards)"
            )));
        }
        self.host.replica(shard).ok_or_else(|| {
            let leader = self.host.placement().preferred_leader(shard);
            self.not_leader(shard, leader)
        })
    }

    fn not_leader(&self, shard: u32, leader: Option<u64>) -> Status {
        let address = leader.and_then(|id| self.host.address(id).map(|a| (id, a)));
        not_leader(shard, address.as_ref().map(|(id, a)| (*id, a.as_str())))
    }

    /// Maps an openraft error: a redirect to the leader, or unavailable.
    fn raft_error<E>(&self, shard: u32, error: RaftError<u64, E>) -> Status
    where
        E: std::error::Error
            + openraft::TryAsRef<openraft::error::ForwardToLeader<u64, openraft::BasicNode>>,
    {
        match error.forward_to_leader::<openraft::BasicNode>() {
            Some(forward) => self.not_leader(shard, forward.leader_id),
            None => ErrorCode::Unavailable.status(format!("shard {shard}: {error}")),
        }
    }

    /// The shard's local replica when it leads the shard, or the status sending the
    /// caller to the leader.
    fn leading_replica(&self, shard: u32) -> Result<Arc<Replica>, Status> {
        let replica = self.replica(shard)?;
        let metrics = replica.metrics();
        if !leads(&metrics, self.host.id) {
            return Err(self.not_leader(shard, known_leader(&metrics)));
        }
        quiet(&replica)?;
        Ok(replica)
    }

    /// Proposes an operator's `command` through the shard's Raft log: the incident or
    /// silence it answered as JSON, or `None` when the shard has no such one.
    async fn propose(&self, shard: u32, command: Command) -> Result<Option<String>, Status> {
        let replica = self.leading_replica(shard)?;
        let written = replica
            .raft
            .client_write(command)
            .await
            .map_err(|e| self.raft_error(shard, e))?;
        match written.data {
            ShardResponse::Incident(incident) => Ok(Some(to_json(&incident))),
            ShardResponse::Silence(silence) => Ok(Some(to_json(&silence))),
            ShardResponse::NotFound(_) => Ok(None),
            ShardResponse::Rejected(reason) => Err(ErrorCode::InvalidParameters.status(reason)),
            other => Err(ErrorCode::Internal.status(format!("unexpected answer {other:?}"))),
        }
    }

    /// Waits until a read on this replica sees every write acknowledged before it.
    async fn read_barrier(&self, replica: &Replica, consistency: i32) -> Result<(), Status> {
        if consistency == Consistency::StaleOk as i32 {
            return Ok(());
        }
        quiet(replica)?;
        replica
            .raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| self.raft_error(replica.shard, e))
    }

    /// The local replica a Raft message for shard `group` goes to, created when missing.
    async fn raft_replica(&self, group: u32) -> Result<Arc<Replica>, Status> {
        let shards = self.host.shard_count();
        if shards != 0 && group >= shards {
            return Err(
                ErrorCode::InvalidParameters.status(format!("group: shard {group} does not exist"))
            );
        }
        self.host
            .ensure_replica(group)
            .await
            .map_err(|e| ErrorCode::Unavailable.status(e.to_string()))
    }

    /// The local replica that answers the vote request `vote` for shard `group`: one that
    /// is open, and, where replicas of the shard were dropped (the shard moved away), only
    /// for a candidate whose log is at least as long as the longest they held. A vote
    /// never opens a replica, and one opened again empty votes as if it had kept its log:
    /// otherwise a candidate of a stale configuration, whose log misses committed entries,
    /// could win.
    fn voting_replica(&self, group: u32, vote: &VoteRequest<u64>) -> Result<Arc<Replica>, Status> {
        let replica = self.host.replica(group).ok_or_else(|| {
            ErrorCode::WrongNode.status(format!("group: no replica of shard {group} here"))
        })?;
        let dropped = self
            .host
            .engine
            .dropped_log_id(group)
            .map_err(|e| ErrorCode::Unavailable.status(e.to_string()))?;
        if vote.last_log_id < dropped {
            return Err(ErrorCode::Conflict.status(format!(
                "last_log_id: behind the log a replica of shard {group} held here"
            )));
        }
        Ok(replica)
    }

    fn raft_reply(&self, group: u32, payload: Vec<u8>) -> Response<RaftMessage> {
        Response::new(RaftMessage {
            group,
            from: self.host.id,
            payload,
            to: None,
        })
    }
}

/// `message`, when it is addressed to `member` (`to` is unset from nodes that predate
/// it): messages for an earlier member at this address, whose data directory was lost,
/// are refused rather than answered with another member's vote or log.
fn addressed(request: Request<RaftMessage>, member: u64) -> Result<RaftMessage, Status> {
    let message = request.into_inner();
    match message.to {
        Some(to) if to != member => {
            Err(ErrorCode::WrongNode
                .status(format!("to: this is member {member}, not member {to}")))
        }
        _ => Ok(message),
    }
}

fn payload<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, Status> {
    decode(&message.payload)
        .map_err(|e| ErrorCode::InvalidParameters.status(format!("payload: {e}")))
}

fn refused(errors: Vec<FieldError>) -> EventResult {
    EventResult {
        outcome: Outcome::Rejected as i32,
        errors: errors
            .into_iter()
            .map(|e| pb::FieldError {
                field: e.field,
                problem: e.problem,
            })
            .collect(),
        applied_as: String::new(),
    }
}

fn limit(requested: u32, default: usize) -> usize {
    match requested {
        0 => default,
        n => (n as usize).min(MAX_QUERY_LIMIT),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

fn storage_error(e: sentinel_storage_engine::Error) -> Status {
    ErrorCode::Internal.status(format!("storage: {e}"))
}

/// Refuses a request with `problems` (`field: problem` each), if any.
fn check_fields(problems: Vec<String>) -> Result<(), Status> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ErrorCode::InvalidParameters.status(problems.join("; ")))
    }
}

/// The incident status a request names (`None`: every status).
fn incident_status(name: &str) -> Result<Option<IncidentStatus>, String> {
    match name {
        "" => Ok(None),
        "open" => Ok(Some(IncidentStatus::Open)),
        "resolved" => Ok(Some(IncidentStatus::Resolved)),
        other => Err(format!("status: `{other}` is not one of open, resolved")),
    }
}

/// The command a [`ChangeIncidentRequest`] asks for, or every problem with its fields.
fn incident_command(request: ChangeIncidentRequest) -> Result<Command, Status> {
    let mut problems = Vec::new();
    if request.incident_id.trim().is_empty() {
        problems.push("incident_id: must not be empty".to_owned());
    }
    let action = IncidentAction::try_from(request.action).ok();
    if matches!(action, None | Some(IncidentAction::Unspecified)) {
        problems.push(format!(
            "action: {} is not acknowledge (1) or resolve (2)",
            request.action
        ));
    }
    let actor = request.actor.unwrap_or_default();
    if actor.by.trim().is_empty() {
        problems.push("actor.by: must say who changes the incident".to_owned());
    }
    if actor.at_ms < 0 {
        problems.push(format!("actor.at_ms: {} is negative", actor.at_ms));
    }
    check_fields(problems)?;
    let actor = Actor {
        by: actor.by,
        at_ms: match actor.at_ms {
            0 => crate::now_ms(),
            at_ms => at_ms,
        },
        comment: actor.comment,
    };
    let incident_id = request.incident_id;
    Ok(match action {
        Some(IncidentAction::Resolve) => Command::ResolveIncident { incident_id, actor },
        _ => Command::AcknowledgeIncident { incident_id, actor },
    })
}

/// The command a [`ChangeSilenceRequest`] asks for, or every problem with its fields.
fn silence_command(request: ChangeSilenceRequest) -> Result<Command, Status> {
    if request.at_ms < 0 {
        return Err(
            ErrorCode::InvalidParameters.status(format!("at_ms: {} is negative", request.at_ms))
        );
    }
    match request.change {
        None => {
            Err(ErrorCode::InvalidParameters.status("change: either add or expire is required"))
        }
        Some(change_silence_request::Change::Add(json)) => {
            let silence: Silence = serde_json::from_str(&json).map_err(|e| {
                ErrorCode::InvalidParameters.status(format!("add: not a silence: {e}"))
            })?;
            let command = Command::AddSilence(silence);
            command
                .check()
                .map_err(|problem| ErrorCode::InvalidParameters.status(format!("add.{problem}")))?;
            Ok(command)
        }
        Some(change_silence_request::Change::Expire(silence_id)) => {
            if silence_id.trim().is_empty() {
                return Err(ErrorCode::InvalidParameters.status("expire: must not be empty"));
            }
            Ok(Command::ExpireSilence {
                silence_id,
                at_ms: match request.at_ms {
                    0 => crate::now_ms(),
                    at_ms => at_ms,
                },
            })
        }
    }
}

/// Checks the request as a whole: batch size, source and offsets.
fn check_ingest(request: &IngestRequest, max_events: usize) -> Result<(), Status> {
    if request.events.len() > max_events {
        return Err(ErrorCode::InvalidParameters.status(format!(
            "events: {} events in one batch, the most is {max_events}",
            request.events.len()
        )));
    }
    if let Some(source) = &request.source {
        let mut problems = Vec::new();
        if source.topic.is_empty() {
            problems.push("source.topic: must not be empty".to_string());
        }
        if source.partition < 0 {
            problems.push(format!(
                "source.partition: {} is negative",
                source.partition
            ));
        }
        let mut previous = None;
        for (i, event) in request.events.iter().enumerate() {
            match event.offset {
                None => problems.push(format!("events[{i}].offset: required with a source")),
                Some(offset) if previous.is_some_and(|p| offset <= p) => {
                    problems.push(format!("events[{i}].offset: {offset} does not increase"))
                }
                Some(offset) => previous = Some(offset),
            }
        }
        if !problems.is_empty() {
            return Err(ErrorCode::InvalidParameters.status(problems.join("; ")));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestReply>, Status> {
        let request = request.into_inner();
        check_ingest(&request, self.host.config.ingest.max_batch_events)?;
        let replica = self.leading_replica(request.shard)?;
        let shards = self.host.shard_count();
        self.metrics
            .events_received
            .inc_by(request.events.len() as u64);
        let mut results = Vec::with_capacity(request.events.len());
        let mut accepted = Vec::new();
        for input in &request.events {
            match self
                .host
                .intake
                .prepare(&input.event, request.shard, shards)
            {
                Ok((event, values)) => {
                    results.push(None);
                    accepted.push(IngestEvent {
                        offset: input.offset,
                        event,
                        values,
                    });
                }
                Err(problems) => {
                    self.metrics.events_rejected.inc();
                    results.push(Some(refused(problems)));
                }
            }
        }
        let mut alerts_raised = 0;
        if !accepted.is_empty() {
            let batch = IngestBatch {
                received_ms: crate::now_ms(),
                source: request.source.map(|s| SourcePartition {
                    topic: s.topic,
                    partition: s.partition,
                }),
                events: accepted,
            };
            let started = Instant::now();
            let written = replica
                .raft
                .client_write(Command::Ingest(batch))
                .await
                .map_err(|e| self.raft_error(request.shard, e))?;
            self.metrics
                .ingest_seconds
                .observe(started.elapsed().as_secs_f64());
            let outcome = match written.data {
                ShardResponse::Ingested(outcome) => outcome,
                ShardResponse::Rejected(reason) => {
                    return Err(ErrorCode::InvalidParameters.status(reason))
                }
                other => {
                    return Err(ErrorCode::Internal.status(format!("unexpected answer {other:?}")))
                }
            };
            alerts_raised = outcome.alerts.len() as u32;
            let mut outcomes = outcome.events.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                let mut applied_as = String::new();
                let outcome = match outcomes.next() {
                    Some(EventOutcome::Applied) => Outcome::Applied,
                    Some(EventOutcome::AppliedAs(derived)) => {
                        applied_as = derived;
                        Outcome::AppliedAs
                    }
                    Some(EventOutcome::DuplicateOffset) => Outcome::DuplicateOffset,
                    Some(EventOutcome::DuplicateEventId) => Outcome::DuplicateEventId,
                    Some(EventOutcome::KeyLimit(limit)) => {
                        self.metrics.count_key_limit(limit);
                        *slot = Some(refused(vec![FieldError::new(
                            limit.field(),
                            limit.to_string(),
                        )]));
                        continue;
                    }
                    None => return Err(ErrorCode::Internal.status("fewer outcomes than events")),
                };
                self.metrics.count_outcome(outcome);
                *slot = Some(EventResult {
                    outcome: outcome as i32,
                    errors: Vec::new(),
                    applied_as,
                });
            }
        }
        Ok(Response::new(IngestReply {
            results: results.into_iter().map(Option::unwrap_or_default).collect(),
            alerts_raised,
        }))
    }

    async fn telemetry(
        &self,
        request: Request<TelemetryRequest>,
    ) -> Result<Response<TelemetryReply>, Status> {
        let request = request.into_inner();
        let mut problems = Vec::new();
        if request.until_ms != 0 && request.until_ms < request.from_ms {
            problems.push("until_ms: before from_ms");
        }
        if request.service.is_empty() && !request.model.is_empty() {
            problems.push("model: needs service");
        }
        if !problems.is_empty() {
            return Err(ErrorCode::InvalidParameters.status(problems.join("; ")));
        }
        let replica = self.replica(request.shard)?;
        self.read_barrier(&replica, request.consistency).await?;
        let page = replica
            .reader
            .telemetry(&TelemetryQuery {
                service: Some(request.service).filter(|s| !s.is_empty()),
                model: Some(request.model).filter(|s| !s.is_empty()),
                from_ms: request.from_ms,
                until_ms: if request.until_ms == 0 {
                    i64::MAX
                } else {
                    request.until_ms
                },
                cursor: Some(request.cursor).filter(|s| !s.is_empty()),
                limit: limit(request.limit, 100),
            })
            .map_err(|e| match e {
                sentinel_storage_engine::Error::InvalidCursor => {
                    ErrorCode::InvalidParameters.status(format!("cursor: {e}"))
                }
                e => storage_error(e),
            })?;
        Ok(Response::new(TelemetryReply {
            records: page.items.iter().map(to_json).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn anomalies(
        &self,
        request: Request<AnomaliesRequest>,
    ) -> Result<Response<AnomaliesReply>, Status> {
        let request = request.into_inner();
        let severity = match request.severity.as_str() {
            "" => None,
            name => Some(
                serde_json::from_value::<Severity>(serde_json::Value::String(name.to_owned()))
                    .map_err(|_| {
                        ErrorCode::InvalidParameters.status(format!(
                            "severity: `{name}` is not one of low, medium, high, critical"
                        ))
                    })?,
            ),
        };
        let replica = self.replica(request.shard)?;
        self.read_barrier(&replica, request.consistency).await?;
        let before = request
            .before_ms
            .map(|at_ms| (at_ms, request.before_alert_id.as_str()));
        let alerts = replica
            .reader
            .anomalies_before(
                severity,
                request.since_ms,
                before,
                limit(request.limit, 100),
            )
            .map_err(storage_error)?;
        Ok(Response::new(AnomaliesReply {
            alerts: alerts.iter().map(to_json).collect(),
        }))
    }

    async fn baselines(
        &self,
        request: Request<BaselinesRequest>,
    ) -> Result<Response<BaselinesReply>, Status> {
        let request = request.into_inner();
        let replica = self.replica(request.shard)?;
        self.read_barrier(&replica, request.consistency).await?;
        let after = Some((request.after_service.as_str(), request.after_model.as_str()))
            .filter(|(service, _)| !service.is_empty());
        let baselines = replica.reader.baselines_after(
            Some(request.service.as_str()).filter(|s| !s.is_empty()),
            Some(request.model.as_str()).filter(|s| !s.is_empty()),
            after,
            match request.limit {
                0 => usize::MAX,
                n => n as usize,
            },
        );
        Ok(Response::new(BaselinesReply {
            baselines: baselines.iter().map(to_json).collect(),
        }))
    }

    async fn incidents(
        &self,
        request: Request<IncidentsRequest>,
    ) -> Result<Response<IncidentsReply>, Status> {
        let request = request.into_inner();
        let status =
            incident_status(&request.status).map_err(|e| ErrorCode::InvalidParameters.status(e))?;
        let replica = self.replica(request.shard)?;
        self.read_barrier(&replica, request.consistency).await?;
        let incidents = replica
            .reader
            .incidents(&IncidentQuery {
                status,
                service: Some(request.service).filter(|s| !s.is_empty()),
                model: Some(request.model).filter(|s| !s.is_empty()),
                incident_id: Some(request.incident_id).filter(|s| !s.is_empty()),
                since_ms: request.since_ms,
                before: request
                    .before_ms
                    .map(|at_ms| (at_ms, request.before_incident_id)),
                limit: limit(request.limit, 100),
            })
            .map_err(storage_error)?;
        Ok(Response::new(IncidentsReply {
            incidents: incidents.iter().map(to_json).collect(),
        }))
    }

    async fn change_incident(
        &self,
        request: Request<ChangeIncidentRequest>,
    ) -> Result<Response<ChangeIncidentReply>, Status> {
        let request = request.into_inner();
        let shard = request.shard;
        let command = incident_command(request)?;
        let incident = self.propose(shard, command).await?;
        Ok(Response::new(ChangeIncidentReply {
            found: incident.is_some(),
            incident: incident.unwrap_or_default(),
        }))
    }

    async fn silences(
        &self,
        request: Request<SilencesRequest>,
    ) -> Result<Response<SilencesReply>, Status> {
        let request = request.into_inner();
        let replica = self.replica(request.shard)?;
        self.read_barrier(&replica, request.consistency).await?;
        Ok(Response::new(SilencesReply {
            silences: replica.reader.silences().iter().map(to_json).collect(),
        }))
    }

    async fn change_silence(
        &self,
        request: Request<ChangeSilenceRequest>,
    ) -> Result<Response<ChangeSilenceReply>, Status> {
        let request = request.into_inner();
        let shard = request.shard;
        let command = silence_command(request)?;
        let silence = self.propose(shard, command).await?;
        Ok(Response::new(ChangeSilenceReply {
            found: silence.is_some(),
            silence: silence.unwrap_or_default(),
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        Ok(Response::new(
            status::cluster_status(&self.host, request.into_inner().digests).await,
        ))
    }

    async fn local_status(
        &self,
        request: Request<LocalStatusRequest>,
    ) -> Result<Response<LocalStatusReply>, Status> {
        status::local_status(&self.host, request.into_inner().digests)
            .await
            .map(Response::new)
            .map_err(storage_error)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let request = request.into_inner();
        if request.address.is_empty() || !request.address.contains(':') {
            return Err(ErrorCode::InvalidParameters
                .status(format!("address: `{}` is not host:port", request.address)));
        }
        membership::admit(&self.host, request)
            .await
            .map(Response::new)
    }

    async fn decommission(
        &self,
        request: Request<DecommissionRequest>,
    ) -> Result<Response<DecommissionReply>, Status> {
        membership::decommission(&self.host, request.into_inner().node_id)
            .await
            .map(Response::new)
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        let request = request.into_inner();
        let replica = self.replica(request.group)?;
        if !request.hand_over {
            self.host
                .may_take_leadership()
                .map_err(|why| ErrorCode::Conflict.status(format!("not standing yet: {why}")))?;
        }
        let delay = Duration::from_millis(u64::from(request.delay_ms));
        if delay.is_zero() {
            replica
                .raft
                .trigger()
                .elect()
                .await
                .map_err(|e| ErrorCode::Unavailable.status(e.to_string()))?;
        } else {
            let raft = replica.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(e) = raft.trigger().elect().await {
                    tracing::info!(shard = request.group, error = %e, "standing for a hand-over failed");
                }
            });
        }
        Ok(Response::new(CampaignReply {}))
    }
}

/// Refuses a write or a leadership-confirming read while the replica hands its leadership
/// over: either would refresh the voters' leases the hand-over waits out.
fn quiet(replica: &Replica) -> Result<(), Status> {
    if replica.hand_over.in_progress() {
        return Err(ErrorCode::Unavailable.status(format!(
            "shard {}: its leadership is being handed over; try again",
            replica.shard
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Bootstrap for NodeService {
    async fn identify(
        &self,
        _: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyReply>, Status> {
        Ok(Response::new(IdentifyReply {
            ordinal: self.host.config.node.id,
            fresh: false,
            member: self.host.id,
            cluster_id: self.host.registry().cluster_id,
        }))
    }
}

#[tonic::async_trait]
impl RaftTransport for NodeService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let message = addressed(request, self.host.id)?;
        let reply = if message.group == METADATA_GROUP {
            encode(&self.host.meta.append_entries(payload(&message)?).await)
        } else {
            let replica = self.raft_replica(message.group).await?;
            encode(&replica.raft.append_entries(payload(&message)?).await)
        };
        Ok(self.raft_reply(message.group, reply))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = addressed(request, self.host.id)?;
        let reply = if message.group == METADATA_GROUP {
            encode(&self.host.meta.vote(payload(&message)?).await)
        } else {
            let vote = payload(&message)?;
            let replica = self.voting_replica(message.group, &vote)?;
            encode(&replica.raft.vote(vote).await)
        };
        Ok(self.raft_reply(message.group, reply))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let message = addressed(request, self.host.id)?;
        let (installed, reply) = if message.group == METADATA_GROUP {
            let chunk: InstallSnapshotRequest<MetaConfig> = payload(&message)?;
            let bytes = chunk.data.len() as u64;
            let reply = self.host.meta.install_snapshot(chunk).await;
            (reply.is_ok().then_some(bytes), encode(&reply))
        } else {
            let replica = self.raft_replica(message.group).await?;
            let chunk: InstallSnapshotRequest<TypeConfig> = payload(&message)?;
            let bytes = chunk.data.len() as u64;
            let reply = replica.raft.install_snapshot(chunk).await;
            (reply.is_ok().then_some(bytes), encode(&reply))
        };
        if let Some(bytes) = installed {
            self.metrics.snapshot_bytes_received.inc_by(bytes);
        }
        Ok(self.raft_reply(message.group, reply))
    }
}
