"""Manifests without a cluster: what the API server, the controllers and the kubelet would do.

Controllers expand to their pods, a deleted namespace takes its objects along, server-set fields (uid,
status, ClusterIP, node ports) survive a re-apply, and addresses are shown in the objects' status.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from isthmus.kube.config import KubeConfig
from isthmus.kube.view import Key, KubeView, key
from isthmus.kube.workloads import CONTROLLERS, owner_of, place, pods_of
from isthmus.model import KubeObject


def expand(
    view: KubeView, incoming: Sequence[KubeObject], removed: Sequence[Key], config: KubeConfig
) -> tuple[list[KubeObject], list[Key]]:
    """The pods that incoming controllers declare, and the stored objects to delete with what is removed:
    the pods controllers no longer declare, and everything in a removed namespace."""
    nodes = view.nodes() or [config.default_node]
    declared = {key(o): o for o in incoming}
    deleted = set(removed)
    pods = [p for c in declared.values() if c.kind in CONTROLLERS for p in pods_of(c, nodes)]
    gone = [
        key(o)
        for kind, _, name in removed
        if kind == "Namespace"
        for o in view
        if o.metadata.namespace == name and key(o) not in deleted
    ]
    wanted = {(p.metadata.namespace, p.metadata.name) for p in pods}
    namespaces = {ns for kind, ns, _ in [*declared, *deleted] if kind in CONTROLLERS}
    for pod in (p for ns in sorted(namespaces, key=str) for p in view.of("Pod", ns)):
        owner = owner_of(pod)
        controller = (owner[0], pod.metadata.namespace, owner[1]) if owner else None
        if (
            controller
            and (controller in declared or controller in deleted)
            and (pod.metadata.namespace, pod.metadata.name) not in wanted
        ):
            gone.append(key(pod))
    fresh = [with_uid(p) for p in pods if view.get("Pod", p.metadata.namespace, p.metadata.name) is None]
    return fresh, gone


def scheduled(obj: KubeObject, view: KubeView, config: KubeConfig) -> KubeObject:
    """A pod declared without spec.nodeName, placed as a scheduler would (deterministically)."""
    spec = obj.body.get("spec")
    if obj.kind != "Pod" or not isinstance(spec, dict) or spec.get("nodeName"):
        return obj
    node = place(obj.metadata.name, view.nodes() or [config.default_node])
    return KubeObject.model_validate({**obj.model_dump(by_alias=True), "spec": {**spec, "nodeName": node}})


def with_uid(obj: KubeObject) -> KubeObject:
    """A new object gets its UID now, so that what is translated from it names it from the start."""
    if obj.metadata.uid:
        return obj
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"uid": str(uuid.uuid4())})})


def carry_over(view: KubeView, obj: KubeObject) -> KubeObject:
    """What the server set on the stored object (uid, status, ClusterIP, node ports) survives a re-apply."""
    stored = view.get(obj.kind, obj.metadata.namespace, obj.metadata.name)
    if stored is None:
        return with_uid(obj)
    body = obj.model_dump(by_alias=True, exclude_none=True)
    body["metadata"]["uid"] = obj.metadata.uid or stored.metadata.uid
    if "status" in stored.body and "status" not in body:
        body["status"] = stored.body["status"]
    if obj.kind == "Service" and isinstance(body.get("spec"), dict):
        old = stored.body.get("spec") or {}
        body["spec"].setdefault("clusterIP", old.get("clusterIP"))
        held = {
            (p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
            for p in old.get("ports") or []
            if p.get("nodePort")
        }
        body["spec"]["ports"] = [_with_node_port(p, held) for p in body["spec"].get("ports") or []]
    return with_uid(KubeObject.model_validate(body))


def _with_node_port(port: Any, held: dict[tuple[Any, Any], int]) -> Any:
    key = (port.get("port"), port.get("protocol", "TCP")) if isinstance(port, dict) else None
    return {"nodePort": held[key], **port} if key in held else port


def with_status(obj: KubeObject, shown: dict[str, Any]) -> KubeObject:
    """The object showing what `shown` says (see kube.sync), as the API server and kubelet would."""
    body = obj.model_dump(by_alias=True, exclude_none=True)
    if obj.kind == "Pod":
        body["status"] = {**(body.get("status") or {}), **shown["status"]}
    else:
        spec = dict(body.get("spec") or {})
        spec["clusterIP"] = shown["clusterIP"]
        spec["ports"] = [
            {**p, "nodePort": shown["nodePorts"][(p.get("port"), p.get("protocol", "TCP"))]}
            if shown["nodePorts"].get((p.get("port"), p.get("protocol", "TCP")))
            else p
            for p in spec.get("ports") or []
        ]
        body["spec"], body["status"] = spec, {**(body.get("status") or {}), **shown["status"]}
    return KubeObject.model_validate(body)
