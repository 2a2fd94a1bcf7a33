"""Reconcile: keep the ledger's Isthmus intent equal to the translation of its Kubernetes objects.

A Reconciler owns a ledger's Kubernetes objects. It loads them once (the cold start: everything is
translated, intent no longer meant is deleted), then every change is one transaction holding the Kubernetes
objects, the parts of the translation the change touches, and a guard on the ledger's Kubernetes epoch: a
change committed meanwhile by another reconciler (another `isthmus apply`) makes this one reload and try
again rather than overwrite it. What users read back (pod IPs, ClusterIPs, node ports, LoadBalancer
ingress) goes to a status sink: live, the API server's status subresource; from manifests, the stored
objects (pods in the change's own transaction; services after it, as their ClusterIPs are inputs again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from isthmus import intent
from isthmus.kube.conditions import network
from isthmus.kube.config import KubeConfig
from isthmus.kube.incremental import Translator
from isthmus.kube.offline import carry_over, expand, scheduled, with_status
from isthmus.kube.translate import KUBERNETES, SOURCE
from isthmus.kube.view import Key, KubeView, holding, key
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
CONFIG = "/kube/config"  # the cluster's KubeConfig, when one was stored (`isthmus kube config`)


class Moved(Exception):
    """Another reconciler changed the ledger's Kubernetes objects since this one loaded them."""


def load_view(ledger: Ledger) -> KubeView:
    """The ledger's Kubernetes objects, the nodes declared as Isthmus Nodes, and the network each pod's
    Endpoint holds."""
    nodes = objects.list_objects(ledger, lookup_kind("Node"))[0]
    endpoints = objects.list_objects(ledger, lookup_kind("Endpoint"))[0]
    view = KubeView(
        declared_nodes={n.metadata.name for n in nodes if n.metadata.annotations.get(SOURCE) != KUBERNETES},
        held=dict(
            h for e in endpoints if e.metadata.annotations.get(SOURCE) == KUBERNETES and (h := holding(e))
        ),
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
    """With a `sink`, objects come from an API server (its controllers make pods, it sets server fields)
    and their statuses go to the sink once committed. Without one, they come from manifests: this does what
    the API server and controllers would (kube.offline), and the stored objects show their statuses."""

    def __init__(
        self, ledger: Ledger, config: KubeConfig, *, sink: Callable[[KubeView, Shown], None] | None = None
    ) -> None:
        self.ledger = ledger
        self.default = config  # the configuration while the ledger stores none
        self.config = config
        self.storing: KubeConfig | None = None  # a configuration to store with the next change
        self.sink = sink
        self.live = sink is not None
        self.translator: Translator | None = None
        self.epoch: bytes | None = None
        self.cold = True  # the ledger does not hold the translator's whole translation yet

    @property
    def view(self) -> KubeView:
        """The Kubernetes objects, loaded from the ledger and translated on first use."""
        if self.translator is None:
            self.epoch = _read_epoch(self.ledger)
            self.config = self.storing or cluster_config(self.ledger, self.default)
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
        declared = [key(o) for o in [*kube, *pods]]
        try:
            with self.translator.changing([*kube, *pods], gone, nodes) as delta:
                puts, stale = delta.puts, delta.deletes
                if self.cold:
                    puts = [o for made in self.translator.parts.values() for o in made]
                    keep = {objects.object_key(o) for o in puts}
                    stale = [objects.parse_key(k) for k in _owned(self.ledger) if k not in keep]
                done = self._commit([*isthmus, *kube, *pods, *puts], [*deletes, *stale], declared)
        except BaseException:
            if self.cold:
                self.translator = None
            raise
        self.cold = False
        if self.sink is not None:
            self.sink(self.view, _statuses(Txn(self.ledger), declared, done))
        return done

    def configure(self, config: KubeConfig) -> list[intent.Applied]:
        """Make `config` the cluster's: store it with everything translated again by it, in one
        transaction, or (refused) change nothing."""
        self.storing, self.translator = config, None
        try:
            return self.apply()
        finally:
            self.storing, self.translator = None, None

    def show(self, keys: Sequence[Key]) -> None:
        """Send these objects' statuses to the sink again (after a failed write)."""
        if self.sink is not None:
            self.sink(self.view, _statuses(Txn(self.ledger), keys, []))

    def _commit(
        self, puts: Sequence[Object], deletes: Sequence[Target], declared: Sequence[Key]
    ) -> list[intent.Applied]:
        """Commit the change if the epoch is still this reconciler's; from manifests, with the statuses of
        the objects `declared` in it."""
        epoch = uuid.uuid4().hex.encode()
        wrote = [False]
        shown: list[KubeObject] = []

        def finish(txn: Txn, done: list[intent.Applied]) -> None:
            if txn.get(EPOCH) != self.epoch:
                raise Moved
            if not self.live:
                shown[:] = self._showing(_statuses(txn, declared, done))
                for obj in shown:
                    objects.put(txn, obj, None)
            if self.storing is not None:
                txn.put(CONFIG, self.storing.model_dump_json(by_alias=True).encode())
            wrote[0] = bool(txn.writes)
            if wrote[0]:
                txn.put(EPOCH, epoch)

        done = intent.change(self.ledger, puts, deletes, missing_ok=self.live, finish=finish)
        if wrote[0]:
            self.epoch = epoch
        assert self.translator is not None
        for pod in (o for o in shown if o.kind == "Pod"):  # pod IPs are no input of the translation
            self.view.add(pod)
        self.translator.settle([o for o in shown if o.kind == "Service"])
        return done

    def _showing(self, shown: Shown) -> list[KubeObject]:
        """The objects of the view that do not show their statuses yet, showing them."""
        found = [(self.view.get(*k), status) for k, status in shown.items()]
        return [new for old, status in found if old and (new := with_status(old, status)) != old]


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


def cluster_config(ledger: Ledger, default: KubeConfig) -> KubeConfig:
    """The cluster's configuration as stored, else `default`."""
    kv = ledger.get(CONFIG)
    return KubeConfig.model_validate_json(kv.value) if kv else default


def _statuses(txn: Txn, keys: Sequence[Key], done: Sequence[intent.Applied]) -> Shown:
    """Statuses from the intent admitted (`done`), and from what the ledger holds for the objects `keys`
    names that nothing admitted covers (re-declared objects)."""
    admitted = {objects.object_key(a.object): a.object for a in done if a.action != "deleted"}
    for kind, namespace, name in keys:
        for info in _SHOWN.get(kind, ()):
            found = objects.key_of(info, namespace, name)
            if found not in admitted and (stored := objects.get(txn, info, namespace, name)):
                admitted[found] = stored
    nodes = objects.scan(txn, lookup_kind("Node"))
    return {**pod_statuses(nodes, list(admitted.values())), **service_statuses(txn, list(admitted.values()))}


def pod_statuses(nodes: Sequence[Object], admitted: Sequence[Object]) -> Shown:
    """What each Pod whose Endpoint was admitted should show: its addresses, its node's and whether it is
    in the network it declares."""
    shown: Shown = {}
    addresses = {n.metadata.name: str(n.spec.address) for n in nodes if isinstance(n, Node)}
    for ep in admitted:
        if isinstance(ep, Endpoint) and ep.spec.owner and ep.spec.owner.kind == "Pod" and ep.spec.addresses:
            ips = [str(a) for a in ep.spec.addresses]
            status = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips], "conditions": [network(ep)]}
            if ep.spec.node in addresses:
                status["hostIP"] = addresses[ep.spec.node]
            shown[("Pod", ep.metadata.namespace, ep.metadata.name)] = {"status": status}
    return shown


