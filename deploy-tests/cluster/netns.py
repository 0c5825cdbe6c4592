"""A private network of Linux network namespaces: a bridge in a namespace of its own and
one namespace per member (a pod, or the test's client), each joined to the bridge by a
veth pair and given an address. Nothing is added to the root namespace, so the subnet
cannot clash with the machine's; `close` removes every namespace and /etc/netns entry
this object made, and only those.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SUBNET = "10.231.0"
ETC_NETNS = Path("/etc/netns")


def ip(*args: str) -> None:
    """Runs `ip` with `args`, failing with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


class Network:
    """The namespaces `<prefix>-<member>` on one bridge, in namespace `<prefix>-bridge`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.bridge = f"{prefix}-bridge"
        self.namespaces: list[str] = []
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> Network:
        try:
            self.namespace(self.bridge)
            ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def namespace(self, name: str) -> None:
        """Creates namespace `name` (recorded first, so that `close` removes it)."""
        self.namespaces.append(name)
        ip("netns", "add", name)

    def add(self, member: str, host: int) -> str:
        """Adds `member` at address SUBNET.`host` on the bridge; its address."""
        ns = f"{self.prefix}-{member}"
        self.namespace(ns)
        port = f"p{len(self.addresses)}"
        address = f"{SUBNET}.{host}"
        ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.addresses[member] = address
        return address

    def write_hosts(self, names: dict[str, list[str]]) -> None:
        """Gives every member the same /etc/hosts: each address (key) with its names."""
        lines = ["127.0.0.1 localhost"] + [f"{address} {' '.join(aliases)}" for address, aliases in names.items()]
        for member in self.addresses:
            directory = ETC_NETNS / f"{self.prefix}-{member}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts").write_text("\n".join(lines) + "\n")

    def command(self, member: str, argv: list[str]) -> list[str]:
        """`argv` run inside `member`'s namespace, with its /etc/hosts."""
        return ["ip", "netns", "exec", f"{self.prefix}-{member}", *argv]

    def close(self) -> None:
        """Deletes every namespace made (their veths and the bridge go with them) and its /etc/netns entry."""
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        self.namespaces.clear()
