"""The dev overlay's manifests form a working cluster: every pod of the node StatefulSet and
of the router Deployment runs as a real `sentinel` process in a network namespace of its
own, started from the rendered objects alone (podspec.py), and the cluster is driven as an
operator would drive it: formed, fed, scaled out, restarted, its volumes lost, scaled in.

The scenarios are one story on one cluster, in order: run the module whole. It needs root
(namespaces), `ip`, `curl` with HTTP/2, `setpriv`, kubectl, and SENTINEL_BIN naming the
`sentinel` binary the pods run (a copy of target/debug/sentinel, say).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from conftest import OVERLAYS, kustomize, of_kind, one
from netns import Network
from nodestatus import cluster_status as node_cluster_status
from podspec import (
    Launch,
    Pod,
    claim_dir,
    deployment_pod,
    pod_dns_names,
    prepare,
    routed_services,
    service_names,
    statefulset_pod,
)

OVERLAY = OVERLAYS / "dev"
# Longest any one wait may take (a debug binary on 2 busy cores).
PATIENCE = 120
# Last address octets: node pod n at NODE_HOST + n, then the router and the test's client.
NODE_HOST, ROUTER_HOST, CLIENT_HOST = 10, 100, 200
KEYS = [("search", "gpt-4o"), ("chat", "claude-3"), ("summarize", "gpt-4o-mini"), ("support", "llama-3")]
CLIENT_ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def sentinel_binary() -> Path:
    """The binary SENTINEL_BIN names (the test fails, it never skips, without one)."""
    value = os.environ.get("SENTINEL_BIN")
    if not value:
        message = "SENTINEL_BIN is not set: name the sentinel binary the pods run (a copy of target/debug/sentinel)"
        pytest.fail(message, pytrace=False)
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"SENTINEL_BIN={value} is not an executable file", pytrace=False)
    return path


def require_machine() -> None:
    """Fails unless the test can make namespaces and has its tools."""
    if os.geteuid() != 0:
        pytest.fail("the cluster test needs root (network namespaces)", pytrace=False)
    missing = [tool for tool in ("ip", "curl", "setpriv", "kubectl") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the cluster test needs {', '.join(missing)}", pytrace=False)


def scaled(name: str, count: int) -> list[dict]:
    """The overlay as `kubectl scale statefulset <name> --replicas=<count>` leaves it."""
    with tempfile.TemporaryDirectory() as directory:
        kustomization = {
            "resources": [os.path.relpath(OVERLAY, directory)],
            "replicas": [{"name": name, "count": count}],
        }
        (Path(directory) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(Path(directory))


def rfc3339(seconds: float) -> str:
    """RFC 3339 UTC time with milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def flat_event(event_id: str, key: tuple[str, str], at: float, n: int) -> dict:
    """A flat-shape event (as the test kit, testkit/, makes them) with its id for idempotency."""
    service, model = key
    return {
        "timestamp": rfc3339(at),
        "service_name": service,
        "model_name": model,
        "latency_ms": 200.0 + 10 * (n % 7),
        "prompt_tokens": 400,
        "completion_tokens": 120,
        "total_tokens": 520,
        "user_id": "user-1",
        "request_id": event_id,
    }


def shards_held(status: dict, member: int) -> set[int]:
    """The shards with a replica on node `member`."""
    return {s["shard"] for s in status["shards"] if any(r["node"] == member for r in s["replicas"])}


def node_list(status: dict) -> list[tuple[int, str]]:
    """(id, address) of every node a status lists."""
    return sorted((n["id"], n["address"]) for n in status["nodes"])


