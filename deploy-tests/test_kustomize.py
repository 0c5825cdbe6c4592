"""The kustomize overlays: each builds, carries the example configurations unchanged, and
is what its name promises (dev: 3 nodes, small volumes, no Secret needed; production:
5 nodes, one per machine, large volumes, TLS and the sinks with their Secrets)."""

from __future__ import annotations

from conftest import NODE_EXAMPLE, OVERLAYS, ROOT, ROUTER_EXAMPLE, env_of, of_kind, one, workloads


def test_the_overlays_are_dev_and_production(overlays):
    assert sorted(overlays) == ["dev", "production"]
    assert sorted(p.name for p in OVERLAYS.iterdir()) == ["dev", "production"]


def test_the_configuration_copies_are_the_annotated_examples():
    for copy, example in [
        (ROOT / "statefulset/base/config/sentinel-node.yaml", NODE_EXAMPLE),
        (ROOT / "statefulset/base/config/sentinel-router.yaml", ROUTER_EXAMPLE),
        (ROOT / "helm/sentinel/files/sentinel-node.yaml", NODE_EXAMPLE),
        (ROOT / "helm/sentinel/files/sentinel-router.yaml", ROUTER_EXAMPLE),
    ]:
        assert copy.read_bytes() == example.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {example.relative_to(ROOT)}: copy the example over it"
        )


def test_the_config_maps_hold_the_examples_and_roll_the_pods_when_they_change(overlays):
    for name, objects in overlays.items():
        maps = {c["metadata"]["name"]: c for c in of_kind(objects, "ConfigMap")}
        node = next(c for n, c in maps.items() if n.startswith("sentinel-node-config-"))
        router = next(c for n, c in maps.items() if n.startswith("sentinel-router-config-"))
        assert node["data"] == {"sentinel-node.yaml": NODE_EXAMPLE.read_text()}, name
        assert router["data"] == {"sentinel-router.yaml": ROUTER_EXAMPLE.read_text()}, name
        # The generated name carries a hash of the content, and the pods refer to it.
        used = {v["configMap"]["name"] for _, pod in workloads(objects) for v in pod["volumes"] if "configMap" in v}
        assert used == {node["metadata"]["name"], router["metadata"]["name"]}, name


def test_dev_runs_three_small_nodes_without_any_secret(overlays):
    objects = overlays["dev"]
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    for _, pod in workloads(objects):
        assert not [v for v in pod["volumes"] if "secret" in v]
        for container in pod["containers"]:
            env = env_of(container)
            assert env["SENTINEL_SECURITY__INSECURE"]["value"] == "true"
            assert env["SENTINEL_SECURITY__TLS"]["value"] == "null"
            refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
            assert all(ref.get("optional") is True for ref in refs), refs


def test_production_runs_five_large_nodes_with_tls_and_the_sinks_of_the_configuration(overlays):
    objects = overlays["production"]
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert not {"SENTINEL_ALERTING__RABBITMQ", "SENTINEL_ALERTING__WEBHOOKS", "SENTINEL_EXPORT"} & set(env)
    for variable, key in [
        ("SENTINEL_ALERTING__RABBITMQ__URL", "rabbitmq-url"),
        ("ONCALL_WEBHOOK_SECRET", "oncall-webhook-secret"),
        ("INFLUXDB_TOKEN", "influxdb-token"),
    ]:
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "sentinel-secrets", "key": key}
    assert {"name": "tls", "secret": {"secretName": "sentinel-node-tls"}} in pod["volumes"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
