"""Policy of every rendered workload, from kustomize and from Helm alike: what a StatefulSet
of Raft nodes and a Deployment of routers must have to run safely, and that what each pod
would start with (its environment with the downward-API values filled in, over the
configuration file its ConfigMap mounts) is a configuration that fits the objects around
it: the node id is the ordinal, advertised names resolve to the headless Service, ports
match the probes and Services, every secret comes from a Secret.
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import documented_variables, env_of, of_kind, selects, workloads

# The variables the `sentinel` query client reads; nodes and routers ignore them.
CLIENT_VARIABLES = {"SENTINEL_ENDPOINT", "SENTINEL_API_KEY"}
DOCUMENTED = documented_variables()


def pod_environment(container: dict, pod_name: str, labels: dict) -> dict[str, str]:
    """The environment Kubernetes gives `container` in pod `pod_name` with `labels`:
    downward-API fields filled in, $(VAR) references expanded, secrets as placeholders."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), entry["value"])
            continue
        source = entry["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = f"<secret {ref['name']}/{ref['key']}>"
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            if path == "metadata.name":
                env[name] = pod_name
            elif label:
                assert label[1] in labels, f"{name} reads label {label[1]}, which the pod does not have"
                env[name] = labels[label[1]]
            else:
                pytest.fail(f"{name}: unexpected downward-API field {path}")
        else:
            pytest.fail(f"{name}: unexpected value source {source}")
    return env


def configuration(objects: list[dict], pod: dict, container: dict, env: dict[str, str]) -> dict:
    """The configuration the process would load: the file named by --config, read from the
    ConfigMap mounted there, with every SENTINEL_* variable applied as the loader does."""
    args = container["args"]
    path = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    directory, _, file = path.rpartition("/")
    assert directory in mounts, f"--config {path}: nothing is mounted at {directory}"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[directory])
    config_map = next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
    config = yaml.safe_load(config_map["data"][file])
    for name, value in env.items():
        if not name.startswith("SENTINEL_") or name in CLIENT_VARIABLES:
            continue
        parts = name.removeprefix("SENTINEL_").lower().split("__")
        at = config
        for part in parts[:-1]:
            assert isinstance(at, dict), f"{name}: the parent of {part} is not a section"
            at = at.setdefault(part, {})
        assert isinstance(at, dict), f"{name}: the parent is not a section"
        parsed = yaml.safe_load(value) if not value.startswith("<secret") else value
        at[parts[-1]] = parsed
    return config


def port_of(address: str) -> int:
    """The port of `host:port`."""
    return int(address.rsplit(":", 1)[1])


def container_port(container: dict, name_or_number) -> int:
    """A port given by number or by the container's port name."""
    if isinstance(name_or_number, int):
        return name_or_number
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name_or_number)


def from_secret(container: dict, variable: str) -> bool:
    """Whether `variable` is set in `container` from a Secret."""
    entry = env_of(container).get(variable)
    return entry is not None and "secretKeyRef" in entry.get("valueFrom", {})


def check_transport(config: dict, container: dict, pod: dict) -> None:
    """Exactly one of mutual TLS and insecure mode, and TLS files in a mounted Secret."""
    security = config["security"]
    assert (security.get("tls") is not None) != bool(security.get("insecure")), (
        f"exactly one of security.tls and security.insecure must be set: {security}"
    )
    if security.get("tls"):
        secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
        secret_mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets}
        for key in ("cert_file", "key_file", "ca_file"):
            directory = security["tls"][key].rpartition("/")[0]
            assert directory in secret_mounts, f"security.tls.{key} is not in a mounted Secret"


