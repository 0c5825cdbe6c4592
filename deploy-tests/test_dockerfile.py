"""The Dockerfile, which no machine here can build: parsed, it must be a multi-stage build
whose runtime stage holds only the `sentinel` binary on a base with CA certificates, runs
it as the non-root user the manifests expect, and leaves every build tool behind; the
.dockerignore must keep build output out and everything the build reads in."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

from conftest import ROOT, workloads

BUILD_TOOLS = re.compile(r"\b(apt-get|apt|cargo|rustc|rustup|gcc|g\+\+|make|clang|protoc|pip|curl|wget)\b")


def stages() -> list[dict]:
    """The Dockerfile's stages: base image, name and instructions (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    found: list[dict] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            found.append({"base": words[0], "name": words[2] if len(words) > 2 else None, "steps": []})
        else:
            assert found, "an instruction before the first FROM"
            found[-1]["steps"].append((instruction, rest.strip()))
    return found


def test_the_build_has_a_builder_on_the_projects_toolchain_and_a_runtime_stage():
    build, runtime = stages()
    toolchain = re.fullmatch(r"rust:(\d+)\.(\d+)-bookworm", build["base"])
    assert toolchain, build["base"]
    minimum = re.search(r'rust-version = "(\d+)\.(\d+)"', (ROOT / "Cargo.toml").read_text())
    assert (int(toolchain[1]), int(toolchain[2])) >= (int(minimum[1]), int(minimum[2]))
    commands = " ".join(rest for step, rest in build["steps"] if step == "RUN")
    assert "cargo build --release --locked --bin sentinel" in commands
    assert runtime["base"].startswith("gcr.io/distroless/cc-debian12"), "CA certificates, glibc, libstdc++, OpenSSL"


def test_the_runtime_stage_holds_only_the_binary_and_runs_it_unprivileged():
    build, runtime = stages()
    steps = runtime["steps"]
    assert [s for s, _ in steps if s in ("RUN", "ADD")] == [], "no command runs in the runtime stage"
    copies = [rest for step, rest in steps if step == "COPY"]
    assert copies == [f"--from={build['name']} /out/sentinel /usr/local/bin/sentinel"]
    assert not BUILD_TOOLS.search(" ".join(rest for _, rest in steps))
    (user,) = [rest for step, rest in steps if step == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    (entrypoint,) = [rest for step, rest in steps if step == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/local/bin/sentinel"], "exec form, the binary itself"
    (exposed,) = [rest for step, rest in steps if step == "EXPOSE"]
    assert sorted(map(int, shlex.split(exposed))) == [7400, 7500, 8080, 9400]


def test_the_manifests_run_as_the_images_user(renders):
    (user,) = [rest for step, rest in stages()[-1]["steps"] if step == "USER"]
    uid, _, gid = user.partition(":")
    for name, objects in renders.items():
        for obj, pod in workloads(objects):
            security = pod["securityContext"]
            assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid)), name


def test_dockerignore_keeps_build_output_out_and_the_sources_in():
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)

    assert ignored("target/debug/sentinel") and ignored(".git/HEAD")
    members = re.search(r"members\s*=\s*\[(.*?)\]", (ROOT / "Cargo.toml").read_text(), re.S)[1]
    needed = ["Cargo.toml", "Cargo.lock"] + [
        f"{m}/Cargo.toml" for m in re.findall(r'"([^"]+)"', members)
    ]
    # Files the crates read at build time (include_str!, include_bytes!).
    for source in ROOT.glob("*/src/**/*.rs"):
        for included in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
            needed.append(str((source.parent / included).resolve().relative_to(ROOT)))
    for proto in ROOT.glob("proto/**/*.proto"):
        needed.append(str(proto.relative_to(ROOT)))
    assert len(needed) > 10
    assert [path for path in needed if ignored(path)] == []
