"""Reconcile: keep the ledger's Isthmus intent equal to the translation of its Kubernetes objects.

A Reconciler owns a ledger's Kubernetes objects. It loads them once (the cold start: everything is
translated, intent no longer meant is deleted), then every change is one transaction holding the Kubernetes
objects, the parts of the translation the change touches, and a guard on the ledger's Kubernetes epoch: a
change committed meanwhile by another reconciler (another `isthmus apply`) makes this one reload and try
again rather than overwrite it. Then what users read back (pod IPs, ClusterIPs, node ports, LoadBalancer
ingress) goes to a status sink: the stored objects for manifests, the API server's status subresource live.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from isthmus import intent
from isthmus.kube.config import KubeConfig
from isthmus.kube.incremental import Translator
from isthmus.kube.offline import carry_over, expand, scheduled, with_status
from isthmus.kube.translate import KUBERNETES, SOURCE
from isthmus.kube.view import Key, KubeView, key
from isthmus.model import (
    KINDS,
    Endpoint,
    FloatingIP,
    KindInfo,
    KubeObject,
    Node,
    Object,
    ServiceVIP,
    lookup_kind,
)
from isthmus.store import Ledger, Txn, objects

Target = tuple[KindInfo, str | None, str]
_FIP = lookup_kind("FloatingIP")
_SHOWN = {
    "Pod": (lookup_kind("Endpoint"),),
    "Service": (lookup_kind("ServiceVIP"), lookup_kind("FloatingIP")),
}
Shown = dict[Key, dict[str, Any]]
EPOCH = "/kube/epoch"


class Moved(Exception):
    """Another reconciler changed the ledger's Kubernetes objects since this one loaded them."""


def load_view(ledger: Ledger) -> KubeView:
    nodes = objects.list_objects(ledger, lookup_kind("Node"))[0]
    view = KubeView(
        declared_nodes={n.metadata.name for n in nodes if n.metadata.annotations.get(SOURCE) != KUBERNETES}
    )
    for info in KINDS:
        if info.model is None:
            for obj in objects.list_objects(ledger, info)[0]:
                assert isinstance(obj, KubeObject)
                view.add(obj)
    return view


def _owned(ledger: Ledger) -> list[str]:
    """Keys of the intent that translation made."""
    return [
        objects.object_key(o)
        for info in KINDS
        if info.model is not None
        for o in objects.list_objects(ledger, info)[0]
        if o.metadata.annotations.get(SOURCE) == KUBERNETES
    ]


