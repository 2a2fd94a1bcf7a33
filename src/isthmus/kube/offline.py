"""Manifests without a cluster: what the API server, the controllers and the kubelet would do.

Controllers expand to their pods, a deleted namespace takes its objects along, server-set fields (uid,
status, ClusterIP, node ports, a pod's node) survive a re-apply, a re-applied pod changes only what the
API server lets a pod update change, and addresses are shown in the objects' status.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from isthmus.kube.conditions import merged
from isthmus.kube.config import KubeConfig
from isthmus.kube.translate import TranslationError
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
    """What the server set on the stored object (uid, status, ClusterIP, node ports, a pod's node) survives
    a re-apply; a pod whose spec changes as the API server refuses is a TranslationError."""
    stored = view.get(obj.kind, obj.metadata.namespace, obj.metadata.name)
    if stored is None:
        return with_uid(obj)
    body = obj.model_dump(by_alias=True, exclude_none=True)
    body["metadata"]["uid"] = obj.metadata.uid or stored.metadata.uid
    if "status" in stored.body and "status" not in body:
        body["status"] = stored.body["status"]
    if obj.kind == "Service" and isinstance(body.get("spec"), dict):
        old = stored.body.get("spec") or {}
        for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            body["spec"].setdefault(field, old.get(field))
        if body["spec"].get("ipFamilyPolicy") == "SingleStack":  # dual to single stack: the first stays
            for field in ("clusterIPs", "ipFamilies"):
                body["spec"][field] = (body["spec"].get(field) or [])[:1] or None
        held = {
            (p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
            for p in old.get("ports") or []
            if p.get("nodePort")
        }
        body["spec"]["ports"] = [_with_node_port(p, held) for p in body["spec"].get("ports") or []]
    if obj.kind == "Pod" and isinstance(body.get("spec"), dict):
        old = stored.body.get("spec") or {}
        if not body["spec"].get("nodeName") and old.get("nodeName"):
            body["spec"]["nodeName"] = old["nodeName"]
        if refusal := _pod_update_refusal(old, body["spec"]):
            raise TranslationError(f"Pod {obj.metadata.namespace}/{obj.metadata.name}: {refusal}")
    return with_uid(KubeObject.model_validate(body))


def _with_node_port(port: Any, held: dict[tuple[Any, Any], int]) -> Any:
    key = (port.get("port"), port.get("protocol", "TCP")) if isinstance(port, dict) else None
    return {"nodePort": held[key], **port} if key in held else port


# What kube-apiserver 1.20 defaults in a pod's spec (pkg/apis/core/v1/defaults.go): a dict or a list here
# holds the defaults of a sub-object when it is there, or of each item of a list.
_PROBE = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
    "httpGet": {"path": "/", "scheme": "HTTP"},
}
_CONTAINER = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
    "ports": [{"protocol": "TCP"}],
    "env": [{"valueFrom": {"fieldRef": {"apiVersion": "v1"}}}],
    "livenessProbe": _PROBE,
    "readinessProbe": _PROBE,
    "startupProbe": _PROBE,
}
_MODE = {"defaultMode": 0o644}
_POD_SPEC = {
    "dnsPolicy": "ClusterFirst",
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "schedulerName": "default-scheduler",
    "enableServiceLinks": True,
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "volumes": [{"secret": _MODE, "configMap": _MODE, "downwardAPI": _MODE, "projected": _MODE}],
}
_CONTAINER_LISTS = ("containers", "initContainers")
_MUNGED = ("activeDeadlineSeconds", "tolerations")  # kept from the old spec when the rest is compared
_DEADLINE = "spec.activeDeadlineSeconds: Invalid value"
_TOLERATIONS = "spec.tolerations: Forbidden"
_ZERO: tuple[Any, ...] = (None, "", 0, [], {})  # False == 0
_IMMUTABLE = (
    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
    "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` "
    "(only additions to existing tolerations)"
)


def _as_stored(value: Any, defaults: Any) -> Any:
    """`value` as the API server compares it: a field absent or null takes its default, then null and
    zero values ("", 0, false, [], {}) are absent, as Go's zero values are."""
    if isinstance(value, list):
        return [_as_stored(v, defaults[0] if isinstance(defaults, list) else None) for v in value]
    if not isinstance(value, dict):
        return value
    schema: dict[str, Any] = defaults if isinstance(defaults, dict) else {}
    filled = {k: d for k, d in schema.items() if not isinstance(d, dict | list) and value.get(k) is None}
    stored = {k: _as_stored(v, schema.get(k)) for k, v in {**value, **filled}.items()}
    return {k: v for k, v in stored.items() if v not in _ZERO}


def _pull_policy(image: Any) -> str:
    """The imagePullPolicy the API server gives a container without one: Always for the tag latest."""
    name, _, digest = str(image).partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.rpartition(":")[2] if ":" in last else ("" if digest else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


def _changed(new: Any, old: Any, path: str) -> str | None:
    """The first field at which `new` differs from `old`."""
    if isinstance(new, dict) and isinstance(old, dict):
        keys = [*old, *(k for k in new if k not in old)]
        return next((p for k in keys if (p := _changed(new.get(k), old.get(k), f"{path}.{k}"))), None)
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        pairs = enumerate(zip(new, old, strict=True))
        return next((p for i, (n, o) in pairs if (p := _changed(n, o, f"{path}[{i}]"))), None)
    return None if new == old else path


def _pod_update_refusal(old_spec: dict[str, Any], new_spec: dict[str, Any]) -> str | None:
    """Why kube-apiserver 1.20 (ValidatePodUpdate, in its words) refuses to change a pod's spec from
    `old_spec` to `new_spec`, or None: only images, a shorter activeDeadlineSeconds and added tolerations
    may change. A container without imagePullPolicy keeps the one it had, as `kubectl apply` leaves it."""
    old, new = _as_stored(old_spec, _POD_SPEC), _as_stored(new_spec, _POD_SPEC)
    for name in _CONTAINER_LISTS:
        if len(new.get(name, [])) != len(old.get(name, [])):
            return f"spec.{name}: Forbidden: pod updates may not add or remove containers"
    deadline, previous = new.get("activeDeadlineSeconds"), old.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and isinstance(previous, int) and previous < deadline:
        return f"{_DEADLINE}: {deadline}: must be less than or equal to previous value"
    if deadline is None and previous is not None:
        return f'{_DEADLINE}: "null": must not update from a positive integer to nil value'
    kept = [_without_seconds(t) for t in new.get("tolerations", [])]
    if any(_without_seconds(t) not in kept for t in old.get("tolerations", [])):
        return f"{_TOLERATIONS}: existing toleration can not be modified except its tolerationSeconds"
    munged = {k: v for k, v in new.items() if k not in _MUNGED} | {k: old[k] for k in _MUNGED if k in old}
    for name in (n for n in _CONTAINER_LISTS if n in old):
        munged[name] = [{**c, "image": o.get("image")} for c, o in zip(new[name], old[name], strict=True)]
        for container in [*munged[name], *old[name]]:
            container.setdefault("imagePullPolicy", _pull_policy(container.get("image")))
    changed = _changed(munged, old, "spec")
    return f"{_IMMUTABLE} ({changed} changed)" if changed else None


def _without_seconds(toleration: Any) -> Any:
    return {k: v for k, v in toleration.items() if k != "tolerationSeconds"}


def with_status(obj: KubeObject, shown: dict[str, Any]) -> KubeObject:
    """The object showing what `shown` says (see kube.sync), as the API server and kubelet would."""
    body = obj.model_dump(by_alias=True, exclude_none=True)
    if obj.kind == "Pod":
        status = body.get("status") or {}
        conditions = merged(status.get("conditions") or [], *shown["status"].get("conditions", []))
        body["status"] = {**status, **shown["status"], "conditions": conditions}
    else:
        spec = dict(body.get("spec") or {})
        spec["clusterIP"], spec["clusterIPs"] = shown["clusterIP"], shown["clusterIPs"]
        spec["ipFamilies"] = shown["ipFamilies"]
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec["ports"] = [
            {**p, "nodePort": shown["nodePorts"][(p.get("port"), p.get("protocol", "TCP"))]}
            if shown["nodePorts"].get((p.get("port"), p.get("protocol", "TCP")))
            else p
            for p in spec.get("ports") or []
        ]
        body["spec"], body["status"] = spec, {**(body.get("status") or {}), **shown["status"]}
    return KubeObject.model_validate(body)
