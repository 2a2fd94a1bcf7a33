"""Each node receives only what it needs: on random clusters, a node compiling only the channels its
interest names gets every entry its plan depends on exactly as a node compiling the whole ledger does."""

from __future__ import annotations

import ipaddress
import time
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from isthmus import intent
from isthmus.agent.slice import interest
from isthmus.compile import Compiler
from isthmus.compile.state import Address, Identity, Isolation, RouteEntry, ServiceEntry
from isthmus.model import Endpoint, Object, ServiceVIP, VirtualNetwork, lookup_kind, parse_object
from isthmus.store import Event, Ledger, channels
from tests.conftest import tenant_net
from tests.unit.test_compile import objects
from tests.unit.test_intent import apply, endpoint
from tests.unit.test_kernel_plan import NODES, _unique_vni, more

EVERYWHERE = ("node", "rule", "egressip", "nodeport")


def _admitted(universe: list[Object]) -> list[Object]:
    """The last version of each object, with what admission fills in: unique VNIs, backends' networks."""
    last = {(o.kind, o.metadata.namespace or "", o.metadata.name): _unique_vni(o) for o in universe}
    for unit, obj in list(last.items()):  # an endpoint's network exists
        if isinstance(obj, Endpoint) and ("VirtualNetwork", unit[1], obj.spec.network) not in last:
            del last[unit]
    endpoints = {(o.metadata.namespace, o.metadata.name): o for o in last.values() if isinstance(o, Endpoint)}
    for unit, obj in last.items():
        if isinstance(obj, ServiceVIP):
            backends = []
            for backend in obj.spec.backends:
                found = endpoints.get((obj.metadata.namespace, backend.endpoint or ""))
                network = f"{found.metadata.namespace}/{found.spec.network}" if found else None
                backends.append(backend.model_copy(update={"network": network}))
            last[unit] = obj.model_copy(update={"spec": obj.spec.model_copy(update={"backends": backends})})
    return list(last.values())


def _channels(universe: list[Object]) -> dict[str, list[Object]]:
    networks = {
        (o.metadata.namespace or "", o.metadata.name): o for o in universe if isinstance(o, VirtualNetwork)
    }
    found: dict[str, list[Object]] = defaultdict(list)
    for obj in universe:
        for channel in channels.channels(obj, lambda ns, name: networks.get((ns, name))):
            found[channel].append(obj)
    return found


def sliced(node: str, held: dict[str, list[Object]]) -> Compiler:
    """What the agent does: list the channels it needs, to a fixed point."""
    compiler, listed = Compiler(), set[str]()
    while (wanted := interest(node, compiler)) != listed:
        objs = {
            (o.kind, o.metadata.namespace or "", o.metadata.name): o for c in wanted for o in held.get(c, ())
        }
        compiler, listed = Compiler(objs.values()), wanted
    return compiler


def needed(node: str, full: Compiler) -> dict[tuple[str | int, ...], object]:
    """The entries a node's plan depends on, from the whole compile: what is its own; the cluster-wide
    entries every node holds; its networks' routes and blocks; the identities its NetworkPolicy peers
    match; the services whose backends are in its networks or that are reached from outside; and the
    networks of those backends."""
    own = full.state.get(node, {})
    hosted = {e.network for e in own.values() if hasattr(e, "network") and not isinstance(e, RouteEntry)}
    hosted |= {str(k[1]) for k in own if k[0] == "local"}
    peers = [a.peer for e in own.values() if isinstance(e, Isolation) for a in e.allows]
    found: dict[tuple[str | int, ...], object] = {}
    for key, entry in full.state[""].items():
        kind = key[0]
        if (
            kind in EVERYWHERE
            or (kind in ("route", "block") and key[1] in hosted)
            or (
                isinstance(entry, Identity)
                and any(p.matches(_address(key), entry) and not p.cidrs for p in peers)
            )
            or (isinstance(entry, ServiceEntry) and any(t.network in hosted for t in entry.targets))
        ):
            found[key] = entry
    reached = {t.network for e in [*found.values(), *_outside(full)] for t in getattr(e, "targets", ())}
    for network in hosted | reached:
        if ("network", network) in full.state[""]:
            found[("network", network)] = full.state[""][("network", network)]
    return found


