"""Incremental translation: a change to a few Kubernetes objects recomputes only the parts it touches.

Invariant: after every change, `parts` equals `{u: part(view, u) for u in units(view)}` (the pure
translation), and the union of the parts is what `translate(view)` yields; `view.held` names, for each
pod UID with an Endpoint in the parts, that Endpoint's network (so a pod keeps its network for life). A
change that fails (bad input, or a ledger commit that does not happen) leaves the view and the parts as
they were.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from isthmus.kube.config import KubeConfig
from isthmus.kube.translate import INFRASTRUCTURE, check_network_policy, part, selects, units
from isthmus.kube.view import Key, KubeView, holding, key, node_name, service_of
from isthmus.model import Endpoint, KindInfo, KubeObject, Resource, ServiceVIP
from isthmus.store import objects


@dataclass
class Delta:
    """What the ledger's intent must do to follow a change: objects to put, objects to delete."""

    puts: list[Resource] = field(default_factory=list)
    deletes: list[tuple[KindInfo, str | None, str]] = field(default_factory=list)


class Translator:
    def __init__(self, view: KubeView, config: KubeConfig) -> None:
        self.view = view
        self.config = config
        self.parts: dict[Key, list[Resource]] = {}

    def full(self) -> list[Resource]:
        """Translate everything afresh (the cold start); every object the view means."""
        for policy in self.view.of("NetworkPolicy"):
            check_network_policy(policy)
        self.parts = {u: made for u in units(self.view) if (made := part(self.view, u, self.config))}
        self.view.held = dict(h for made in self.parts.values() for o in made if (h := holding(o)))
        return [o for made in self.parts.values() for o in made]

    @contextmanager
    def changing(
        self, puts: Sequence[KubeObject], deletes: Sequence[Key], declared_nodes: set[str] | None = None
    ) -> Iterator[Delta]:
        """Apply a change to the view (and the set of declared nodes, when given) and yield the delta of
        the translation; if the body raises, the view and the parts are restored."""
        undo_view: list[tuple[Key, KubeObject | None]] = []
        undo_held: list[tuple[str, str | None]] = []
        touched: set[Key] = set()
        nodes_before = set(self.view.declared_nodes)
        try:
            if declared_nodes is not None and declared_nodes != self.view.declared_nodes:
                self.view.declared_nodes = declared_nodes
                touched.add(INFRASTRUCTURE)
            for obj in puts:
                if obj.kind == "NetworkPolicy":
                    check_network_policy(obj)
                old = self.view.add(obj)
                undo_view.append((key(obj), old))
                touched |= self._touches(old, obj)
            for kind, namespace, name in deletes:
                old = self.view.remove(kind, namespace, name)
                undo_view.append(((kind, namespace, name), old))
                touched |= self._touches(old, None)
            before = {u: self.parts.get(u, []) for u in touched}
            delta = self._recompute(touched, undo_held)
        except BaseException:
            self._restore(undo_view, nodes_before, undo_held)
            raise
        try:
            yield delta
        except BaseException:
            self._restore(undo_view, nodes_before, undo_held)
            for unit, made in before.items():
                self._set(unit, made)
            raise

    def settle(self, objs: Sequence[KubeObject]) -> None:
        """Take changed objects whose translation the ledger holds already (services showing the ClusterIP
        and node ports admission gave them): the view and the parts follow; there is nothing to write."""
        with self.changing(objs, ()):
            pass

    def _restore(
        self,
        undo_view: list[tuple[Key, KubeObject | None]],
        nodes: set[str],
        undo_held: list[tuple[str, str | None]],
    ) -> None:
        for (kind, namespace, name), old in reversed(undo_view):
            if old is None:
                self.view.remove(kind, namespace, name)
            else:
                self.view.add(old)
        self.view.declared_nodes = nodes
        for uid, network in reversed(undo_held):
            _keep(self.view.held, uid, network)

    def _set(self, unit: Key, made: list[Resource]) -> None:
        if made:
            self.parts[unit] = made
        else:
            self.parts.pop(unit, None)

    def _recompute(self, touched: set[Key], undo_held: list[tuple[str, str | None]]) -> Delta:
        """The delta of the touched parts; pods' held networks follow their Endpoints (`undo_held` says
        how to put them back)."""
        delta = Delta()
        for unit in touched:
            old = {objects.object_key(o): o for o in self.parts.get(unit, [])}
            made = part(self.view, unit, self.config)
            new = {objects.object_key(o): o for o in made}
            delta.puts += [o for k, o in new.items() if old.get(k) != o]
            delta.deletes += [objects.parse_key(k) for k in old if k not in new]
            self._set(unit, made)
            held = dict(h for o in made if (h := holding(o)))
            for uid in {h[0] for o in old.values() if (h := holding(o))} | set(held):
                undo_held.append((uid, self.view.held.get(uid)))
                _keep(self.view.held, uid, held.get(uid))
        delta.puts += self._readmitted(delta.puts)
        return delta

    def _readmitted(self, puts: list[Resource]) -> list[Resource]:
        """VIPs naming an endpoint that changes, though their part did not: admission copies the endpoint's
        address and node into their backends, so they are admitted again."""
        changed = {(o.metadata.namespace, o.metadata.name) for o in puts if isinstance(o, Endpoint)}
        given = {objects.object_key(o) for o in puts}
        return [
            vip
            for namespace in {ns for ns, _ in changed}
            for svc in self.view.of("Service", namespace)
            for vip in self.parts.get(key(svc), [])
            if isinstance(vip, ServiceVIP)
            and objects.object_key(vip) not in given
            and any((namespace, b.endpoint) in changed for b in vip.spec.backends)
        ]

    def _touches(self, old: KubeObject | None, new: KubeObject | None) -> set[Key]:
        """The parts whose inputs include this object."""
        obj = new or old
        if obj is None:
            return set()
        kind, namespace, name = key(obj)
        touched: set[Key] = set()
        if kind in ("Pod", "Service", "Node") or (kind == "Namespace" and namespace is None):
            touched.add((kind, namespace, name))
        if kind == "Namespace":
            touched |= {key(o) for k in ("Pod", "Service") for o in self.view.of(k, name)}
        if namespace is not None:  # any object in a namespace makes its tenant
            touched.add(("Namespace", None, namespace))
        if kind == "Endpoints":
            touched.add(("Service", namespace, name))
        if kind == "EndpointSlice":
            touched |= {("Service", namespace, s) for o in (old, new) if o and (s := service_of(o))}
        if kind == "Node" or (kind == "Pod" and self.config.default_node in (_node(old), _node(new))):
            touched.add(INFRASTRUCTURE)
        if kind == "Pod":
            touched |= self._services_of(namespace, name, [p for p in (old, new) if p is not None])
        return touched

    def _services_of(self, namespace: str | None, name: str, pods: list[KubeObject]) -> set[Key]:
        """Services whose backends may name the pod: by selector, or listed in their Endpoints or
        EndpointSlices."""
        found = {key(s) for s in self.view.of("Service", namespace) if any(selects(s, p) for p in pods)}
        for sliced in self.view.of("EndpointSlice", namespace):
            service = service_of(sliced)
            refs = (e.get("targetRef") or {} for e in sliced.body.get("endpoints") or [])
            if service and any(r.get("kind") == "Pod" and r.get("name") == name for r in refs):
                found.add(("Service", namespace, service))
        for listed in self.view.of("Endpoints", namespace):
            if any(
                (a.get("targetRef") or {}).get("name") == name
                for subset in listed.body.get("subsets") or []
                for field_ in ("addresses", "notReadyAddresses")
                for a in subset.get(field_) or []
            ):
                found.add(("Service", namespace, listed.metadata.name))
        return found


def _node(pod: KubeObject | None) -> str | None:
    return None if pod is None else node_name(pod)


def _keep(held: dict[str, str], uid: str, network: str | None) -> None:
    if network is None:
        held.pop(uid, None)
    else:
        held[uid] = network
