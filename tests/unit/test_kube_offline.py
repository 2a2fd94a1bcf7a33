"""Offline (`isthmus apply -f`), a re-applied pod changes only what kube-apiserver 1.20 lets a pod update
change (images, a shorter activeDeadlineSeconds, added tolerations, metadata), with the server's words for
what it refuses; each message and verdict here was checked against a real kube-apiserver 1.20.2."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.kube.translate import TranslationError
from isthmus.kube.workloads import place
from isthmus.model import Endpoint, lookup_kind, parse_manifests
from isthmus.store import Ledger, objects

Spec = dict[str, Any]
IMMUTABLE = (
    "Pod default/web: spec: Forbidden: pod updates may not change fields other than "
    "`spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or "
    "`spec.tolerations` (only additions to existing tolerations)"
)
TOLERATION = {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}


def pod(change: Callable[[Spec], object] = lambda spec: None, **meta: Any) -> dict[str, Any]:
    """The pod web (one nginx container on port 80), its spec edited by `change`."""
    spec: Spec = {
        "activeDeadlineSeconds": 100,
        "tolerations": [TOLERATION],
        "containers": [{"name": "nginx", "image": "nginx:1.19", "ports": [{"containerPort": 80}]}],
    }
    change(spec)
    metadata = {"name": "web", "labels": {"app": "web"}, **meta}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def apply(ledger: Ledger, *docs: dict[str, Any]) -> None:
    reconcile(ledger, KubeConfig(), parse_manifests(yaml.safe_dump_all(list(docs))))


def stored(ledger: Ledger, kind: str, name: str = "web") -> Any:
    return objects.list_one(ledger, lookup_kind(kind), "default", name)


def snapshot(ledger: Ledger) -> list[tuple[str, bytes]]:
    return [(kv.key, kv.value) for kv in ledger.list("/")[0]]


def container(spec: Spec) -> dict[str, Any]:
    first: dict[str, Any] = spec["containers"][0]
    return first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: container(s)["ports"][0].update(containerPort=8080),
            f"{IMMUTABLE} (spec.containers[0].ports[0].containerPort changed)",
        ),
        (
            lambda s: container(s)["ports"].append({"containerPort": 81}),
            f"{IMMUTABLE} (spec.containers[0].ports changed)",
        ),
        (lambda s: s.update(nodeName="elsewhere"), f"{IMMUTABLE} (spec.nodeName changed)"),
        (lambda s: s.update(restartPolicy="Never"), f"{IMMUTABLE} (spec.restartPolicy changed)"),
        (
            lambda s: s["containers"].append({"name": "sidecar", "image": "busybox"}),
            "Pod default/web: spec.containers: Forbidden: pod updates may not add or remove containers",
        ),
        (
            lambda s: s.update(activeDeadlineSeconds=200),
            "Pod default/web: spec.activeDeadlineSeconds: Invalid value: 200: "
            "must be less than or equal to previous value",
        ),
        (
            lambda s: s.pop("activeDeadlineSeconds"),
            'Pod default/web: spec.activeDeadlineSeconds: Invalid value: "null": '
            "must not update from a positive integer to nil value",
        ),
        (
            lambda s: s.update(tolerations=[{**TOLERATION, "key": "j"}]),
            "Pod default/web: spec.tolerations: Forbidden: "
            "existing toleration can not be modified except its tolerationSeconds",
        ),
    ],
    ids=[
        "port",
        "port-added",
        "node",
        "restart-policy",
        "container-added",
        "deadline-longer",
        "deadline-removed",
        "toleration-changed",
    ],
)
def test_a_pod_update_the_api_server_refuses_changes_nothing(
    ledger: Ledger, change: Callable[[Spec], object], message: str
) -> None:
    apply(ledger, pod())
    before = snapshot(ledger)
    with pytest.raises(TranslationError) as refused:
        apply(ledger, pod(change))
    assert str(refused.value) == message
    assert snapshot(ledger) == before  # the pod, its Endpoint and everything else as they were


def _defaults_spelled_out(spec: Spec) -> None:
    spec.update(restartPolicy="Always", terminationGracePeriodSeconds=30, hostNetwork=False, volumes=None)
    container(spec).update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    container(spec)["ports"][0].update(protocol="TCP", hostPort=0)


@pytest.mark.parametrize(
    ("change", "meta"),
    [
        (lambda s: None, {}),
        (lambda s: None, {"labels": {"app": "web", "tier": "front"}}),
        (lambda s: None, {"annotations": {"owner": "team-a"}}),
        (lambda s: container(s).update(image="nginx"), {}),  # latest: the pull policy stays as it was
        (_defaults_spelled_out, {}),
        (lambda s: s.update(activeDeadlineSeconds=50), {}),
        (  # (the real server's own not-ready and unreachable tolerations, which Isthmus does not add, kept)
            lambda s: s.update(tolerations=[{**TOLERATION, "tolerationSeconds": 7}, {"operator": "Exists"}]),
            {},
        ),
    ],
    ids=["same", "relabel", "annotate", "image", "defaults", "deadline-shorter", "toleration-added"],
)
def test_a_pod_update_the_api_server_accepts_is_stored_and_keeps_the_address(
    ledger: Ledger, change: Callable[[Spec], object], meta: dict[str, Any]
) -> None:
    apply(ledger, pod())
    address = stored(ledger, "Endpoint").spec.addresses
    updated = pod(change, **meta)
    apply(ledger, updated)
    now = stored(ledger, "Pod")
    assert {k: v for k, v in now.body["spec"].items() if k != "nodeName"} == updated["spec"]
    assert now.metadata.labels == updated["metadata"]["labels"]
    assert now.metadata.annotations == updated["metadata"].get("annotations", {})
    endpoint = stored(ledger, "Endpoint")
    assert endpoint.spec.addresses == address and endpoint.metadata.labels == now.metadata.labels


def test_a_pod_re_applied_without_a_node_stays_on_its_node(ledger: Ledger) -> None:
    def nodes(*names: str) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "isthmus.io/v1",
                "kind": "Node",
                "metadata": {"name": n},
                "spec": {"address": f"198.51.100.{i}"},
            }
            for i, n in enumerate(names, 1)
        ]

    few, many = ["n1", "n2"], ["n1", "n2", "n3", "n4", "n5", "n6"]
    name = next(f"web-{i}" for i in range(100) if place(f"web-{i}", few) != place(f"web-{i}", many))
    apply(ledger, *nodes(*few), pod(name=name))
    node = stored(ledger, "Endpoint", name).spec.node
    apply(ledger, *nodes(*many))
    apply(ledger, pod(name=name))  # the scheduler would now place a new pod of this name elsewhere
    assert stored(ledger, "Pod", name).body["spec"]["nodeName"] == node
    endpoint = stored(ledger, "Endpoint", name)
    assert isinstance(endpoint, Endpoint) and endpoint.spec.node == node


def test_a_changed_controller_template_leaves_its_existing_pods_alone(ledger: Ledger) -> None:
    rc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod()["spec"]}},
    }
    apply(ledger, rc)
    pods = objects.list_objects(ledger, lookup_kind("Pod"), "default")[0]
    changed = copy.deepcopy(rc)
    container(changed["spec"]["template"]["spec"])["ports"][0]["containerPort"] = 8080
    apply(ledger, changed)
    assert objects.list_objects(ledger, lookup_kind("Pod"), "default")[0] == pods


def test_the_cli_refuses_a_changed_pod_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ISTHMUS_STATE": str(tmp_path / "state")}

    def isthmus(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "isthmus.cli.main", *args]
        return subprocess.run(
            command, check=False, input=stdin, capture_output=True, text=True, env=env, timeout=60
        )

    assert isthmus("apply", "-f", "-", stdin=yaml.safe_dump(pod())).returncode == 0
    before = [isthmus("get", kind, "web", "-o", "json").stdout for kind in ("pod", "endpoint")]
    changed = pod(lambda s: container(s)["ports"][0].update(containerPort=8080))
    refused = isthmus("apply", "-f", "-", stdin=yaml.safe_dump(changed))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == f"Error: {IMMUTABLE} (spec.containers[0].ports[0].containerPort changed)\n"
    assert [isthmus("get", kind, "web", "-o", "json").stdout for kind in ("pod", "endpoint")] == before
    assert json.loads(before[0])["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]