class Reconciler:
    """`live`: objects come from an API server (its controllers make pods, it sets server fields);
    otherwise from manifests, and this does what the API server and controllers would (kube.offline).
    `sink`: where statuses go; by default into the stored objects."""

    def __init__(
        self,
        ledger: Ledger,
        config: KubeConfig,
        *,
        live: bool = False,
        sink: Callable[[KubeView, Shown], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.live = live
        self.sink = sink or self._write_back
        self.translator: Translator | None = None
        self.epoch: bytes | None = None
        self.cold = True  # the ledger does not hold the translator's whole translation yet

    @property
    def view(self) -> KubeView:
        """The Kubernetes objects, loaded from the ledger and translated on first use."""
        if self.translator is None:
            self.epoch = _read_epoch(self.ledger)
            translator = Translator(load_view(self.ledger), self.config)
            translator.full()
            self.translator, self.cold = translator, True
        return self.translator.view

    def apply(self, incoming: Sequence[Object] = (), removed: Sequence[Target] = ()) -> list[intent.Applied]:
        """Store `incoming` and delete `removed`, with the translation of the change, in one transaction."""
        for _ in range(5):
            try:
                return self._apply(incoming, removed)
            except Moved:
                self.translator = None
        raise Moved("the Kubernetes objects keep changing under this reconciler; try again")

    def _apply(self, incoming: Sequence[Object], removed: Sequence[Target]) -> list[intent.Applied]:
        view = self.view
        assert self.translator is not None
        kube = [o for o in incoming if isinstance(o, KubeObject)]
        gone = [(i.kind, ns, name) for i, ns, name in removed if i.model is None]
        pods: list[KubeObject] = []
        if not self.live:
            kube = [scheduled(carry_over(view, o), view, self.config) for o in kube]
            pods, dropped = expand(view, kube, gone, self.config)
            gone += dropped
        nodes = (view.declared_nodes | {o.metadata.name for o in incoming if isinstance(o, Node)}) - {
            name for i, _, name in removed if i.kind == "Node" and i.model is not None
        }
        isthmus = [o for o in incoming if not isinstance(o, KubeObject)]
        deletes = [*(t for t in removed if t[0].model is not None), *(kube_target(k) for k in gone)]
        try:
            with self.translator.changing([*kube, *pods], gone, nodes) as delta:
                puts, stale = delta.puts, delta.deletes
                if self.cold:
                    puts = [o for made in self.translator.parts.values() for o in made]
                    keep = {objects.object_key(o) for o in puts}
                    stale = [objects.parse_key(k) for k in _owned(self.ledger) if k not in keep]
                done = self._commit([*isthmus, *kube, *pods, *puts], [*deletes, *stale])
        except BaseException:
            if self.cold:
                self.translator = None
            raise
        self.cold = False
        admitted = {objects.object_key(a.object): a.object for a in done if a.action != "deleted"}
        self._show([key(o) for o in [*kube, *pods]], admitted)
        return done

    def show(self, keys: Sequence[Key]) -> None:
        """Send these objects' statuses to the sink again (after a failed write)."""
        self._show(keys, {})

    def _show(self, keys: Sequence[Key], admitted: dict[str, Object]) -> None:
        """Statuses of what was admitted and of `keys` (re-declared objects show what the ledger holds)."""
        for kind, namespace, name in keys:
            for info in _SHOWN.get(kind, ()):
                found = objects.key_of(info, namespace, name)
                if found not in admitted and (stored := objects.list_one(self.ledger, info, namespace, name)):
                    admitted[found] = stored
        self.sink(self.view, statuses(self.ledger, list(admitted.values())))

    def _commit(self, puts: Sequence[Object], deletes: Sequence[Target]) -> list[intent.Applied]:
        epoch = uuid.uuid4().hex.encode()
        wrote = [False]

        def guard(txn: Txn) -> None:
            if txn.get(EPOCH) != self.epoch:
                raise Moved
            wrote[0] = bool(txn.writes)
            if wrote[0]:
                txn.put(EPOCH, epoch)

        done = intent.change(self.ledger, puts, deletes, missing_ok=self.live, guard=guard)
        if wrote[0]:
            self.epoch = epoch
        return done

    def _write_back(self, view: KubeView, shown: Shown) -> None:
        """Manifests: the stored objects show their addresses, as the API server and kubelet would."""
        updated = []
        for (kind, namespace, name), status in shown.items():
            old = view.get(kind, namespace, name)
            if old is not None and (new := with_status(old, status)) != old:
                updated.append(new)
        if updated:
            assert self.translator is not None
            inputs = [o for o in updated if o.kind == "Service"]  # ClusterIPs and node ports are; pod IPs not
            with self.translator.changing(inputs, ()) as delta:
                self._commit([*updated, *delta.puts], delta.deletes)
            for pod in (o for o in updated if o.kind == "Pod"):
                view.add(pod)


def _read_epoch(ledger: Ledger) -> bytes | None:
    kv = ledger.get(EPOCH)
    return kv.value if kv else None


def kube_target(key: Key) -> Target:
    """The ledger's name of a Kubernetes object."""
    kind, namespace, name = key
    return next(i for i in KINDS if i.kind == kind and i.model is None), namespace, name


def reconcile(
    ledger: Ledger, config: KubeConfig, incoming: Sequence[Object] = (), removed: Sequence[Target] = ()
) -> list[intent.Applied]:
    """One change from manifests, on a reconciler loaded for it."""
    return Reconciler(ledger, config).apply(incoming, removed)


def statuses(ledger: Ledger, admitted: Sequence[Object]) -> dict[Key, dict[str, Any]]:
    """What each Pod and Service should show, from the intent that was admitted for it."""
    shown: dict[Key, dict[str, Any]] = {}
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
            if fip is None and vip.spec.type == "LoadBalancer":  # its floating IP did not change
                stored = objects.list_one(ledger, _FIP, vip.metadata.namespace, vip.metadata.name)
                fip = str(stored.spec.address) if isinstance(stored, FloatingIP) else None
            shown[("Service", vip.metadata.namespace, vip.metadata.name)] = {
                "clusterIP": str(vip.spec.vip),
                "nodePorts": {(p.port, p.protocol): p.node_port for p in vip.spec.ports},
                "status": {"loadBalancer": {"ingress": [{"ip": fip}]} if fip else {}},
            }
    return shown