def test_every_pod_runs_unprivileged_with_a_fixed_user_and_bounded_resources(renders):
    for name, objects in renders.items():
        kinds = sorted(obj["kind"] for obj, _ in workloads(objects))
        expected = ["Deployment", "Pod", "StatefulSet"] if name.startswith("helm") else ["Deployment", "StatefulSet"]
        assert kinds == expected, f"{name}: workloads {kinds}"
        for obj, pod in workloads(objects):
            where = f"{name}: {obj['kind']} {obj['metadata']['name']}"
            security = pod["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert isinstance(security["runAsUser"], int) and security["runAsUser"] > 0, where
            assert isinstance(security["runAsGroup"], int) and security["runAsGroup"] > 0, where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            assert pod["enableServiceLinks"] is False, f"{where}: service links would add unknown SENTINEL_* keys"
            assert pod["automountServiceAccountToken"] is False, where
            for container in pod["containers"]:
                c = container["securityContext"]
                assert c["readOnlyRootFilesystem"] is True, where
                assert c["allowPrivilegeEscalation"] is False, where
                assert c["capabilities"]["drop"] == ["ALL"], where
                assert "add" not in c["capabilities"], where
                resources = container["resources"]
                assert {"cpu", "memory"} <= set(resources["requests"]), where
                assert "memory" in resources["limits"], where


def test_nodes_are_a_parallel_statefulset_with_volumes_probes_budget_and_spread(renders):
    for name, objects in renders.items():
        (sts,) = of_kind(objects, "StatefulSet")
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["podManagementPolicy"] == "Parallel", name
        assert selects(spec["selector"], labels), name
        (service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == spec["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", f"{name}: the StatefulSet's Service must be headless"
        assert service["spec"]["publishNotReadyAddresses"] is True, name
        assert selects({"matchLabels": service["spec"]["selector"]}, labels), name
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], name
        assert re.fullmatch(r"[0-9]+(Mi|Gi|Ti)", claim["spec"]["resources"]["requests"]["storage"]), name
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live", name
        # SIGTERM hands leaderships over within 2 × raft.election_timeout_max_ms (6 s by
        # default), then syncs RocksDB: docs/operations.md asks for at least 30 s.
        assert pod["terminationGracePeriodSeconds"] >= 30, name
        (budget,) = [b for b in of_kind(objects, "PodDisruptionBudget") if selects(b["spec"]["selector"], labels)]
        assert budget["spec"]["maxUnavailable"] == 1, name
        spread = pod["topologySpreadConstraints"]
        assert any(c["topologyKey"] == "topology.kubernetes.io/zone" and selects(c["labelSelector"], labels) for c in spread), name
        anti = pod["affinity"]["podAntiAffinity"]
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        assert any(t["topologyKey"] == "kubernetes.io/hostname" and selects(t["labelSelector"], labels) for t in terms), name


def test_production_renders_require_one_node_per_machine(renders):
    for name in ("kustomize production", "helm production"):
        (sts,) = of_kind(renders[name], "StatefulSet")
        anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"], name
        assert sts["spec"]["replicas"] == 5, name


def test_routers_are_two_or_more_behind_a_service_and_an_autoscaler(renders):
    for name, objects in renders.items():
        (deployment,) = of_kind(objects, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
        services = [s for s in of_kind(objects, "Service") if selects({"matchLabels": s["spec"]["selector"]}, labels)]
        assert len(services) == 1, name
        ports = {p["port"]: container_port(container, p["targetPort"]) for p in services[0]["spec"]["ports"]}
        assert ports == {8080: 8080, 7500: 7500}, name
        autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
        if name == "helm development":
            assert autoscalers == [] and deployment["spec"]["replicas"] == 1
            continue
        (hpa,) = autoscalers
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }, name
        assert hpa["spec"]["minReplicas"] >= 2, name
        assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"], name
        assert "replicas" not in deployment["spec"] or deployment["spec"]["replicas"] >= 2, name


def test_node_pods_start_as_their_ordinal_at_their_stable_name(renders):
    for name, objects in renders.items():
        (sts,) = of_kind(objects, "StatefulSet")
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        base = sts["metadata"]["name"]
        service = spec["serviceName"]
        replicas = spec["replicas"]
        # The first three pods (every pod, when fewer): pod 0 creates the cluster once they
        # all answer with empty volumes, and with several seeds pod 0 losing its volume
        # joins again instead of founding a second cluster.
        seeds = [f"{base}-{n}.{service}:7400" for n in range(min(3, replicas))]
        for ordinal in range(replicas):
            pod_name = f"{base}-{ordinal}"
            labels = dict(spec["template"]["metadata"]["labels"])
            labels["apps.kubernetes.io/pod-index"] = str(ordinal)
            labels["statefulset.kubernetes.io/pod-name"] = pod_name
            env = pod_environment(container, pod_name, labels)
            config = configuration(objects, pod, container, env)
            node = config["node"]
            where = f"{name}, pod {pod_name}"
            assert node["id"] == ordinal, where
            grpc = container_port(container, "grpc")
            assert port_of(node["listen"]) == grpc, where
            assert node["advertise"] == f"{pod_name}.{service}:{grpc}", where
            assert node["seeds"] == seeds, where
            data = next(m for m in container["volumeMounts"] if m["name"] == "data")
            assert node["data_dir"] == data["mountPath"], where
            assert [c["metadata"]["name"] for c in spec["volumeClaimTemplates"]] == ["data"], where
            http = port_of(config["http"]["listen"])
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert container_port(container, container[probe]["httpGet"]["port"]) == http, where
            check_transport(config, container, pod)
            if config["alerting"].get("rabbitmq") is not None:
                assert from_secret(container, "SENTINEL_ALERTING__RABBITMQ__URL"), where
            for hook in config["alerting"].get("webhooks") or []:
                assert from_secret(container, hook["secret_env"]), f"{where}: webhook {hook['name']}"
            if config.get("export") is not None:
                assert from_secret(container, config["export"]["token_env"]), where


def test_routers_start_with_seeds_that_are_node_pods(renders):
    for name, objects in renders.items():
        (sts,) = of_kind(objects, "StatefulSet")
        node_names = {
            f"{sts['metadata']['name']}-{n}.{sts['spec']['serviceName']}:7400" for n in range(sts["spec"]["replicas"])
        }
        (deployment,) = of_kind(objects, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = pod_environment(container, "router-abc", deployment["spec"]["template"]["metadata"]["labels"])
        config = configuration(objects, pod, container, env)
        seeds = config["router"]["seeds"]
        assert seeds and set(seeds) <= node_names, f"{name}: router seeds {seeds} are not node pods {node_names}"
        assert port_of(config["http"]["listen"]) == container_port(container, "http") == 8080, name
        assert port_of(config["grpc"]["listen"]) == container_port(container, "grpc") == 7500, name
        check_transport(config, container, pod)
        if config["cache"]["redis_url"]:
            assert from_secret(container, "SENTINEL_CACHE__REDIS_URL"), name
        if config["auth"]["api_keys"]:
            assert from_secret(container, "SENTINEL_AUTH__API_KEYS"), name


def test_every_sentinel_variable_is_a_documented_configuration_key(renders):
    for name, objects in renders.items():
        for obj, pod in workloads(objects):
            component = pod["containers"][0]["args"][0]
            allowed = DOCUMENTED.get(component, set()) | CLIENT_VARIABLES
            for container in pod["containers"]:
                for variable in env_of(container):
                    if variable.startswith("SENTINEL_"):
                        assert variable in allowed, (
                            f"{name}: {obj['kind']} {obj['metadata']['name']} sets {variable}, "
                            f"which docs/configuration.md does not list for `sentinel {component}`"
                        )


def test_secrets_are_read_from_secrets_only(renders):
    secret_like = re.compile(r"(SECRET|TOKEN|PASSWORD|API_KEY|REDIS_URL|RABBITMQ__URL)")
    for name, objects in renders.items():
        assert of_kind(objects, "Secret") == [], f"{name}: Secrets are the operator's, never rendered"
        for obj, pod in workloads(objects):
            for container in pod["containers"]:
                for variable, entry in env_of(container).items():
                    if secret_like.search(variable):
                        assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: {variable} is not from a Secret"


def test_network_policies_limit_the_node_port_to_nodes_and_routers_and_metrics_to_monitoring(renders):
    for name, objects in renders.items():
        policies = of_kind(objects, "NetworkPolicy")
        if name == "helm development":
            assert policies == []
            continue
        (sts,) = of_kind(objects, "StatefulSet")
        (deployment,) = of_kind(objects, "Deployment")
        node_labels = sts["spec"]["template"]["metadata"]["labels"]
        router_labels = deployment["spec"]["template"]["metadata"]["labels"]
        (node_policy,) = [p for p in policies if selects(p["spec"]["podSelector"], node_labels)]
        assert node_policy["spec"]["policyTypes"] == ["Ingress"], name
        rules = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in node_policy["spec"]["ingress"]}
        assert set(rules) == {(7400,), (9400,)}, name
        grpc_peers = rules[(7400,)]
        assert all(list(peer) == ["podSelector"] for peer in grpc_peers), name
        assert any(selects(p["podSelector"], node_labels) for p in grpc_peers), name
        assert any(selects(p["podSelector"], router_labels) for p in grpc_peers), name
        stranger = {"app.kubernetes.io/name": "other", "app.kubernetes.io/component": "router"}
        assert not any(selects(p["podSelector"], stranger) for p in grpc_peers), name
        (metrics_peer,) = rules[(9400,)]
        assert list(metrics_peer) == ["namespaceSelector"] and metrics_peer["namespaceSelector"]["matchLabels"], name
        (router_policy,) = [p for p in policies if selects(p["spec"]["podSelector"], router_labels)]
        (public,) = router_policy["spec"]["ingress"]
        assert sorted(p["port"] for p in public["ports"]) == [7500, 8080] and "from" not in public, name
