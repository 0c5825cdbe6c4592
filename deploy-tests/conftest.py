"""What the deployment tests share: the repository's paths, the Kubernetes objects every
kustomize overlay and every value set of the Helm chart render, and the helpers that read them.

Rendering happens once per session: `kubectl kustomize` for the overlays, Helm's own engine
(the helm-python-sdk bindings of Helm's Go SDK, no helm binary) for the chart.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "sentinel"
OVERLAYS = ROOT / "statefulset" / "overlays"
NODE_EXAMPLE = ROOT / "node" / "sentinel-node.example.yaml"
ROUTER_EXAMPLE = ROOT / "router" / "sentinel-router.example.yaml"

# The oldest and newest Kubernetes versions the manifests support (the chart's kubeVersion
# says the same: the pod-index label the node id comes from is there from 1.28 on).
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]

RELEASE = "sentinel"
NAMESPACE = "sentinel"

# Value sets the chart must render, each a way an operator installs it.
VALUE_SETS = {
    "default": {},
    "production": {
        "image": {"repository": "registry.example.com/sentinel", "tag": "1.2.3"},
        "cluster": {"shards": 64, "replicas": 3},
        "nodes": {
            "count": 5,
            "antiAffinity": "required",
            "storage": {"size": "100Gi", "storageClass": "fast-ssd"},
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
            "env": [{"name": "SENTINEL_RETENTION__TELEMETRY_HOURS", "value": "48"}],
        },
        "routers": {"autoscaling": {"minReplicas": 3, "maxReplicas": 20}},
        "secrets": {"existingSecret": "sentinel-secrets"},
        "kafka": {"brokers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]},
        "redis": {"enabled": True},
        "alerting": {
            "rabbitmq": {"enabled": True},
            "webhooks": [
                {"name": "oncall", "url": "https://hooks.example.com/a", "secretKey": "oncall-secret"},
                {"name": "chat", "url": "https://chat.example.com/b", "secretKey": "chat-secret"},
            ],
        },
        "influxdb": {"enabled": True, "url": "http://influxdb.monitoring:8086"},
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
            "dashboards": {"enabled": True, "namespace": "grafana"},
        },
    },
    "formed cluster": {"nodes": {"count": 4, "seedOrdinals": [0, 1, 2]}},
    "development": {
        "nodes": {"count": 1, "storage": {"size": "1Gi"}},
        "cluster": {"shards": 8, "replicas": 1},
        "routers": {"replicas": 1, "autoscaling": {"enabled": False}},
        "tls": {"enabled": False},
        "networkPolicy": {"enabled": False},
    },
}

# Value sets values.schema.json must refuse, with a piece of the message Helm prints.
INVALID_VALUE_SETS = {
    "no nodes": ({"nodes": {"count": 0}}, "at '/nodes/count': minimum: got 0, want 1"),
    "an even replica count": ({"cluster": {"replicas": 2}}, "at '/cluster/replicas': value must be one of 1, 3, 5, 7"),
    "a size without a unit": ({"nodes": {"storage": {"size": "100"}}}, "at '/nodes/storage/size'"),
    "a misspelt key": ({"nodes": {"antiAfinity": "required"}}, "additional properties 'antiAfinity' not allowed"),
    "an unknown anti-affinity": ({"nodes": {"antiAffinity": "always"}}, "at '/nodes/antiAffinity'"),
    "a short grace period": ({"nodes": {"terminationGracePeriodSeconds": 5}}, "at '/nodes/terminationGracePeriodSeconds'"),
    "a sink without its Secret": ({"alerting": {"rabbitmq": {"enabled": True}}}, "at '/secrets/existingSecret'"),
    "a webhook that is not HTTP": (
        {
            "secrets": {"existingSecret": "s"},
            "alerting": {"webhooks": [{"name": "x", "url": "ftp://x", "secretKey": "k"}]},
        },
        "at '/alerting/webhooks/0/url'",
    ),
    "a broker without a port": ({"kafka": {"brokers": ["kafka"]}}, "at '/kafka/brokers/0'"),
    "an empty image repository": ({"image": {"repository": ""}}, "at '/image/repository'"),
}

# Kinds of the Prometheus Operator, whose schemas Kubernetes does not ship.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kustomize(overlay: Path) -> list[dict]:
    """The objects `kubectl kustomize` builds from `overlay`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize v5) is needed to build the overlays")
    built = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
    assert built.returncode == 0, f"kubectl kustomize {overlay} failed:\n{built.stderr}"
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def render_chart(values: dict, release: str = RELEASE) -> dict[str, str]:
    """The chart's templates rendered with `values` by Helm's engine, by template path."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=copy.deepcopy(values), name=release, namespace=NAMESPACE, is_install=True)


def objects_of(rendered: dict[str, str]) -> list[dict]:
    """The Kubernetes objects of a chart rendering (NOTES.txt is text, not an object)."""
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="session")
def overlays() -> dict[str, list[dict]]:
    """Every overlay's objects, by overlay name."""
    return {path.name: kustomize(path) for path in sorted(OVERLAYS.iterdir()) if path.is_dir()}


@pytest.fixture(scope="session")
def charts() -> dict[str, list[dict]]:
    """The chart's objects for every valid value set, by value-set name."""
    return {name: objects_of(render_chart(values)) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def renders(overlays, charts) -> dict[str, list[dict]]:
    """Every rendering: the kustomize base and overlays and the chart's value sets."""
    every = {"kustomize base": kustomize(ROOT / "statefulset" / "base")}
    every.update({f"kustomize {name}": objs for name, objs in overlays.items()})
    every.update({f"helm {name}": objs for name, objs in charts.items()})
    return every


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    """The one object of `kind` called `name`."""
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def one(objects: list[dict], kind: str) -> dict:
    """The only object of `kind`."""
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def workloads(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(object, pod spec) of every StatefulSet, Deployment and bare Pod."""
    pods = []
    for o in objects:
        if o["kind"] in ("StatefulSet", "Deployment"):
            pods.append((o, o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            pods.append((o, o["spec"]))
    return pods


def env_of(container: dict) -> dict[str, dict]:
    """A container's environment entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches `labels`."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present = labels.get(expression["key"])
        if expression["operator"] == "In" and present not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and present in expression["values"]:
            return False
    return True


def documented_variables() -> dict[str, set[str]]:
    """The SENTINEL_* variables docs/configuration.md lists, for `node` and for `router`
    (the "Both" section counts for each)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    found = {"node": set(), "router": set()}
    for section in sections:
        names = set(re.findall(r"`(SENTINEL_[A-Z0-9_]+)`", section))
        if section.startswith("Node"):
            found["node"] |= names
        elif section.startswith("Router"):
            found["router"] |= names
        elif section.startswith("Both"):
            found["node"] |= names
            found["router"] |= names
    return found
