"""Every rendered object validates, in strict mode (no unknown fields), against the
Kubernetes schemas of the oldest and the newest version the manifests support."""

from __future__ import annotations

import kubernetes_validate
import pytest

from conftest import KUBERNETES_VERSIONS, OPERATOR_KINDS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(renders, version):
    problems = []
    checked = 0
    for name, objects in renders.items():
        for obj in objects:
            if obj["kind"] in OPERATOR_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{name}: {obj['kind']} {obj['metadata']['name']}: {path}: {error.message}")
    assert problems == []
    assert checked > 50


def test_a_misplaced_field_is_caught():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "readOnlyRootFilesystem": True}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[0], strict=True)
