"""A node's own view of the cluster: gRPC `sentinel.v1.Node/ClusterStatus`
(proto/sentinel/v1/node.proto) asked of the node directly, with the replicas' state
digests, which the query client (router API only) does not offer. curl makes the call
over HTTP/2; the answer is decoded from the protobuf wire format into the JSON shape of
`sentinel cluster status --output json`, plus each replica's `digest`.
"""

from __future__ import annotations

import re
import subprocess

# ClusterStatusReply and its messages: field number -> (name, kind); a list is repeated.
REPLICA = {
    1: ("node", "uint"),
    2: ("role", "str"),
    3: ("applied_index", "uint"),
    4: ("lag", "uint"),
    5: ("digest", "str"),
}
NODE = {1: ("id", "uint"), 2: ("address", "str"), 3: ("state", "str")}
SHARD = {
    1: ("shard", "uint"),
    2: ("leader", "optional"),
    3: ("term", "uint"),
    4: ("desired", "uints"),
    5: ("replicas", [REPLICA]),
}
STATUS = {
    1: ("shard_count", "uint"),
    2: ("replication_factor", "uint"),
    3: ("metadata_leader", "optional"),
    4: ("nodes", [NODE]),
    5: ("shards", [SHARD]),
}
DEFAULTS = {"uint": 0, "optional": None, "str": ""}


def varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and the position after it."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def fields(data: bytes):
    """(field number, value) of a message's fields: ints for varints, bytes for the rest."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        if key & 7 == 0:
            value, at = varint(data, at)
        else:
            assert key & 7 == 2, f"wire type {key & 7} is not used by ClusterStatusReply"
            length, at = varint(data, at)
            value, at = data[at : at + length], at + length
        yield key >> 3, value


def packed(data: bytes) -> list[int]:
    """The varints of a packed repeated field."""
    values, at = [], 0
    while at < len(data):
        value, at = varint(data, at)
        values.append(value)
    return values


def decode(data: bytes, schema: dict) -> dict:
    """A message of `schema` as a dict, proto3 defaults filled in."""
    message = {
        name: [] if kind == "uints" or isinstance(kind, list) else DEFAULTS[kind] for name, kind in schema.values()
    }
    for number, value in fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, list):
            message[name].append(decode(value, kind[0]))
        elif kind == "uints":
            message[name].extend(packed(value) if isinstance(value, bytes) else [value])
        else:
            message[name] = value.decode() if kind == "str" else value
    return message


def cluster_status(command, address: str, digests: bool) -> dict | None:
    """The ClusterStatus of the node at `address` (None when it gives none); `command` wraps curl's argv."""
    request = b"\x08\x01" if digests else b""
    frame = b"\x00" + len(request).to_bytes(4, "big") + request
    curl = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "60", "-D", "/dev/stderr"]
    curl += ["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "@-"]
    url = f"http://{address}/sentinel.v1.Node/ClusterStatus"
    done = subprocess.run(command([*curl, url]), input=frame, capture_output=True)
    answered = re.search(rb"grpc-status: *0\b", done.stderr) and len(done.stdout) >= 5
    if done.returncode != 0 or not answered:
        return None
    assert done.stdout[0] == 0, "the node compressed its answer, which this client does not decode"
    return decode(done.stdout[5 : 5 + int.from_bytes(done.stdout[1:5], "big")], STATUS)
