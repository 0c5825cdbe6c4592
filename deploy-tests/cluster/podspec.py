"""Pods as the kubelet would start them from the rendered objects, as processes of this
machine: the container's arguments, its environment (service links, the downward API,
`$(VAR)` references), its volumes as directories, and every mount path in the arguments,
the environment and the mounted ConfigMap files rewritten to those directories.

Only what the manifests use is emulated; anything else fails with what is missing, so a
manifest that starts using more fails loudly instead of being started wrongly.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from conftest import named, of_kind, selects

POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"
# The distroless image's PATH (the image sets nothing else a process reads).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
LABEL_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")


@dataclass
class Pod:
    """One pod of a workload of a rendering, with the address the test gave it."""

    name: str
    workload: dict
    objects: list[dict]
    ip: str
    labels: dict

    @property
    def spec(self) -> dict:
        """The pod template's spec."""
        return self.workload["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        """The pod's only container."""
        (container,) = self.spec["containers"]
        return container

    def port(self, name: str) -> int:
        """The number of the container port called `name`."""
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name)

    def probe_url(self, kind: str) -> str:
        """The URL the kubelet's `kind` probe (e.g. readinessProbe) asks."""
        get = self.container[kind]["httpGet"]
        port = get["port"] if isinstance(get["port"], int) else self.port(get["port"])
        return f"http://{self.ip}:{port}{get['path']}"


def statefulset_pod(objects: list[dict], ordinal: int, ip: str) -> Pod:
    """Pod `ordinal` of the rendering's StatefulSet, labelled as the StatefulSet controller does."""
    (workload,) = of_kind(objects, "StatefulSet")
    name = f"{workload['metadata']['name']}-{ordinal}"
    labels = {
        **workload["spec"]["template"]["metadata"]["labels"],
        POD_INDEX_LABEL: str(ordinal),
        "statefulset.kubernetes.io/pod-name": name,
    }
    return Pod(name, workload, objects, ip, labels)


def deployment_pod(objects: list[dict], ip: str) -> Pod:
    """A pod of the rendering's Deployment."""
    (workload,) = of_kind(objects, "Deployment")
    labels = dict(workload["spec"]["template"]["metadata"]["labels"])
    return Pod(f"{workload['metadata']['name']}-0", workload, objects, ip, labels)


def service_names(name: str) -> list[str]:
    """The names a Service (or a pod under its headless Service) has in the namespace's DNS."""
    return [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"]


def pod_dns_names(pod: Pod) -> list[str]:
    """A StatefulSet pod's names under its governing headless Service (published before it is ready)."""
    service = named(pod.objects, "Service", pod.workload["spec"]["serviceName"])
    assert service["spec"].get("clusterIP") == "None", f"Service {service['metadata']['name']} is not headless"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod.labels), f"Service does not select {pod.name}"
    assert service["spec"].get("publishNotReadyAddresses") is True, (
        "the nodes' headless Service must publish not-ready pods: this test resolves every pod from its start"
    )
    return service_names(f"{pod.name}.{service['metadata']['name']}")


def routed_services(pod: Pod) -> list[dict]:
    """The Services (with a cluster IP) that select `pod`."""
    return [
        s
        for s in of_kind(pod.objects, "Service")
        if s["spec"].get("clusterIP") != "None" and selects({"matchLabels": s["spec"]["selector"]}, pod.labels)
    ]


def service_links(pod: Pod, hosts: dict[str, str]) -> dict[str, str]:
    """The variables the kubelet adds for every Service unless enableServiceLinks is false."""
    if pod.spec.get("enableServiceLinks", True) is False:
        return {}
    env = {}
    for service in of_kind(pod.objects, "Service"):
        if service["spec"].get("clusterIP") == "None":
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        host = hosts[service["metadata"]["name"]]
        first = service["spec"]["ports"][0]["port"]
        env[f"{prefix}_SERVICE_HOST"] = host
        env[f"{prefix}_SERVICE_PORT"] = str(first)
        env[f"{prefix}_PORT"] = f"tcp://{host}:{first}"
        for port in service["spec"]["ports"]:
            env[f"{prefix}_SERVICE_PORT_{port['name'].upper()}"] = str(port["port"])
            env[f"{prefix}_PORT_{port['port']}_TCP"] = f"tcp://{host}:{port['port']}"
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """`$(VAR)` references replaced as Kubernetes does: `$$` is `$`, unknown names stay."""
    return REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def field_value(pod: Pod, path: str) -> str:
    """The value of a downward-API fieldRef."""
    labelled = LABEL_FIELD.fullmatch(path)
    if labelled and labelled[1] == "labels":
        return pod.labels.get(labelled[2], "")
    fields = {"metadata.name": pod.name, "metadata.namespace": NAMESPACE, "status.podIP": pod.ip}
    assert path in fields, f"{pod.name}: the test does not emulate fieldRef {path}"
    return fields[path]