class Sandbox:
    """The rendering's pods as processes on a private network, and the test's client there."""

    def __init__(self, binary: Path, network: Network, objects: list[dict], root: Path, logs: Path):
        self.binary, self.network, self.objects, self.root, self.logs = binary, network, objects, root, logs
        self.replicas = one(objects, "StatefulSet")["spec"]["replicas"]
        # One node pod more than the rendering has, for scaling out.
        self.nodes = {
            n: statefulset_pod(objects, n, network.add(f"sentinel-{n}", NODE_HOST + n))
            for n in range(self.replicas + 1)
        }
        self.router = deployment_pod(objects, network.add("router", ROUTER_HOST))
        network.add("client", CLIENT_HOST)
        self.service_hosts = self.plan_services()
        network.write_hosts(self.hosts_entries())
        self.processes: dict[str, subprocess.Popen] = {}
        self.launches: dict[str, Launch] = {}
        self.acknowledged: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()

    def plan_services(self) -> dict[str, str]:
        """Each Service with a cluster IP and the address of a pod it selects (no kube-proxy here)."""
        pods = [self.router, *self.nodes.values()]
        return {
            s["metadata"]["name"]: next(p.ip for p in pods if s in routed_services(p))
            for s in of_kind(self.objects, "Service")
            if s["spec"].get("clusterIP") != "None"
        }

    def hosts_entries(self) -> dict[str, list[str]]:
        """/etc/hosts of every namespace: the pods' names under the headless Service, the other Services."""
        entries = {pod.ip: pod_dns_names(pod) for pod in self.nodes.values()}
        for service, address in self.service_hosts.items():
            entries.setdefault(address, []).extend(service_names(service))
        return entries

    def member(self, pod: Pod) -> str:
        """The network member (namespace) of `pod`."""
        return "router" if pod is self.router else pod.name

    def start(self, pod: Pod) -> None:
        """Starts the pod's container as the kubelet would, its output appended to its log."""
        assert pod.name not in self.processes, f"{pod.name} is running"
        launch = prepare(pod, self.binary, self.root, self.service_hosts)
        with open(self.logs / f"{pod.name}.log", "a") as log:
            self.processes[pod.name] = subprocess.Popen(
                self.network.command(self.member(pod), launch.argv),
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.launches[pod.name] = launch

    def stop(self, pod: Pod) -> int:
        """Deletes the pod as the kubelet does (SIGTERM, SIGKILL after the grace period); its exit status."""
        process = self.processes.pop(pod.name)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=pod.spec.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def delete_claims(self, pod: Pod) -> None:
        """Deletes the pod's PersistentVolumeClaims: its next start gets empty volumes."""
        for template in pod.workload["spec"]["volumeClaimTemplates"]:
            shutil.rmtree(claim_dir(pod, self.root, template["metadata"]["name"]))

    def running_nodes(self) -> list[Pod]:
        """The node pods running, by ordinal."""
        return [pod for pod in self.nodes.values() if pod.name in self.processes]

    def advertised(self, pod: Pod) -> str:
        """The address the node pod registers under (node.advertise as it reads it)."""
        return self.launches[pod.name].setting("node", "advertise")

    def members(self, status: dict, pod: Pod) -> list[int]:
        """The ids a status lists at the pod's address."""
        return [n["id"] for n in status["nodes"] if n["address"] == self.advertised(pod)]

    def client(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        """Runs `argv` in the client's namespace (a timeout counts as a failed run)."""
        try:
            command = self.network.command("client", argv)
            return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=70, env=CLIENT_ENV)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", "timed out after 70 s")

    def router_url(self, port: str) -> str:
        """The router Service's URL for the container port called `port`."""
        (service,) = routed_services(self.router)
        return f"http://{service['metadata']['name']}:{self.router.port(port)}"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`sentinel <args>` against the router's gRPC API, answering JSON."""
        return self.client([str(self.binary), *args, "--endpoint", self.router_url("grpc"), "--output", "json"])

    def status(self) -> dict | None:
        """`sentinel cluster status` through the router (None when it fails)."""
        done = self.cli("cluster", "status")
        return json.loads(done.stdout) if done.returncode == 0 else None

    def node_status(self, pod: Pod, digests: bool = False) -> dict | None:
        """The node pod's own ClusterStatus, asked on its gRPC port (None when it gives none)."""
        address = f"{pod.ip}:{pod.port('grpc')}"
        return node_cluster_status(lambda argv: self.network.command("client", argv), address, digests)

    def rest(self, method: str, path: str, body: object = None) -> tuple[int, str]:
        """(HTTP status, body) of a call to the router's REST API (status 0: no answer)."""
        argv = ["curl", "-sS", "--max-time", "65", "-X", method, "-w", "\n%{http_code}"]
        argv.append(self.router_url("http") + path)
        if body is not None:
            argv += ["-H", "content-type: application/json", "--data-binary", "@-"]
        done = self.client(argv, json.dumps(body) if body is not None else None)
        text, _, code = done.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), text or done.stderr

    def ready(self, pod: Pod) -> bool:
        """Whether the pod's readinessProbe succeeds, asked as the kubelet does."""
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"]
        done = self.client([*argv, pod.probe_url("readinessProbe")])
        return done.stdout.isdigit() and 200 <= int(done.stdout) < 400

    def log_tails(self, lines: int = 10) -> str:
        """The end of every pod's log, for failure messages."""
        tails = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(tails)

    def assert_running(self) -> None:
        """Fails at once when a pod's process has exited."""
        exited = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if exited:
            pytest.fail(f"pods exited (status by pod): {exited}\n{self.log_tails()}", pytrace=False)

    def wait(self, check, what: str):
        """Polls `check` (-> value, problems) until it finds no problem; the value."""
        deadline = time.monotonic() + PATIENCE
        while True:
            value, problems = check()
            if not problems:
                return value
            self.assert_running()
            if time.monotonic() > deadline:
                more = f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else ""
                listed = "\n  ".join(problems[:10]) + more
                pytest.fail(f"waited {PATIENCE} s for {what}; still:\n  {listed}\n{self.log_tails()}", pytrace=False)
            time.sleep(1)

    def problems(self, status: dict | None, pods: list[Pod]) -> list[str]:
        """Why `status` is not a converged cluster of exactly `pods` (none when it is)."""
        if status is None:
            return ["no cluster status"]
        launch = self.launches[pods[0].name]
        shards, replicas = launch.setting("cluster", "shards"), launch.setting("cluster", "replicas")
        found = []
        listed, expected = sorted(n["address"] for n in status["nodes"]), sorted(self.advertised(p) for p in pods)
        if listed != expected:
            found.append(f"nodes at {listed}, expected {expected}")
        found += [f"node {n['id']} is {n['state']}" for n in status["nodes"] if n["state"] != "active"]
        counts = (status["shard_count"], len(status["shards"]), status["replication_factor"])
        if counts != (shards, shards, replicas):
            found.append(f"(shard count, shards listed, replicas) {counts}, configured {shards}, {replicas}")
        size = min(replicas, len(pods))
        for shard in status["shards"]:
            roles = {r["node"]: r["role"] for r in shard["replicas"]}
            voters = sorted(n for n, role in roles.items() if role == "voter")
            if shard["leader"] is None:
                found.append(f"shard {shard['shard']} has no leader")
            elif len(roles) != size or len(voters) != size or voters != sorted(shard["desired"]):
                found.append(f"shard {shard['shard']}: replicas {roles}, desired {shard['desired']}")
        return found

    def wait_healthy(self, pods: list[Pod], what: str, extra=lambda status: []) -> dict:
        """Waits until the router shows a converged cluster of exactly `pods`, every pod and the router ready."""

        def check():
            unready = [f"{p.name} is not ready" for p in [*pods, self.router] if not self.ready(p)]
            status = self.status()
            found = self.problems(status, pods) + unready
            return status, found + (extra(status) if status is not None else [])

        return self.wait(check, what)

    def wait_digests_agree(self, pods: list[Pod]) -> dict:
        """Waits until every shard's replicas report one state digest (asked of the first pod); its status."""

        def check():
            status = self.node_status(pods[0], digests=True)
            found = self.problems(status, pods)
            for shard in status["shards"] if status else []:
                digests = {r["digest"] for r in shard["replicas"]}
                if len(digests) != 1 or "" in digests:
                    found.append(f"shard {shard['shard']}: digests {sorted(digests)}")
            return status, found

        return self.wait(check, "every shard's replicas to agree on their state digest")

    def post_events(self, prefix: str, count: int) -> None:
        """Posts `count` events through the router's REST API; remembers the acknowledged ids."""
        now = time.time()
        events = [flat_event(f"{prefix}-{n}", KEYS[n % len(KEYS)], now + n / 1000, n) for n in range(count)]
        code, body = self.rest("POST", "/api/v1/events", events)
        assert code == 200, f"POST /api/v1/events answered {code}: {body}"
        results = json.loads(body)["results"]
        assert [r["status"] for r in results] == ["applied"] * count, results
        self.acknowledged |= {r["event_id"]: (e["service_name"], e["model_name"]) for e, r in zip(events, results)}

    def pages(self, path: str, records: str) -> list[dict]:
        """Every record of a paged REST query, following next_cursor."""
        found, cursor = [], None
        while True:
            query = f"{path}&cursor={urllib.parse.quote(cursor)}" if cursor else path
            code, body = self.rest("GET", query)
            assert code == 200, f"GET {query} answered {code}: {body}"
            page = json.loads(body)
            found += page[records]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def assert_counted_once(self) -> None:
        """Every acknowledged event is stored once (telemetry) and observed once (baselines)."""
        records = self.pages("/api/v1/telemetry?hours=1&limit=1000", "records")
        stored = Counter(r["event"]["event_id"] for r in records)
        acknowledged = Counter(self.acknowledged.keys())
        assert stored == acknowledged, f"stored twice or more: {stored - acknowledged}; missing: {acknowledged - stored}"
        baselines = self.pages("/api/v1/baselines?limit=1000", "baselines")
        observed = {(b["service_name"], b["model"]): b["events"] for b in baselines}
        assert observed == dict(Counter(self.acknowledged.values()))

    def decommission(self, member: int) -> None:
        """`sentinel cluster decommission`, again until it exits 5: the node has left."""

        def check():
            done = self.cli("cluster", "decommission", str(member))
            answer = f"exit {done.returncode}: {done.stdout.strip()}{done.stderr.strip()}"
            return None, [] if done.returncode == 5 else [answer]

        self.wait(check, f"node {member} to leave the cluster")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    """The dev overlay's network, addresses and names, torn down whatever the tests do."""
    binary = sentinel_binary()
    require_machine()
    objects = kustomize(OVERLAY)
    with ExitStack() as stack:
        network = stack.enter_context(Network(f"snt-{os.getpid()}"))
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"snt-{os.getpid()}-")))
        root.chmod(0o755)
        yield stack.enter_context(Sandbox(binary, network, objects, root, tmp_path_factory.mktemp("pod-logs")))


