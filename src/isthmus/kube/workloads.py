"""Controllers declared in manifests become pods, as the controller-manager and scheduler would make them.

For offline use (manifests, the lab): ReplicationController, ReplicaSet and Deployment expand to `replicas`
pods named like Kubernetes names them (RC/RS: NAME-xxxxx; Deployment: NAME-<template hash>-xxxxx), with
deterministic suffixes; pods without spec.nodeName are placed on a node chosen deterministically.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from isthmus.model import KubeObject

CONTROLLERS = ("ReplicationController", "ReplicaSet", "Deployment")
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the one Kubernetes uses for generated names


def _suffix(seed: str, length: int) -> str:
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "".join(chars)


def place(pod_name: str, nodes: list[str]) -> str:
    """The node a pod without spec.nodeName goes to: stable for a name and a set of nodes."""
    ordered = sorted(nodes)
    return ordered[int(hashlib.sha256(pod_name.encode()).hexdigest(), 16) % len(ordered)]


def pods_of(controller: KubeObject, nodes: list[str]) -> list[KubeObject]:
    """The pods a controller declares."""
    spec = controller.body.get("spec") or {}
    template = spec.get("template") or {}
    replicas = spec.get("replicas", 1)
    where = f"{controller.kind} {controller.metadata.namespace}/{controller.metadata.name}"
    if not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"{where}: spec.replicas must be a whole number, got {replicas!r}")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise ValueError(f"{where}: spec.template.spec is required")
    name, namespace = controller.metadata.name, controller.metadata.namespace
    prefix = name
    if controller.kind == "Deployment":
        prefix = f"{name}-{_suffix(json.dumps(template, sort_keys=True), 10)}"
    meta = template.get("metadata") or {}
    owner = {"apiVersion": controller.api_version, "kind": controller.kind, "name": name, "controller": True}
    pods = []
    for index in range(replicas):
        pod_name = f"{prefix}-{_suffix(f'{namespace}/{prefix}/{index}', 5)}"
        pod_spec: dict[str, Any] = dict(template["spec"])
        pod_spec.setdefault("nodeName", place(pod_name, nodes))
        pods.append(
            KubeObject.model_validate(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": meta.get("labels") or {},
                        "annotations": meta.get("annotations") or {},
                        "ownerReferences": [owner],
                    },
                    "spec": pod_spec,
                }
            )
        )
    return pods


def owner_of(pod: KubeObject) -> tuple[str, str] | None:
    """(kind, name) of the controller that owns a pod."""
    for ref in getattr(pod.metadata, "ownerReferences", None) or []:
        if ref.get("controller"):
            return ref["kind"], ref["name"]
    return None
