//! The node's Prometheus metrics (`sentinel_*`), sampled Raft state included.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::http;
use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use sentinel_core::{Anomaly, NotificationKind};
use sentinel_proto::v1::Outcome;
use sentinel_storage_engine::{Engine, KeyLimit};
use tonic::Code;

use crate::host::Host;
use crate::process::ProcessStats;

/// Every metric family a node exports.
#[derive(Clone)]
pub struct NodeMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Events received by ingest calls on shard leaders.
    pub events_received: IntCounter,
    /// Events applied, and duplicates skipped, by outcome.
    pub events_processed: IntCounterVec,
    /// Events refused by parsing, validation or shard checks.
    pub events_rejected: IntCounter,
    /// Time from proposing an ingest batch to its commit and apply.
    pub ingest_seconds: Histogram,
    /// Membership and leadership actions taken by the reconciler.
    pub rebalance_actions: IntCounterVec,
    /// Snapshot bytes this node sent and its peers acknowledged.
    pub snapshot_bytes_sent: IntCounter,
    /// Snapshot bytes this node received and installed.
    pub snapshot_bytes_received: IntCounter,
    /// gRPC requests answered, by method and status code.
    grpc_requests: IntCounterVec,
    /// Alerts delivered by shard leaders, by severity and detector.
    anomalies: IntCounterVec,
    /// Notifications delivered by shard leaders, by event.
    notifications: IntCounterVec,
    /// Open incidents per shard led by this node.
    incidents_open: IntGaugeVec,
    /// Raft term per group.
    raft_term: IntGaugeVec,
    /// 1 where this node leads the group.
    raft_leader: IntGaugeVec,
    /// Leader changes seen per group.
    raft_leader_changes: IntCounterVec,
    /// Log entries received but not applied, per group.
    raft_apply_lag: IntGaugeVec,
    /// Events observed by detection per shard replica.
    shard_events: IntGaugeVec,
    /// Alerts raised per shard replica.
    shard_alerts: IntGaugeVec,
    /// Alerts waiting for delivery per shard replica.
    shard_outbox: IntGaugeVec,
    /// (service, model) keys with a baseline per shard replica.
    shard_keys: IntGaugeVec,
    /// Events refused because they would add a key beyond a bound, by bound.
    key_limit_refusals: IntCounterVec,
    /// Shard replicas hosted.
    replicas: IntGauge,
    /// What the node's RocksDB holds and whether it slows writes.
    rocksdb: RocksDbGauges,
    /// The file system of the data directory.
    volume: VolumeGauges,
    /// The process's CPU, memory and file descriptors.
    process: ProcessGauges,
    /// What the shard state machines' detection did on this node.
    detection: DetectionCounters,
}

/// Ingest batches applied on this node (every replica applies each batch), the time
/// detection took, and what it folded or withheld.
#[derive(Clone)]
struct DetectionCounters {
    batches: IntCounter,
    seconds: Counter,
    alerts_folded: IntCounter,
    notifications_withheld: IntCounter,
}

/// RocksDB's size and write-stall gauges.
#[derive(Clone)]
struct RocksDbGauges {
    live_sst_bytes: IntGauge,
    pending_compaction_bytes: IntGauge,
    memtable_bytes: IntGauge,
    write_stopped: IntGauge,
    delayed_write_rate: IntGauge,
}

/// Size and free space of the data directory's file system.
#[derive(Clone)]
struct VolumeGauges {
    size_bytes: IntGauge,
    available_bytes: IntGauge,
}

/// The standard `process_*` metrics.
#[derive(Clone)]
struct ProcessGauges {
    cpu_seconds: Counter,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
}

