"""Builds Sentinel's Grafana dashboards with Grafana's schema library (grafana-foundation-sdk)
and writes them to helm/sentinel/dashboards/, where the chart ships them as ConfigMaps.

Run after changing a dashboard: `python helm/dashboards.py` (with the package installed, as
scripts/setup --tests does in the deploy-tests environment); deploy-tests checks that the
committed files are what this builds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).resolve().parent / "sentinel" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NODES = 'job="sentinel-node"'
ROUTERS = 'job="sentinel-router"'


def query(expr: str, legend: str) -> Dataquery:
    """One Prometheus query of a panel."""
    return Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def series(title: str, unit: str, description: str, *queries: Dataquery) -> Timeseries:
    """A time-series panel of the given queries."""
    panel = (
        Timeseries()
        .title(title)
        .unit(unit)
        .description(description)
        .datasource(DATASOURCE)
        .span(12)
        .height(8)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    for ref, q in zip("ABCDEFGH", queries):
        panel = panel.with_target(q.ref_id(ref))
    return panel


def stat(title: str, unit: str, description: str, expr: str) -> Stat:
    """A single-number panel."""
    return (
        Stat()
        .title(title)
        .unit(unit)
        .description(description)
        .datasource(DATASOURCE)
        .span(6)
        .height(4)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(expr, title).ref_id("A"))
    )


def dashboard(uid: str, title: str, description: str) -> Dashboard:
    """A dashboard with the Prometheus data source as its variable."""
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["sentinel"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )


def cluster_overview() -> Dashboard:
    """Nodes, routers, Raft groups and where leadership sits."""
    return (
        dashboard(
            "sentinel-cluster",
            "Sentinel / Cluster overview",
            "Nodes and routers up, Raft groups with and without leaders, replicas per node.",
        )
        .with_row(Row("Health"))
        .with_panel(stat("Nodes up", "none", "Nodes Prometheus scrapes.", f"sum(up{{{NODES}}})"))
        .with_panel(stat("Routers up", "none", "Routers Prometheus scrapes.", f"sum(up{{{ROUTERS}}})"))
        .with_panel(
            stat(
                "Groups without a leader",
                "none",
                "Raft groups (shards and metadata) none of whose replicas leads.",
                f"count(max by (group) (sentinel_raft_is_leader{{{NODES}}}) == 0) or vector(0)",
            )
        )
        .with_panel(
            stat(
                "Open incidents",
                "none",
                "Incidents open across every shard (counted at each shard's leader).",
                f"sum(sentinel_incidents_open{{{NODES}}}) or vector(0)",
            )
        )
        .with_row(Row("Placement"))
        .with_panel(
            series(
                "Shard replicas per node",
                "none",
                "Shard replicas each node hosts; placement keeps them even.",
                query(f"sentinel_shard_replicas{{{NODES}}}", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Leaderships per node",
                "none",
                "Raft groups each node leads.",
                query(f"sum by (instance) (sentinel_raft_is_leader{{{NODES}}})", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Rebalance actions",
                "ops",
                "Membership and leadership steps of the reconcilers, by action.",
                query(
                    f"sum by (action) (rate(sentinel_rebalance_actions_total{{{NODES}}}[$__rate_interval]))",
                    "{{action}}",
                ),
            )
        )
        .with_row(Row("Resources"))
        .with_panel(
            series(
                "CPU per node",
                "percentunit",
                "CPU time the node process uses, in cores.",
                query(f"rate(process_cpu_seconds_total{{{NODES}}}[$__rate_interval])", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Memory per node",
                "bytes",
                "Resident memory of the node process.",
                query(f"process_resident_memory_bytes{{{NODES}}}", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "File descriptors",
                "percentunit",
                "Open file descriptors as a share of the process's limit.",
                query(f"process_open_fds{{{NODES}}} / process_max_fds{{{NODES}}}", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "gRPC answers by code",
                "reqps",
                "Node gRPC answers by status code (FailedPrecondition: a redirect to the leader).",
                query(
                    f"sum by (code) (rate(sentinel_grpc_requests_total{{{NODES}}}[$__rate_interval]))",
                    "{{code}}",
                ),
            )
        )
    )


def ingestion() -> Dashboard:
    """Events through the routers and Kafka into the shards."""
    return (
        dashboard(
            "sentinel-ingestion",
            "Sentinel / Ingestion and Kafka",
            "Events accepted, rejected and failed; forwarding latency; Kafka consumption, lag and dead letters.",
        )
        .with_row(Row("Routers"))
        .with_panel(
            series(
                "Events",
                "ops",
                "Events acknowledged by shard leaders, rejected by validation, or given up on.",
                query(f"sum(rate(sentinel_router_events_forwarded_total{{{ROUTERS}}}[$__rate_interval]))", "forwarded"),
                query(f"sum(rate(sentinel_router_events_rejected_total{{{ROUTERS}}}[$__rate_interval]))", "rejected"),
                query(f"sum(rate(sentinel_router_events_failed_total{{{ROUTERS}}}[$__rate_interval]))", "failed"),
            )
        )
        .with_panel(
            series(
                "Forwarding latency",
                "s",
                "One ingest call to a shard leader, retries included.",
                query(
                    f"histogram_quantile(0.5, sum by (le) (rate(sentinel_router_forward_seconds_bucket{{{ROUTERS}}}[$__rate_interval])))",
                    "p50",
                ),
                query(
                    f"histogram_quantile(0.99, sum by (le) (rate(sentinel_router_forward_seconds_bucket{{{ROUTERS}}}[$__rate_interval])))",
                    "p99",
                ),
            )
        )
        .with_panel(
            series(
                "HTTP requests by status",
                "reqps",
                "REST requests by status code.",
                query(f"sum by (status) (rate(sentinel_router_requests_total{{{ROUTERS}}}[$__rate_interval]))", "{{status}}"),
            )
        )
        .with_panel(
            series(
                "Redirects and retries",
                "ops",
                "Calls redirected by NotLeader answers and calls retried after failures.",
                query(f"sum(rate(sentinel_router_not_leader_redirects_total{{{ROUTERS}}}[$__rate_interval]))", "redirects"),
                query(f"sum(rate(sentinel_router_retries_total{{{ROUTERS}}}[$__rate_interval]))", "retries"),
            )
        )
        .with_row(Row("Kafka"))
        .with_panel(
            series(
                "Messages read",
                "ops",
                "Kafka messages read, by topic.",
                query(f"sum by (topic) (rate(sentinel_router_kafka_messages_total{{{ROUTERS}}}[$__rate_interval]))", "{{topic}}"),
            )
        )
        .with_panel(
            series(
                "Consumer lag",
                "none",
                "Messages behind the high watermark, summed over partitions.",
                query(f"sum by (topic) (sentinel_router_kafka_consumer_lag{{{ROUTERS}}})", "{{topic}}"),
            )
        )
        .with_panel(
            series(
                "Dead letters",
                "ops",
                "Messages produced to <topic>.dlq, by topic and reason.",
                query(
                    f"sum by (topic, reason) (rate(sentinel_router_kafka_dead_letters_total{{{ROUTERS}}}[$__rate_interval]))",
                    "{{topic}} {{reason}}",
                ),
            )
        )
        .with_panel(
            series(
                "Commits and rebalances",
                "ops",
                "Offset commits by result and consumer-group rebalance events by kind.",
                query(f"sum by (result) (rate(sentinel_router_kafka_commits_total{{{ROUTERS}}}[$__rate_interval]))", "commit {{result}}"),
                query(f"sum by (kind) (rate(sentinel_router_kafka_rebalances_total{{{ROUTERS}}}[$__rate_interval]))", "rebalance {{kind}}"),
            )
        )
    )


def detection() -> Dashboard:
    """What detection finds and how notifications leave."""
    return (
        dashboard(
            "sentinel-detection",
            "Sentinel / Detection and alerts",
            "Anomalies and incidents, notifications, alert sinks and their breakers, InfluxDB export.",
        )
        .with_row(Row("Detection"))
        .with_panel(
            series(
                "Events applied",
                "ops",
                "Events applied by shards, and duplicates skipped, by outcome.",
                query(f"sum by (outcome) (rate(sentinel_events_processed_total{{{NODES}}}[$__rate_interval]))", "{{outcome}}"),
            )
        )
        .with_panel(
            series(
                "Anomalies delivered",
                "ops",
                "Notifications delivered by shard leaders, by severity.",
                query(f"sum by (severity) (rate(sentinel_anomalies_total{{{NODES}}}[$__rate_interval]))", "{{severity}}"),
            )
        )
        .with_panel(
            series(
                "Open incidents",
                "none",
                "Incidents open, per shard.",
                query(f"sum by (shard) (sentinel_incidents_open{{{NODES}}})", "shard {{shard}}"),
            )
        )
        .with_panel(
            series(
                "Keys with a baseline",
                "none",
                "(service, model) keys per shard, at the replica with the most.",
                query(f"max by (shard) (sentinel_shard_keys{{{NODES}}})", "shard {{shard}}"),
            )
        )
        .with_panel(
            series(
                "Detection time per batch",
                "s",
                "Mean time a shard replica spends applying an ingest batch (detection and the rows it writes), per node.",
                query(
                    f"rate(sentinel_detection_seconds_total{{{NODES}}}[$__rate_interval])"
                    f" / rate(sentinel_detection_batches_total{{{NODES}}}[$__rate_interval])",
                    "{{instance}}",
                ),
            )
        )
        .with_panel(
            series(
                "Folded and withheld",
                "ops",
                "Detector hits folded into an alert already open (dedup), and incident changes recorded without a notification; every replica counts them.",
                query(f"sum(rate(sentinel_alerts_folded_total{{{NODES}}}[$__rate_interval]))", "folded"),
                query(f"sum(rate(sentinel_notifications_withheld_total{{{NODES}}}[$__rate_interval]))", "withheld"),
            )
        )
        .with_row(Row("Delivery"))
        .with_panel(
            series(
                "Deliveries by sink",
                "ops",
                "Deliveries per sink and outcome.",
                query(
                    f"sum by (sink, outcome) (rate(sentinel_alert_deliveries_total{{{NODES}}}[$__rate_interval]))",
                    "{{sink}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Breakers open",
                "none",
                "1 while a sink's circuit breaker is open or half-open.",
                query(f"max by (sink) (sentinel_alert_breaker_open{{{NODES}}})", "{{sink}}"),
            )
        )
        .with_panel(
            series(
                "Outbox",
                "none",
                "Notifications waiting for delivery, per shard.",
                query(f"max by (shard) (sentinel_shard_outbox_pending{{{NODES}}})", "shard {{shard}}"),
            )
        )
        .with_panel(
            series(
                "Export",
                "ops",
                "Points accepted by InfluxDB by measurement, and failed write requests.",
                query(
                    f"sum by (measurement) (rate(sentinel_export_points_total{{{NODES}}}[$__rate_interval]))",
                    "{{measurement}}",
                ),
                query(f"sum(rate(sentinel_export_failures_total{{{NODES}}}[$__rate_interval]))", "failures"),
            )
        )
    )


def storage() -> Dashboard:
    """RocksDB, the data volume, and the Raft groups whose logs they hold."""
    return (
        dashboard(
            "sentinel-storage",
            "Sentinel / Storage and Raft",
            "RocksDB size, compaction and write stalls, the data volume, commit latency, apply lag, terms and leader changes.",
        )
        .with_row(Row("RocksDB"))
        .with_panel(
            series(
                "Data volume used",
                "percentunit",
                "Share of each node's data volume in use; a node stops when it is full.",
                query(
                    f"1 - sentinel_data_volume_available_bytes{{{NODES}}} / sentinel_data_volume_size_bytes{{{NODES}}}",
                    "{{instance}}",
                ),
            )
        )
        .with_panel(
            series(
                "RocksDB size",
                "bytes",
                "Bytes of live SST files and of memtables, per node.",
                query(f"sentinel_rocksdb_live_sst_bytes{{{NODES}}}", "{{instance}} SST"),
                query(f"sentinel_rocksdb_memtable_bytes{{{NODES}}}", "{{instance}} memtables"),
            )
        )
        .with_panel(
            series(
                "Pending compaction",
                "bytes",
                "Bytes compaction still has to rewrite; RocksDB slows writes from 64 GiB.",
                query(f"sentinel_rocksdb_pending_compaction_bytes{{{NODES}}}", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Write stalls",
                "Bps",
                "The rate RocksDB slows writes to (0 while it does not), and whether it stops them.",
                query(f"sentinel_rocksdb_delayed_write_rate_bytes{{{NODES}}}", "{{instance}} slowed to"),
                query(f"sentinel_rocksdb_write_stopped{{{NODES}}}", "{{instance}} stopped"),
            )
        )
        .with_row(Row("Raft"))
        .with_panel(
            series(
                "Snapshot transfers",
                "Bps",
                "Snapshot bytes each node sends (acknowledged) and installs, as replicas move.",
                query(f"rate(sentinel_snapshot_bytes_sent_total{{{NODES}}}[$__rate_interval])", "{{instance}} sent"),
                query(
                    f"rate(sentinel_snapshot_bytes_received_total{{{NODES}}}[$__rate_interval])",
                    "{{instance}} received",
                ),
            )
        )
        .with_panel(
            series(
                "Ingest commit latency",
                "s",
                "Propose to commit and apply of an ingest batch.",
                query(
                    f"histogram_quantile(0.5, sum by (le) (rate(sentinel_ingest_commit_seconds_bucket{{{NODES}}}[$__rate_interval])))",
                    "p50",
                ),
                query(
                    f"histogram_quantile(0.99, sum by (le) (rate(sentinel_ingest_commit_seconds_bucket{{{NODES}}}[$__rate_interval])))",
                    "p99",
                ),
            )
        )
        .with_panel(
            series(
                "Apply lag",
                "none",
                "Log entries received but not applied, worst replica per node.",
                query(f"max by (instance) (sentinel_raft_apply_lag{{{NODES}}})", "{{instance}}"),
            )
        )
        .with_panel(
            series(
                "Leader changes",
                "none",
                "Leader changes seen in 15 minutes, per group.",
                query(
                    f"sum by (group) (increase(sentinel_raft_leader_changes_total{{{NODES}}}[15m])) > 0",
                    "{{group}}",
                ),
            )
        )
        .with_panel(
            series(
                "Terms",
                "none",
                "Highest Raft term per group; a climbing term means repeated elections.",
                query(f"max by (group) (sentinel_raft_term{{{NODES}}})", "{{group}}"),
            )
        )
    )


DASHBOARDS = {
    "cluster-overview": cluster_overview,
    "ingestion": ingestion,
    "detection": detection,
    "storage": storage,
}


def render(build) -> str:
    """A dashboard as the JSON Grafana imports, its panels numbered, with a stable key order."""
    model = build().build()
    for number, panel in enumerate(model.panels, start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def main(output: Path) -> None:
    """Writes every dashboard into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (output / f"{name}.json").write_text(render(build))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT)
    print(json.dumps(sorted(DASHBOARDS)))