def env_value(pod: Pod, entry: dict, env: dict[str, str]) -> str | None:
    """One env entry's value (None: left out, as an optional key of a missing Secret)."""
    source = entry.get("valueFrom")
    if source is None:
        return expand(entry.get("value", ""), env)
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    reference = source.get("secretKeyRef", {})
    assert reference.get("optional") is True, f"{pod.name}: {entry['name']} needs a Secret; the test has none"
    return None


def environment(pod: Pod, hosts: dict[str, str]) -> dict[str, str]:
    """The container's environment, entries resolved in order as the kubelet does."""
    assert "envFrom" not in pod.container, f"{pod.name}: the test does not emulate envFrom"
    env = {"PATH": IMAGE_PATH, "HOSTNAME": pod.name, **service_links(pod, hosts)}
    for entry in pod.container.get("env", []):
        value = env_value(pod, entry, env)
        if value is not None:
            env[entry["name"]] = value
    return env


def security(pod: Pod) -> tuple[int, int, list[str]]:
    """(uid, gid, setpriv arguments) the container runs with, from its securityContext."""
    context = {**pod.spec.get("securityContext", {}), **pod.container.get("securityContext", {})}
    assert "runAsUser" in context and "runAsGroup" in context, f"{pod.name}: no runAsUser/runAsGroup"
    uid, gid = context["runAsUser"], context["runAsGroup"]
    groups = [f"--groups={context['fsGroup']}"] if "fsGroup" in context else ["--clear-groups"]
    no_new_privileges = ["--no-new-privs"] if context.get("allowPrivilegeEscalation") is False else []
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups, *no_new_privileges]
    return uid, context.get("fsGroup", gid), setpriv


def claim_dir(pod: Pod, root: Path, claim: str) -> Path:
    """The directory standing for the pod's PersistentVolumeClaim made from template `claim`."""
    return root / "claims" / f"{claim}-{pod.name}"


def volume_dirs(pod: Pod, root: Path, owner: tuple[int, int]) -> dict[str, Path]:
    """Every volume of the pod as a directory for one start: claims kept, the others made anew."""
    claims = {t["metadata"]["name"] for t in pod.workload["spec"].get("volumeClaimTemplates", [])}
    dirs = {name: claim_dir(pod, root, name) for name in claims}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, *owner)
    for volume in pod.spec["volumes"]:
        path = root / "volumes" / pod.name / volume["name"]
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            path.chmod(0o777)
        else:
            assert "configMap" in volume, f"{pod.name}: the test does not emulate volume {volume['name']}'s kind"
        dirs[volume["name"]] = path
    return dirs


def path_rewriter(mounts: dict[str, Path]):
    """A function replacing each mount path (as a whole path or a prefix) by its directory."""
    paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({paths})(?![\w.-])")
    return lambda text: pattern.sub(lambda m: str(mounts[m[1]]), text)


def write_config_maps(pod: Pod, dirs: dict[str, Path], rewrite) -> None:
    """Each ConfigMap volume's keys as files, with mount paths rewritten."""
    for volume in pod.spec["volumes"]:
        if "configMap" not in volume:
            continue
        source = named(pod.objects, "ConfigMap", volume["configMap"]["name"])
        assert "items" not in volume["configMap"], f"{pod.name}: the test does not emulate ConfigMap items"
        for key, text in source["data"].items():
            (dirs[volume["name"]] / key).write_text(rewrite(text))


def mounts(pod: Pod, dirs: dict[str, Path]) -> dict[str, Path]:
    """Each volumeMount's path and the directory standing for it."""
    found = {}
    for mount in pod.container.get("volumeMounts", []):
        assert mount["name"] in dirs, f"{pod.name}: mount {mount['mountPath']} names no volume {mount['name']}"
        found[mount["mountPath"]] = dirs[mount["name"]] / mount.get("subPath", "")
    return found


@dataclass
class Launch:
    """What starting a pod's container takes: the command line and the environment."""

    argv: list[str]
    env: dict[str, str]

    def setting(self, *keys: str):
        """A configuration key as the process reads it: its SENTINEL_* variable, else the file."""
        variable = "SENTINEL_" + "__".join(k.upper() for k in keys)
        if variable in self.env:
            return yaml.safe_load(self.env[variable])
        value = yaml.safe_load(Path(self.argv[self.argv.index("--config") + 1]).read_text())
        for key in keys:
            value = value[key]
        return value


def prepare(pod: Pod, binary: Path, root: Path, hosts: dict[str, str]) -> Launch:
    """Lays out the pod's volumes under `root` and the command line that starts its container."""
    assert "command" not in pod.container, f"{pod.name}: the test runs the image's entrypoint only"
    uid, gid, user = security(pod)
    dirs = volume_dirs(pod, root, (uid, gid))
    rewrite = path_rewriter(mounts(pod, dirs))
    write_config_maps(pod, dirs, rewrite)
    env = {name: rewrite(value) for name, value in environment(pod, hosts).items()}
    args = [rewrite(expand(a, env)) for a in pod.container["args"]]
    return Launch([*user, str(binary), *args], env)