/// Raises `counter` to `total`, a count kept elsewhere since the process started.
fn raise(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Registers `metric` in `registry` and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl NodeMetrics {
    /// Registers every family in a new registry.
    pub fn new() -> prometheus::Result<NodeMetrics> {
        let registry = Registry::new();
        let events_received = IntCounter::new(
            "sentinel_events_received_total",
            "Events received by ingest calls on shard leaders",
        )?;
        registry.register(Box::new(events_received.clone()))?;
        let events_rejected = IntCounter::new(
            "sentinel_events_rejected_total",
            "Events refused by parsing, validation or shard checks",
        )?;
        registry.register(Box::new(events_rejected.clone()))?;
        let ingest_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sentinel_ingest_commit_seconds",
                "Time from proposing an ingest batch to its commit and apply",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
        )?;
        registry.register(Box::new(ingest_seconds.clone()))?;
        let replicas = IntGauge::new("sentinel_shard_replicas", "Shard replicas hosted")?;
        registry.register(Box::new(replicas.clone()))?;
        let int_gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help)?);
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help)?);
        let snapshot_bytes_sent = counter(
            "sentinel_snapshot_bytes_sent_total",
            "Snapshot bytes sent to peers and acknowledged by them",
        )?;
        let snapshot_bytes_received = counter(
            "sentinel_snapshot_bytes_received_total",
            "Snapshot bytes received from leaders and installed",
        )?;
        let gauge = |name: &str, help: &str| registered(&registry, Gauge::new(name, help)?);
        let rocksdb = RocksDbGauges {
            live_sst_bytes: int_gauge(
                "sentinel_rocksdb_live_sst_bytes",
                "Bytes of the SST files RocksDB's current version uses",
            )?,
            pending_compaction_bytes: int_gauge(
                "sentinel_rocksdb_pending_compaction_bytes",
                "Bytes compaction must rewrite to bring every level within its target (estimate)",
            )?,
            memtable_bytes: int_gauge(
                "sentinel_rocksdb_memtable_bytes",
                "Bytes held by RocksDB's memtables",
            )?,
            write_stopped: int_gauge(
                "sentinel_rocksdb_write_stopped",
                "1 while RocksDB stops writes (too many level-0 files, memtables or pending compaction bytes)",
            )?,
            delayed_write_rate: int_gauge(
                "sentinel_rocksdb_delayed_write_rate_bytes",
                "Bytes a second RocksDB slows writes to; 0 while it does not",
            )?,
        };
        let volume = VolumeGauges {
            size_bytes: int_gauge(
                "sentinel_data_volume_size_bytes",
                "Bytes of the file system holding the data directory",
            )?,
            available_bytes: int_gauge(
                "sentinel_data_volume_available_bytes",
                "Bytes the node may still write on the file system of its data directory",
            )?,
        };
        let process = ProcessGauges {
            cpu_seconds: registered(
                &registry,
                Counter::new(
                    "process_cpu_seconds_total",
                    "User and system CPU time spent in seconds",
                )?,
            )?,
            resident_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            )?,
            virtual_bytes: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            )?,
            open_fds: gauge("process_open_fds", "Number of open file descriptors")?,
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors")?,
        };
        let detection = DetectionCounters {
            batches: counter(
                "sentinel_detection_batches_total",
                "Ingest batches the shard replicas on this node applied",
            )?,
            seconds: registered(
                &registry,
                Counter::new(
                    "sentinel_detection_seconds_total",
                    "Time the shard replicas on this node spent applying ingest batches (detection and the rows it writes)",
                )?,
            )?,
            alerts_folded: counter(
                "sentinel_alerts_folded_total",
                "Detector hits folded into an alert already open (dedup) instead of raising another, on this node's replicas",
            )?,
            notifications_withheld: counter(
                "sentinel_notifications_withheld_total",
                "Incident changes recorded without a notification (silenced, or not worth one), on this node's replicas",
            )?,
        };
        let metrics = NodeMetrics {
            events_processed: counter_vec(
                &registry,
                "sentinel_events_processed_total",
                "Events applied, and duplicates skipped, by outcome",
                &["outcome"],
            )?,
            rebalance_actions: counter_vec(
                &registry,
                "sentinel_rebalance_actions_total",
                "Membership and leadership actions taken by the reconciler",
                &["action"],
            )?,
            grpc_requests: counter_vec(
                &registry,
                "sentinel_grpc_requests_total",
                "gRPC requests answered, by method and status code",
                &["method", "code"],
            )?,
            anomalies: counter_vec(
                &registry,
                "sentinel_anomalies_total",
                "Alerts delivered by shard leaders, by severity and detection method",
                &["severity", "detector"],
            )?,
            notifications: counter_vec(
                &registry,
                "sentinel_notifications_delivered_total",
                "Incident notifications delivered by shard leaders, by event (opened, escalated, resolved)",
                &["event"],
            )?,
            incidents_open: gauge_vec(
                &registry,
                "sentinel_incidents_open",
                "Open incidents per shard led by this node",
                &["shard"],
            )?,
            raft_term: gauge_vec(
                &registry,
                "sentinel_raft_term",
                "Raft term per group",
                &["group"],
            )?,
            raft_leader: gauge_vec(
                &registry,
                "sentinel_raft_is_leader",
                "1 where this node leads the group",
                &["group"],
            )?,
            raft_leader_changes: counter_vec(
                &registry,
                "sentinel_raft_leader_changes_total",
                "Leader changes seen per group",
                &["group"],
            )?,
            raft_apply_lag: gauge_vec(
                &registry,
                "sentinel_raft_apply_lag",
                "Log entries received but not yet applied, per group",
                &["group"],
            )?,
            shard_events: gauge_vec(
                &registry,
                "sentinel_shard_events_observed",
                "Events observed by detection per shard replica",
                &["shard"],
            )?,
            shard_alerts: gauge_vec(
                &registry,
                "sentinel_shard_alerts_raised",
                "Alerts raised per shard replica",
                &["shard"],
            )?,
            shard_outbox: gauge_vec(
                &registry,
                "sentinel_shard_outbox_pending",
                "Alerts waiting for delivery per shard replica",
                &["shard"],
            )?,
            shard_keys: gauge_vec(
                &registry,
                "sentinel_shard_keys",
                "(service, model) keys with a baseline per shard replica",
                &["shard"],
            )?,
            key_limit_refusals: counter_vec(
                &registry,
                "sentinel_key_limit_refusals_total",
                "Events refused because they would add a (service, model) key beyond a bound",
                &["limit"],
            )?,
            registry,
            events_received,
            events_rejected,
            ingest_seconds,
            replicas,
            snapshot_bytes_sent,
            snapshot_bytes_received,
            rocksdb,
            volume,
            process,
            detection,
        };
        // Every event's series exists from the start, so dashboards show it at zero.
        for event in [
            NotificationKind::Opened,
            NotificationKind::Escalated,
            NotificationKind::Resolved,
        ] {
            metrics.notifications.with_label_values(&[event.name()]);
        }
        Ok(metrics)
    }

    /// Counts one event's outcome.
    pub fn count_outcome(&self, outcome: Outcome) {
        let name = match outcome {
            Outcome::Applied => "applied",
            Outcome::AppliedAs => "applied_as",
            Outcome::DuplicateOffset => "duplicate_offset",
            Outcome::DuplicateEventId => "duplicate_event_id",
            Outcome::Rejected | Outcome::Unspecified => "rejected",
        };
        self.events_processed.with_label_values(&[name]).inc();
    }

    /// Counts one event refused by a key bound.
    pub fn count_key_limit(&self, limit: KeyLimit) {
        self.events_rejected.inc();
        self.key_limit_refusals
            .with_label_values(&[limit.name()])
            .inc();
    }

    /// A layer for the gRPC server counting every answer by method and status code.
    pub fn grpc_layer(&self) -> CountRequests {
        CountRequests {
            counter: self.grpc_requests.clone(),
        }
    }

    /// Counts one delivered outbox entry: by severity and method, and by event when it is
    /// a notification.
    pub fn count_delivered(&self, alert: &Anomaly, event: Option<NotificationKind>) {
        self.anomalies
            .with_label_values(&[alert.severity.name(), alert.detection_method.as_str()])
            .inc();
        if let Some(event) = event {
            self.notifications.with_label_values(&[event.name()]).inc();
        }
    }

    /// Samples the Raft and shard state of every group hosted on `host`.
    pub fn sample(&self, host: &Host) {
        let meta = host.meta.metrics().borrow().clone();
        let groups = std::iter::once(("metadata".to_owned(), meta)).chain(
            host.replicas()
                .into_iter()
                .map(|replica| {
                    let summary = replica.reader.summary();
                    let shard = replica.shard.to_string();
                    let metrics = replica.metrics();
                    if crate::host::leads(&metrics, host.id) {
                        self.incidents_open
                            .with_label_values(&[&shard])
                            .set(summary.open_incidents as i64);
                    } else {
                        // Summed over nodes, each shard counts once: at its leader.
                        let _ = self.incidents_open.remove_label_values(&[&shard]);
                    }
                    self.shard_events
                        .with_label_values(&[&shard])
                        .set(summary.events_observed as i64);
                    self.shard_alerts
                        .with_label_values(&[&shard])
                        .set(summary.alerts_raised as i64);
                    self.shard_outbox
                        .with_label_values(&[&shard])
                        .set(summary.outbox_pending as i64);
                    self.shard_keys
                        .with_label_values(&[&shard])
                        .set(summary.keys as i64);
                    (shard, metrics)
                })
                .collect::<Vec<_>>(),
        );
        let mut hosted = 0;
        for (group, metrics) in groups {
            hosted += 1;
            let term = self.raft_term.with_label_values(&[&group]);
            let leader = i64::from(crate::host::leads(&metrics, host.id));
            let was_leader = self.raft_leader.with_label_values(&[&group]);
            if was_leader.get() != leader || term.get() != metrics.current_term as i64 {
                self.raft_leader_changes.with_label_values(&[&group]).inc();
            }
            was_leader.set(leader);
            term.set(metrics.current_term as i64);
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            self.raft_apply_lag
                .with_label_values(&[&group])
                .set(metrics.last_log_index.unwrap_or(0).saturating_sub(applied) as i64);
        }
        self.replicas.set(hosted - 1);
        self.sample_storage(&host.engine);
        self.sample_process();
    }

    /// Samples the node's RocksDB and the file system of its data directory.
    fn sample_storage(&self, engine: &Engine) {
        let stats = engine.stats();
        let d = &self.detection;
        let read = |count: &std::sync::atomic::AtomicU64| count.load(Ordering::Relaxed);
        raise(&d.batches, read(&stats.ingest_batches));
        raise(&d.alerts_folded, read(&stats.alerts_folded));
        raise(
            &d.notifications_withheld,
            read(&stats.notifications_withheld),
        );
        let seconds = read(&stats.ingest_apply_nanos) as f64 / 1e9;
        d.seconds.inc_by((seconds - d.seconds.get()).max(0.0));
        match engine.rocksdb_stats() {
            Ok(stats) => {
                let g = &self.rocksdb;
                g.live_sst_bytes.set(stats.live_sst_bytes as i64);
                g.pending_compaction_bytes
                    .set(stats.pending_compaction_bytes as i64);
                g.memtable_bytes.set(stats.memtable_bytes as i64);
                g.write_stopped.set(i64::from(stats.write_stopped));
                g.delayed_write_rate.set(stats.delayed_write_rate as i64);
            }
            Err(e) => tracing::warn!(error = %e, "reading RocksDB's properties failed"),
        }
        match engine.volume_stats() {
            Ok(stats) => {
                self.volume.size_bytes.set(stats.size_bytes as i64);
                self.volume
                    .available_bytes
                    .set(stats.available_bytes as i64);
            }
            Err(e) => tracing::warn!(error = %e, "reading the data volume's size failed"),
        }
    }

    /// Samples the process's CPU time, memory and file descriptors.
    fn sample_process(&self) {
        match ProcessStats::read() {
            Ok(stats) => {
                let g = &self.process;
                g.cpu_seconds
                    .inc_by((stats.cpu_seconds - g.cpu_seconds.get()).max(0.0));
                g.resident_bytes.set(stats.resident_bytes as f64);
                g.virtual_bytes.set(stats.virtual_bytes as f64);
                g.open_fds.set(stats.open_fds as f64);
                g.max_fds.set(stats.max_fds as f64);
            }
            Err(e) => tracing::warn!(error = %e, "reading the process's figures failed"),
        }
    }
}

/// Counts gRPC answers by method and status code (see [`NodeMetrics::grpc_layer`]).
#[derive(Clone)]
pub struct CountRequests {
    counter: IntCounterVec,
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// A gRPC service whose answers are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counter: IntCounterVec,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned();
        let counter = self.counter.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let code = response_code(&response);
            // Unknown paths all answer Unimplemented; one label keeps them from
            // growing the metric without bound.
            let method = if code == Code::Unimplemented {
                "unknown"
            } else {
                method.as_str()
            };
            counter
                .with_label_values(&[method, &format!("{code:?}")])
                .inc();
            Ok(response)
        })
    }
}

/// The status of an answer: in the headers when it failed at once, otherwise Ok
/// (a streamed status arrives in trailers, after the count is taken).
fn response_code<R>(response: &http::Response<R>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}