def replaced(sandbox: Sandbox, pod: Pod, old: int):
    """A check that the pod is listed under a new member id and its old member is gone."""

    def check(status: dict) -> list[str]:
        found = [f"{pod.name} is member {old}, as before the wipe" for m in sandbox.members(status, pod) if m == old]
        return found + [f"member {old} is still listed" for n in status["nodes"] if n["id"] == old]

    return check


def test_the_pods_form_a_cluster_without_a_manual_step(sandbox):
    nodes = [sandbox.nodes[n] for n in range(sandbox.replicas)]
    for pod in [*nodes, sandbox.router]:
        sandbox.start(pod)
    status = sandbox.wait_healthy(nodes, "the pods to form a cluster")
    assert [n["state"] for n in status["nodes"]] == ["active"] * sandbox.replicas
    assert sandbox.rest("GET", "/health/ready")[0] == 200


def test_events_posted_through_the_router_are_acknowledged(sandbox):
    sandbox.post_events("formed", 60)
    sandbox.assert_counted_once()


def test_a_pod_added_by_scaling_out_receives_shards(sandbox):
    objects = scaled(sandbox.nodes[0].workload["metadata"]["name"], sandbox.replicas + 1)
    statefulset = one(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == sandbox.replicas + 1
    assert statefulset["spec"]["template"] == sandbox.nodes[0].workload["spec"]["template"]
    pod = statefulset_pod(objects, sandbox.replicas, sandbox.nodes[sandbox.replicas].ip)
    sandbox.nodes[sandbox.replicas] = pod
    sandbox.start(pod)
    # Ingestion goes on while shards move.
    sandbox.post_events("scaling", 40)

    def holds_replicas(status: dict) -> list[str]:
        """A check that the new pod holds at least one shard replica."""
        held = [s for m in sandbox.members(status, pod) for s in shards_held(status, m)]
        return [] if held else [f"{pod.name} holds no replica"]

    sandbox.wait_healthy(sandbox.running_nodes(), f"shards to move onto {pod.name}", holds_replicas)
    sandbox.assert_counted_once()


def test_a_pod_restarted_on_its_volume_comes_back_as_itself(sandbox):
    pod, pods = sandbox.nodes[1], sandbox.running_nodes()
    before = sandbox.wait_healthy(pods, "a converged cluster")
    (member,) = sandbox.members(before, pod)
    assert sandbox.stop(pod) == 0, f"{pod.name} did not stop cleanly on SIGTERM"
    sandbox.start(pod)
    status = sandbox.wait_healthy(pods, f"{pod.name} to come back")
    assert sandbox.members(status, pod) == [member]
    assert shards_held(status, member) == shards_held(before, member)
    sandbox.wait_digests_agree(pods)
    sandbox.assert_counted_once()


def test_a_pod_that_lost_its_volume_rejoins_as_a_new_member(sandbox):
    pod, pods = sandbox.nodes[2], sandbox.running_nodes()
    (old,) = sandbox.members(sandbox.wait_healthy(pods, "a converged cluster"), pod)
    sandbox.stop(pod)
    sandbox.delete_claims(pod)
    sandbox.start(pod)
    sandbox.wait_healthy(pods, f"{pod.name} to rejoin as a new member", replaced(sandbox, pod, old))
    sandbox.wait_digests_agree(pods)
    sandbox.assert_counted_once()


def test_the_creating_pod_that_lost_its_volume_joins_instead_of_creating(sandbox):
    pod, pods = sandbox.nodes[0], sandbox.running_nodes()
    (old,) = sandbox.members(sandbox.wait_healthy(pods, "a converged cluster"), pod)
    others = {sandbox.advertised(p) for p in pods if p is not pod}
    sandbox.stop(pod)
    sandbox.delete_claims(pod)
    sandbox.start(pod)

    def one_cluster(status: dict) -> list[str]:
        """Fails at once when the router or the pod shows a cluster without the other pods; else `replaced`."""
        for view in (status, sandbox.node_status(pod)):
            if view and view["shard_count"] and not others <= {n["address"] for n in view["nodes"]}:
                pytest.fail(f"a second cluster: a status lists only {node_list(view)}", pytrace=False)
        return replaced(sandbox, pod, old)(status)

    status = sandbox.wait_healthy(pods, f"{pod.name} to rejoin as a new member", one_cluster)
    own = sandbox.node_status(pod)
    assert own is not None and node_list(own) == node_list(status), f"{pod.name} sees other nodes than the router"
    sandbox.wait_digests_agree(pods)
    sandbox.assert_counted_once()


def test_scaling_in_by_the_documented_procedure_leaves_a_healthy_cluster(sandbox):
    pods = sandbox.running_nodes()
    pod, remaining = pods[-1], pods[:-1]
    (member,) = sandbox.members(sandbox.wait_healthy(pods, "a converged cluster"), pod)
    sandbox.decommission(member)
    sandbox.wait_healthy(remaining, f"node {member} to have left")
    assert sandbox.stop(pod) == 0, f"{pod.name} did not stop cleanly on SIGTERM"
    sandbox.delete_claims(pod)
    sandbox.wait_healthy(remaining, f"a healthy cluster without {pod.name}")
    sandbox.wait_digests_agree(remaining)
    sandbox.assert_counted_once()