def service_statuses(txn: Txn, admitted: Sequence[Object]) -> Shown:
    """What each Service whose ServiceVIP was admitted should show: ClusterIPs and their families, node
    ports, ingress."""
    shown: Shown = {}
    fips = {
        (f.metadata.namespace, f.metadata.name): [str(a) for a in f.spec.addresses]
        for f in admitted
        if isinstance(f, FloatingIP)
    }
    for vip in admitted:
        if isinstance(vip, ServiceVIP) and vip.metadata.annotations.get(SOURCE) == KUBERNETES:
            ingress = fips.get((vip.metadata.namespace, vip.metadata.name))
            if ingress is None and vip.spec.type == "LoadBalancer":  # its floating IP did not change
                stored = objects.get(txn, _FIP, vip.metadata.namespace, vip.metadata.name)
                ingress = [str(a) for a in stored.spec.addresses] if isinstance(stored, FloatingIP) else None
            shown[("Service", vip.metadata.namespace, vip.metadata.name)] = {
                "clusterIP": str(vip.spec.vip),
                "clusterIPs": [str(v) for v in vip.spec.vips],
                "ipFamilies": list(vip.spec.ip_families),
                "nodePorts": {(p.port, p.protocol): p.node_port for p in vip.spec.ports},
                "status": {"loadBalancer": {"ingress": [{"ip": a} for a in ingress]} if ingress else {}},
            }
    return shown
