"""The Helm chart, through Helm's own engine: strict lint, rendering of every value set,
values.schema.json refusing bad values with a message that names the key, the same objects
as the kustomize base, NOTES.txt, the `helm test` pod and the monitoring objects."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest
import yaml

from conftest import (
    CHART,
    INVALID_VALUE_SETS,
    KUBERNETES_VERSIONS,
    RELEASE,
    VALUE_SETS,
    env_of,
    kustomize,
    named,
    objects_of,
    of_kind,
    one,
    render_chart,
    ROOT,
)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_chart_lints_clean_in_strict_mode(values, version):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", INVALID_VALUE_SETS.values(), ids=INVALID_VALUE_SETS.keys())
def test_the_schema_refuses_bad_values_naming_the_key(case):
    values, message = case
    with pytest.raises(helm.HelmValuesError) as refused:
        render_chart(values)
    assert message in str(refused.value)
    report = helm.lint(CHART, values, strict=True)
    assert any(message in error for error in report["errors"]), report


def test_seeds_must_be_pods_of_the_release():
    with pytest.raises(helm.HelmRenderError) as refused:
        render_chart({"nodes": {"count": 3, "seedOrdinals": [0, 3]}})
    assert "nodes.seedOrdinals: pod 3 does not exist with nodes.count 3" in str(refused.value)


def test_the_default_release_renders_the_objects_of_the_kustomize_base(charts):
    def names(objects):
        return sorted(
            (o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]) if o["kind"] == "ConfigMap" else o["metadata"]["name"])
            for o in objects
        )

    base = kustomize(ROOT / "statefulset" / "base")
    chart = [o for o in charts["default"] if o["kind"] != "Pod"]
    assert names(chart) == names(base)


def test_values_reach_the_pods(charts):
    objects = charts["production"]
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "100Gi"
    (node,) = sts["spec"]["template"]["spec"]["containers"]
    assert node["image"] == "registry.example.com/sentinel:1.2.3"
    env = env_of(node)
    assert env["SENTINEL_CLUSTER__SHARDS"]["value"] == "64"
    assert env["SENTINEL_RETENTION__TELEMETRY_HOURS"]["value"] == "48"
    assert json.loads(env["SENTINEL_ALERTING__WEBHOOKS"]["value"]) == [
        {"name": "oncall", "url": "https://hooks.example.com/a", "secret_env": "WEBHOOK_SECRET_0"},
        {"name": "chat", "url": "https://chat.example.com/b", "secret_env": "WEBHOOK_SECRET_1"},
    ]
    assert env["WEBHOOK_SECRET_1"]["valueFrom"]["secretKeyRef"] == {"name": "sentinel-secrets", "key": "chat-secret"}
    assert env["SENTINEL_EXPORT__URL"]["value"] == "http://influxdb.monitoring:8086"
    assert env["INFLUXDB_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "influxdb-token"
    assert env["SENTINEL_ALERTING__RABBITMQ__URL"]["valueFrom"]["secretKeyRef"]["key"] == "rabbitmq-url"
    (router,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    router_env = env_of(router)
    assert json.loads(router_env["SENTINEL_KAFKA__BROKERS"]["value"]) == ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
    assert router_env["SENTINEL_CACHE__REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    assert router_env["SENTINEL_AUTH__API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_sinks_are_off_unless_configured(charts):
    (node,) = one(charts["default"], "StatefulSet")["spec"]["template"]["spec"]["containers"]
    env = env_of(node)
    assert env["SENTINEL_ALERTING__RABBITMQ"]["value"] == "null"
    assert env["SENTINEL_ALERTING__WEBHOOKS"]["value"] == "[]"
    assert env["SENTINEL_EXPORT"]["value"] == "null"


def test_another_release_name_renames_every_object_and_address():
    objects = objects_of(render_chart({}, release="prod"))
    sts = one(objects, "StatefulSet")
    assert sts["metadata"]["name"] == "prod-sentinel" and sts["spec"]["serviceName"] == "prod-sentinel"
    (router,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert json.loads(env_of(router)["SENTINEL_ROUTER__SEEDS"]["value"]) == [
        f"prod-sentinel-{n}.prod-sentinel:7400" for n in range(3)
    ]
    assert {o["metadata"]["name"].startswith("prod-sentinel") for o in objects} == {True}


def test_notes_tell_how_to_reach_the_api_and_check_the_cluster():
    notes = render_chart({})[f"{RELEASE}/templates/NOTES.txt"]
    assert "sentinel cluster status --endpoint http://127.0.0.1:7500" in notes
    assert "port-forward service/sentinel-router 8080 7500" in notes
    assert "http://sentinel-router.sentinel.svc:8080" in notes
    assert "helm test sentinel" in notes
    assert "WARNING" not in notes
    assert "WARNING: tls.enabled is false" in render_chart({"tls": {"enabled": False}})[f"{RELEASE}/templates/NOTES.txt"]


def test_helm_test_runs_cluster_status_against_the_release_routers(charts):
    for name, objects in charts.items():
        pod = one(objects, "Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test", name
        (container,) = pod["spec"]["containers"]
        args = container["args"]
        assert args[:3] == ["cluster", "status", "--endpoint"], name
        endpoint = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", args[3])
        service = named(objects, "Service", endpoint[1])
        assert int(endpoint[2]) in [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"], name
        assert pod["spec"]["restartPolicy"] == "Never", name


def test_monitoring_objects_appear_only_when_asked(charts):
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert of_kind(charts["default"], kind) == []
    assert [c for c in of_kind(charts["default"], "ConfigMap") if "dashboard" in c["metadata"]["name"]] == []
    objects = charts["monitoring"]
    monitors = of_kind(objects, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["sentinel-node", "sentinel-router"]
    for monitor in monitors:
        component = monitor["metadata"]["name"].removeprefix("sentinel-")
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": f"sentinel-{component}"}]
        services = [
            s
            for s in of_kind(objects, "Service")
            if s["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert any(endpoint["port"] in [p["name"] for p in s["spec"]["ports"]] for s in services)
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dashboards = sorted(
        (c for c in of_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"),
        key=lambda c: c["metadata"]["name"],
    )
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files) >= 4
    for config_map, file in zip(dashboards, files):
        assert config_map["metadata"]["namespace"] == "grafana"
        assert json.loads(config_map["data"][file.name]) == json.loads(file.read_text())