def _outside(full: Compiler) -> list[ServiceEntry]:
    """Services reached from outside the cluster on any node: node ports and external IPs."""
    return [
        e
        for k, e in full.state[""].items()
        if isinstance(e, ServiceEntry) and (k[0] == "nodeport" or str(k[1]) != str(e.vip))
    ]


def _address(key: tuple[str | int, ...]) -> Address:
    return ipaddress.ip_address(str(key[2]))


def _obj(kind: str, name: str, namespace: str | None, spec: dict[str, Any], **more: Any) -> Object:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    body = {"apiVersion": "isthmus.io/v1", "kind": kind, "metadata": meta, "spec": spec}
    return parse_object(body | more)


ACROSS = [  # a pod of x whose egress policy admits every namespace, and a pod of y elsewhere
    _obj("Node", "n1", None, {"address": "192.0.2.1"}),
    _obj("Node", "n2", None, {"address": "192.0.2.2"}),
    _obj("VirtualNetwork", "a", "x", {"vni": 1}),
    _obj("VirtualNetwork", "a", "y", {"vni": 2}),
    _obj("Endpoint", "e1", "x", {"network": "a", "node": "n1", "addresses": ["10.0.0.1"]}),
    _obj("Endpoint", "e2", "y", {"network": "a", "node": "n2", "addresses": ["10.0.0.2"]}),
    _obj(
        "NetworkPolicy",
        "p",
        "x",
        {"podSelector": {}, "egress": [{"to": [{"namespaceSelector": {}}]}], "policyTypes": ["Egress"]},
        apiVersion="networking.k8s.io/v1",
    ),
]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(objects(), more()), max_size=40))
@example(ACROSS)
def test_a_node_holding_its_slice_compiles_what_its_plan_needs(universe: list[Object]) -> None:
    universe = _admitted(universe)
    full = Compiler(universe)
    held = _channels(universe)
    for node in NODES:
        mine = sliced(node, held)
        assert mine.state.get(node, {}) == full.state.get(node, {})
        want = needed(node, full)
        got = {k: mine.state[""].get(k) for k in want}
        assert got == want


def test_a_watch_resumed_from_current_positions_misses_nothing_and_replays_nothing(ledger: Ledger) -> None:
    """Three channels listed at one revision; then one changes, one does not, one's tenant is deleted (its
    stamp with it). `current` moves only the unchanged one to the store's revision, and a watch from there
    delivers exactly the changes made since the listing."""
    tenants = ("acme", "beta", "gone")
    nets = [d for i, t in enumerate(tenants) for d in tenant_net(t, cidr=f"10.{i + 1}.0.0/24")]
    apply(ledger, *nets, endpoint("a", "beta"), endpoint("a", "gone"))
    acme, beta, gone = (channels.prefix(channels.namespace(t)) for t in tenants)
    listed = {p: ledger.list(p)[1] for p in (acme, beta, gone)}
    apply(ledger, endpoint("b", "acme"))
    gone_units = [("Endpoint", "gone", "a"), ("Subnet", "gone", "red-v4"), ("VirtualNetwork", "gone", "red")]
    intent.delete(
        ledger, [*((lookup_kind(k), ns, n) for k, ns, n in gone_units), (lookup_kind("Tenant"), None, "gone")]
    )
    due, now = channels.due(ledger, listed), ledger.revision()
    moved = channels.settle(listed, due)
    assert moved == {acme: listed[acme], beta: now, gone: listed[gone]}
    watch = ledger.follow(moved)
    events: list[Event] = []
    deadline = time.monotonic() + 5
    while len(events) < 2 and time.monotonic() < deadline:
        events += watch.poll(timeout=0.2)
    events += watch.poll(timeout=0.5)
    assert sorted((e.type.value, e.key.removeprefix(channels.CHANNELS)) for e in events) == [
        ("DELETE", "ns/gone/isthmus.io/Endpoint/gone/a"),
        ("PUT", "ns/acme/isthmus.io/Endpoint/acme/b"),
    ]
    # acme, having delivered its last change, is current with the stamps' read; gone has no stamp to say so
    held = {p: max(at, watch.positions[p]) for p, at in moved.items()}
    assert channels.settle(held, due) == {acme: now, beta: now, gone: held[gone]}
    watch.close()
