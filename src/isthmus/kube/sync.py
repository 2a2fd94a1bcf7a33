"""Reconcile: make the ledger's Isthmus intent match its Kubernetes objects, in one transaction.

Level-triggered and idempotent: the whole desired state is translated from the Kubernetes objects stored in
the ledger (plus the change being made); objects the translation no longer yields are deleted, only those it
made (annotation isthmus.io/source=kubernetes). Then what Kubernetes users read back (pod IPs, ClusterIPs,
node ports, LoadBalancer ingress) is written into the stored Kubernetes objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from isthmus import intent
from isthmus.kube.config import KubeConfig
from isthmus.kube.translate import KUBERNETES, SOURCE, KubeView, translate
from isthmus.kube.workloads import CONTROLLERS, owner_of, pods_of
from isthmus.model import (
    KINDS,
    Endpoint,
    FloatingIP,
    KindInfo,
    KubeObject,
    Node,
    Object,
    ServiceVIP,
    kind_of,
    lookup_kind,
)
from isthmus.store import Ledger, objects

Target = tuple[KindInfo, str | None, str]


def load_view(ledger: Ledger) -> KubeView:
    nodes = objects.list_objects(ledger, lookup_kind("Node"))[0]
    view = KubeView(
        nodes=[n.metadata.name for n in nodes if n.metadata.annotations.get(SOURCE) != KUBERNETES]
    )
    for info in KINDS:
        if info.model is None:
            for obj in objects.list_objects(ledger, info)[0]:
                assert isinstance(obj, KubeObject)
                view.add(obj)
    return view


def expand(
    view: KubeView, incoming: Sequence[Object], removed: Sequence[Target], config: KubeConfig
) -> tuple[list[KubeObject], list[Target]]:
    """The pods that incoming controllers declare, and the stored pods that controllers no longer declare."""
    nodes = view.nodes or [config.default_node]
    pods: list[KubeObject] = []
    gone: list[Target] = []
    pod_info = lookup_kind("Pod")
    declared = {
        (o.kind, o.metadata.namespace, o.metadata.name): o for o in incoming if isinstance(o, KubeObject)
    }
    deleted = {(t[0].kind, t[1], t[2]) for t in removed}
    for controller in declared.values():
        if controller.kind in CONTROLLERS:
            pods += pods_of(controller, nodes)
    for info, _, name in removed:  # a namespace takes everything in it along
        if info.kind == "Namespace":
            gone += [
                (kind_of(o), o.metadata.namespace, o.metadata.name)
                for kind in view.objects
                for o in view.of(kind, name)
            ]
    wanted = {(p.metadata.namespace, p.metadata.name) for p in pods}
    for pod in view.of("Pod"):
        owner = owner_of(pod)
        key = (owner[0], pod.metadata.namespace, owner[1]) if owner else None
        if (
            key
            and (key in declared or key in deleted)
            and (pod.metadata.namespace, pod.metadata.name) not in wanted
        ):
            gone.append((pod_info, pod.metadata.namespace, pod.metadata.name))
    stored = {(p.metadata.namespace, p.metadata.name): p for p in view.of("Pod")}
    fresh = [_with_uid(p) for p in pods if (p.metadata.namespace, p.metadata.name) not in stored]
    return fresh, gone


def _with_uid(obj: KubeObject) -> KubeObject:
    """A new object gets its UID now, so that what is translated from it names it from the start."""
    if obj.metadata.uid:
        return obj
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"uid": str(uuid.uuid4())})})


def reconcile(
    ledger: Ledger, config: KubeConfig, incoming: Sequence[Object] = (), removed: Sequence[Target] = ()
) -> list[intent.Applied]:
    """Store `incoming` and delete `removed` (with controllers' pods), and the translation of it all."""
    view = load_view(ledger)
    incoming = [_with_uid(_carry_over(view, o)) if isinstance(o, KubeObject) else o for o in incoming]
    pods, gone = expand(view, incoming, removed, config)
    removed = [*removed, *gone]
    for obj in [*incoming, *pods]:
        if isinstance(obj, KubeObject):
            view.add(obj)
        elif isinstance(obj, Node) and obj.metadata.name not in view.nodes:
            view.nodes.append(obj.metadata.name)
    for info, namespace, name in removed:
        view.remove(info.kind, namespace, name)
    wanted = translate(view, config)
    keep = {objects.object_key(o) for o in wanted}
    stale = [
        objects.parse_key(objects.object_key(o)) for o in _owned(ledger) if objects.object_key(o) not in keep
    ]
    done = intent.change(ledger, [*incoming, *pods, *wanted], [*removed, *stale])
    write_back(ledger, [a.object for a in done if a.action != "deleted"])
    return done


def _carry_over(view: KubeView, obj: KubeObject) -> KubeObject:
    """What the server set on the stored object (uid, status, ClusterIP, node ports) survives a re-apply."""
    stored = view.objects.get(obj.kind, {}).get((obj.metadata.namespace, obj.metadata.name))
    if stored is None:
        return obj
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
    return KubeObject.model_validate(body)


def _with_node_port(port: Any, held: dict[tuple[Any, Any], int]) -> Any:
    key = (port.get("port"), port.get("protocol", "TCP")) if isinstance(port, dict) else None
    return {"nodePort": held[key], **port} if key in held else port


def _owned(ledger: Ledger) -> list[Object]:
    found = []
    for info in KINDS:
        if info.model is not None:
            found += [
                o
                for o in objects.list_objects(ledger, info)[0]
                if o.metadata.annotations.get(SOURCE) == KUBERNETES
            ]
    return found


def _statuses(
    ledger: Ledger, admitted: Sequence[Object]
) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """What each Pod and Service should show, from the intent that was admitted for it."""
    shown: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    nodes = objects.list_objects(ledger, lookup_kind("Node"))[0]
    addresses = {n.metadata.name: str(n.spec.address) for n in nodes if isinstance(n, Node)}
    for ep in admitted:
        if isinstance(ep, Endpoint) and ep.spec.owner and ep.spec.owner.kind == "Pod" and ep.spec.addresses:
            ips = [str(a) for a in ep.spec.addresses]
            status = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
            if ep.spec.node in addresses:
                status["hostIP"] = addresses[ep.spec.node]
            shown[("Pod", ep.metadata.namespace, ep.metadata.name)] = {"status": status}
    fips = {
        (f.metadata.namespace, f.metadata.name): str(f.spec.address)
        for f in admitted
        if isinstance(f, FloatingIP)
    }
    for vip in admitted:
        if isinstance(vip, ServiceVIP) and vip.metadata.annotations.get(SOURCE) == KUBERNETES:
            fip = fips.get((vip.metadata.namespace, vip.metadata.name))
            shown[("Service", vip.metadata.namespace, vip.metadata.name)] = {
                "clusterIP": str(vip.spec.vip),
                "nodePorts": {(p.port, p.protocol): p.node_port for p in vip.spec.ports},
                "status": {"loadBalancer": {"ingress": [{"ip": fip}]} if fip else {}},
            }
    return shown


def _with_status(obj: KubeObject, shown: dict[str, Any]) -> KubeObject:
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


def write_back(ledger: Ledger, admitted: Sequence[Object]) -> None:
    """Show admitted addresses in the stored Kubernetes objects, as the API server and kubelet would.

    `admitted`: every object the translation yielded, as the ledger now holds it.
    """
    shown = _statuses(ledger, admitted)
    stored = {
        (o.kind, o.metadata.namespace, o.metadata.name): o
        for kind in ("Pod", "Service")
        for o in objects.list_objects(ledger, lookup_kind(kind))[0]
    }
    updated = []
    for key, status in shown.items():
        old = stored.get(key)
        if isinstance(old, KubeObject):
            new = _with_status(old, status)
            if new != old:
                updated.append(new)
    if updated:
        intent.apply(ledger, updated)
