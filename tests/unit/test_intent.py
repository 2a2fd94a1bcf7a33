"""Apply and delete against the ledger: references, overlaps, allocation, and all-or-nothing commits."""

from __future__ import annotations

import importlib
import ipaddress
import time
from typing import Any

import pytest

from isthmus import intent
from isthmus.model import (
    Endpoint,
    FloatingIP,
    ManifestError,
    ServiceVIP,
    VirtualNetwork,
    lookup_kind,
    parse_manifests,
)
from isthmus.store import Ledger, Txn, objects
from tests.conftest import manifest, obj, tenant_net


@pytest.fixture(autouse=True, params=["by key", "prefetched"])
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test twice: changes reading key by key, and every change prefetching what it reads."""
    if request.param == "prefetched":
        monkeypatch.setattr(importlib.import_module("isthmus.intent.apply"), "PREFETCH", 1)


def apply(ledger: Ledger, *docs: dict[str, Any]) -> list[intent.Applied]:
    return intent.apply(ledger, parse_manifests(manifest(*docs)))


def snapshot(ledger: Ledger) -> list[tuple[str, bytes]]:
    items, _ = ledger.list("/")
    return [(kv.key, kv.value) for kv in items]


def failing(ledger: Ledger, error: type[Exception], match: str, *docs: dict[str, Any]) -> None:
    """Applying `docs` fails with `error`, and the ledger is exactly as it was."""
    before, revision = snapshot(ledger), ledger.revision()
    with pytest.raises(error, match=match):
        apply(ledger, *docs)
    assert snapshot(ledger) == before and ledger.revision() == revision


def endpoint(name: str, tenant: str = "acme", **spec: Any) -> dict[str, Any]:
    return obj("Endpoint", name, tenant, {"network": "red", **spec})


def test_apply_allocates_and_reapply_is_unchanged(ledger: Ledger) -> None:
    done = apply(ledger, *tenant_net(), endpoint("a"), endpoint("b"))
    assert [d.action for d in done] == ["created"] * 5
    a, b = (d.object for d in done[3:])
    assert isinstance(a, Endpoint) and isinstance(b, Endpoint)
    assert [str(x) for x in a.spec.addresses + b.spec.addresses] == ["10.1.0.2", "10.1.0.3"]
    assert a.metadata.uid and a.spec.mac and a.metadata.resource_version == ledger.revision()
    network = done[1].object
    assert isinstance(network, VirtualNetwork) and network.spec.vni == 4096
    revision = ledger.revision()
    assert [d.action for d in apply(ledger, *tenant_net(), endpoint("a"), endpoint("b"))] == ["unchanged"] * 5
    assert ledger.revision() == revision


def test_the_ledger_stamps_when_it_took_each_change_and_ignores_a_given_time(ledger: Ledger) -> None:
    before = time.time()
    (made,) = [d.object for d in apply(ledger, *tenant_net(), endpoint("a"))][3:]
    stamped = made.metadata.changed_at
    assert stamped is not None and before <= stamped <= time.time()
    forged = endpoint("a")
    forged["metadata"]["changedAt"] = 1.0
    (again,) = apply(ledger, *tenant_net(), forged)[3:]
    assert again.action == "unchanged" and again.object.metadata.changed_at == stamped
    moved = endpoint("a")
    moved["metadata"]["labels"] = {"tier": "web"}
    (changed,) = apply(ledger, *tenant_net(), moved)[3:]
    assert changed.action == "configured" and (changed.object.metadata.changed_at or 0) >= stamped


def test_a_change_is_redone_when_another_takes_what_it_read(ledger: Ledger) -> None:
    apply(ledger, *tenant_net())
    taken: list[intent.Applied] = []

    def finish(txn: Txn, done: list[intent.Applied]) -> None:
        if not taken:  # another apply commits meanwhile, taking the same first free address
            taken.extend(apply(ledger, endpoint("b")))

    a = intent.change(ledger, parse_manifests(manifest(endpoint("a"))), finish=finish)[0].object
    b = taken[0].object
    assert isinstance(a, Endpoint) and isinstance(b, Endpoint)
    assert [str(x) for x in b.spec.addresses + a.spec.addresses] == ["10.1.0.2", "10.1.0.3"]


def test_replace_keeps_identity_and_address(ledger: Ledger) -> None:
    first = apply(ledger, *tenant_net(), endpoint("a"))[-1].object
    again = apply(ledger, endpoint("a", node=None, ports=[{"name": "http", "port": 80}]))[0]
    assert again.action == "configured"
    assert again.object.metadata.uid == first.metadata.uid
    assert isinstance(again.object, Endpoint) and isinstance(first, Endpoint)
    assert again.object.spec.addresses == first.spec.addresses


def test_requested_address_moves_and_frees_the_old_one(ledger: Ledger) -> None:
    apply(ledger, *tenant_net(), endpoint("a"))
    moved = apply(ledger, endpoint("a", addresses=["10.1.0.50"]))[0].object
    assert isinstance(moved, Endpoint) and [str(x) for x in moved.spec.addresses] == ["10.1.0.50"]
    failing(
        ledger,
        intent.Invalid,
        "10.1.0.50 in subnet acme/red-v4 .* is already held by Endpoint/acme/a",
        endpoint("b", addresses=["10.1.0.50"]),
    )
    failing(
        ledger,
        intent.Invalid,
        "10.9.0.1 is in no subnet of network acme/red",
        endpoint("b", addresses=["10.9.0.1"]),
    )


def test_overlapping_subnet_is_refused_and_nothing_changes(ledger: Ledger) -> None:
    apply(ledger, *tenant_net())
    failing(
        ledger,
        intent.Invalid,
        r"10.1.0.128/25 overlaps Subnet/acme/red-v4 \(10.1.0.0/24\) in network acme/red",
        obj("VirtualNetwork", "blue", "acme"),
        obj("Subnet", "more", "acme", {"network": "red", "cidr": "10.1.0.128/25"}),
    )
    # the same CIDR on another network (or tenant) is fine: address spaces may overlap across networks
    apply(
        ledger,
        obj("VirtualNetwork", "blue", "acme"),
        obj("Subnet", "blue-v4", "acme", {"network": "blue", "cidr": "10.1.0.0/24"}),
    )


def test_exhausted_pool_fails_the_whole_apply(ledger: Ledger) -> None:
    apply(ledger, *tenant_net(cidr="10.1.0.0/30"), endpoint("a"))  # a /30 has one address past the gateway
    failing(
        ledger,
        intent.Invalid,
        r"every subnet of network acme/red is exhausted \(10.1.0.0/30\)",
        obj("VirtualNetwork", "green", "acme"),
        endpoint("b"),
    )


def test_references_must_exist(ledger: Ledger) -> None:
    failing(ledger, intent.NotFound, "tenant 'acme' does not exist", obj("VirtualNetwork", "red", "acme"))
    apply(ledger, *tenant_net())
    failing(
        ledger,
        intent.NotFound,
        "virtual network acme/nope not found",
        obj("Endpoint", "e", "acme", {"network": "nope"}),
    )
    failing(ledger, intent.NotFound, "names Node n9, which does not exist", endpoint("e", node="n9"))
    failing(
        ledger,
        intent.Invalid,
        "spec.cidr is immutable",
        obj("Subnet", "red-v4", "acme", {"network": "red", "cidr": "10.2.0.0/24"}),
    )


def test_other_tenants_networks_are_invisible_unless_shared_or_external(ledger: Ledger) -> None:
    apply(ledger, *tenant_net("acme"), *tenant_net("umbrella", "blue"))
    failing(
        ledger,
        intent.NotFound,
        "virtual network umbrella/blue not found",
        obj("Endpoint", "spy", "acme", {"network": "umbrella/blue"}),
    )
    failing(
        ledger,
        intent.Invalid,
        "pool red is not an external network",
        obj("FloatingIP", "f", "acme", {"pool": "red"}),
    )
    apply(
        ledger,
        obj("Tenant", "admin"),
        obj("VirtualNetwork", "public", "admin", {"external": True}),
        obj("Subnet", "public-v4", "admin", {"network": "public", "cidr": "203.0.113.0/24"}),
    )
    done = apply(
        ledger,
        endpoint("web"),
        obj("FloatingIP", "web", "acme", {"pool": "admin/public", "endpoints": ["web"]}),
        obj("ServiceVIP", "web", "acme", {"network": "red", "ports": [{"port": 80}]}),
    )
    fip, vip = done[1].object, done[2].object
    assert isinstance(fip, FloatingIP) and str(fip.spec.address) == "203.0.113.2"
    assert isinstance(vip, ServiceVIP) and str(vip.spec.vip) == "10.1.0.3"
    (egress,) = apply(ledger, obj("EgressIP", "out", "acme", {"pool": "admin/public"}))
    assert str(egress.object.spec.address) == "203.0.113.3"  # type: ignore[attr-defined]
    failing(
        ledger,
        intent.Invalid,
        r"EgressIP/acme/second: tenant acme already egresses as 203.0.113.3 \(EgressIP/acme/out\)",
        obj("EgressIP", "second", "acme", {"pool": "admin/public"}),
    )


def test_delete_refuses_what_is_in_use_and_frees_allocations(ledger: Ledger) -> None:
    apply(ledger, *tenant_net(), endpoint("a"))
    network = lookup_kind("VirtualNetwork")
    with pytest.raises(
        intent.InUse, match="VirtualNetwork/acme/red is in use by Endpoint/acme/a, Subnet/acme/red-v4"
    ):
        intent.delete(ledger, [(network, "acme", "red")])
    with pytest.raises(
        intent.InUse, match="Subnet/acme/red-v4 still has addresses allocated to Endpoint/acme/a"
    ):
        intent.delete(ledger, [(lookup_kind("Subnet"), "acme", "red-v4")])
    with pytest.raises(intent.InUse, match="tenant acme still holds"):
        intent.delete(ledger, [(lookup_kind("Tenant"), None, "acme")])
    everything = [(objects.parse_key(kv.key)) for kv in ledger.list("/objects/")[0]]
    assert len(intent.delete(ledger, everything)) == 4
    left = [kv.key for kv in ledger.list("/")[0]]
    # objects, reference index, allocations and the tenant's channel stamp all gone; the cluster's stays
    assert left == ["/channels/stamps/cluster", "/ipam/vni/hint"]
    with pytest.raises(intent.NotFound):
        intent.delete(ledger, [(network, "acme", "red")])
    assert intent.delete(ledger, [(network, "acme", "red")], missing_ok=True) == []


def test_create_only_and_stale_versions(ledger: Ledger) -> None:
    (tenant,) = parse_manifests(manifest(obj("Tenant", "acme")))
    created = intent.apply(ledger, [tenant], create_only=True)[0].object
    with pytest.raises(intent.AlreadyExists, match="Tenant/acme already exists"):
        intent.apply(ledger, [tenant], create_only=True)
    stale = created.model_copy(
        update={"metadata": created.metadata.model_copy(update={"resource_version": 999})}
    )
    with pytest.raises(intent.Stale, match="Tenant/acme has changed since version 999"):
        intent.apply(ledger, [stale], check_version=True)


def test_vni_requests_and_conflicts(ledger: Ledger) -> None:
    apply(ledger, *tenant_net(), obj("VirtualNetwork", "blue", "acme", {"vni": 100}))
    failing(
        ledger,
        intent.Invalid,
        "VNI 100 in the VNI range is already held by VirtualNetwork/acme/blue",
        obj("VirtualNetwork", "green", "acme", {"vni": 100}),
    )


def test_duplicates_in_one_apply_are_refused(ledger: Ledger) -> None:
    failing(
        ledger, intent.Invalid, "Tenant/acme is given twice", obj("Tenant", "acme"), obj("Tenant", "acme")
    )


def test_kubernetes_objects_are_stored_as_declared(ledger: Ledger) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]},
    }
    stored = apply(ledger, pod)[0].object
    got = objects.list_one(ledger, lookup_kind("pods"), "default", "web")
    assert got == stored
    assert got.model_dump(by_alias=True, exclude_none=True)["spec"] == pod["spec"]


def test_networks_grow_by_blocks_of_their_subnet_pool(ledger: Ledger) -> None:
    apply(
        ledger,
        obj("Tenant", "t"),
        obj("SubnetPool", "pods", spec={"cidr": "10.32.0.0/26", "blockPrefixLength": 29}),
        obj("VirtualNetwork", "red", "t", {"subnetPool": "pods"}),
    )
    made = apply(ledger, *[obj("Endpoint", f"e{i}", "t", {"network": "red"}) for i in range(12)])
    addresses = [str(a.object.spec.addresses[0]) for a in made if isinstance(a.object, Endpoint)]
    assert addresses[:6] == ["10.32.0.2", "10.32.0.3", "10.32.0.4", "10.32.0.5", "10.32.0.6", "10.32.0.10"]
    assert len(set(addresses)) == 12
    subnets = objects.list_objects(ledger, lookup_kind("Subnet"), "t")[0]
    assert {s.metadata.name: str(s.spec.cidr) for s in subnets} == {  # type: ignore[attr-defined]
        "red-0": "10.32.0.0/29",
        "red-1": "10.32.0.8/29",
        "red-2": "10.32.0.16/29",
    }
    failing(
        ledger,
        intent.Invalid,
        r"subnet pool pods \(10.32.0.0/26\) is exhausted",
        *[obj("Endpoint", f"x{i}", "t", {"network": "red"}) for i in range(30)],
    )
    intent.delete(ledger, [(lookup_kind("Endpoint"), "t", f"e{i}") for i in range(12)])
    intent.delete(ledger, [(lookup_kind("VirtualNetwork"), "t", "red")])  # its blocks go with it
    assert objects.list_objects(ledger, lookup_kind("Subnet"))[0] == []


def test_a_dual_stack_network_gives_each_endpoint_one_address_of_each_family(ledger: Ledger) -> None:
    """Pools of both families: each endpoint on a node takes an IPv6 address (the network's first family)
    and an IPv4 one, each from its node's block of that family; they are kept on reapply, freed on delete."""
    apply(
        ledger,
        obj("Tenant", "t"),
        *[obj("Node", f"n{i}", spec={"address": f"192.0.2.{i}"}) for i in (1, 2)],
        obj("SubnetPool", "pods4", spec={"cidr": "10.32.0.0/26", "blockPrefixLength": 29}),
        obj("SubnetPool", "pods6", spec={"cidr": "fd00:10:32::/56", "blockPrefixLength": 64}),
        obj("VirtualNetwork", "red", "t", {"subnetPools": ["pods6", "pods4"]}),
    )
    endpoints = [obj("Endpoint", f"e{i}", "t", {"network": "red", "node": f"n{i % 2 + 1}"}) for i in range(8)]
    made = [a.object for a in apply(ledger, *endpoints)]
    subnets = objects.list_objects(ledger, lookup_kind("Subnet"), "t")[0]
    blocks = {ipaddress.ip_network(str(s.spec.cidr)): s.spec.node for s in subnets}  # type: ignore[attr-defined]
    assert sorted(b.prefixlen for b in blocks) == [29, 29, 64, 64]  # a block of each family per node
    for endpoint in made:
        assert isinstance(endpoint, Endpoint)
        assert [a.version for a in endpoint.spec.addresses] == [6, 4]
        for address in endpoint.spec.addresses:
            (block,) = [b for b in blocks if address in b]
            assert blocks[block] == endpoint.spec.node
    assert [a.object for a in apply(ledger, *endpoints)] == made  # kept
    intent.delete(ledger, [(lookup_kind("Endpoint"), "t", f"e{i}") for i in range(8)])
    intent.delete(ledger, [(lookup_kind("VirtualNetwork"), "t", "red")])  # its blocks of both pools go
    assert objects.list_objects(ledger, lookup_kind("Subnet"))[0] == []


def test_a_network_grows_by_one_pool_of_each_family(ledger: Ledger) -> None:
    pools = [obj("SubnetPool", n, spec={"cidr": c, "blockPrefixLength": b}) for n, (c, b) in POOLS.items()]
    failing(
        ledger,
        intent.Invalid,
        "VirtualNetwork/t/red: subnet pools a and b are both IPv4; a network grows by one pool of each "
        "family",
        obj("Tenant", "t"),
        *pools,
        obj("VirtualNetwork", "red", "t", {"subnetPools": ["a", "b"]}),
    )
    failing(
        ledger,
        ManifestError,
        r"subnetPool b is not the first of subnetPools \(a, c\)",
        obj("Tenant", "t"),
        *pools,
        obj("VirtualNetwork", "red", "t", {"subnetPool": "b", "subnetPools": ["a", "c"]}),
    )


POOLS = {"a": ("10.40.0.0/24", 28), "b": ("10.41.0.0/24", 28), "c": ("fd00:40::/56", 64)}


def test_a_routed_network_gives_each_node_blocks_of_its_own(ledger: Ledger) -> None:
    apply(
        ledger,
        obj("Tenant", "t"),
        *[obj("Node", f"n{i}", spec={"address": f"192.0.2.{i}"}) for i in (1, 2)],
        obj("SubnetPool", "pods", spec={"cidr": "10.32.0.0/26", "blockPrefixLength": 29}),
        obj("VirtualNetwork", "flat", "t", {"subnetPool": "pods", "mode": "routed"}),
    )
    made = apply(
        ledger,
        *[obj("Endpoint", f"e{i}", "t", {"network": "flat", "node": f"n{i % 2 + 1}"}) for i in range(14)],
    )
    subnets = objects.list_objects(ledger, lookup_kind("Subnet"), "t")[0]
    blocks = {str(s.spec.cidr): s.spec.node for s in subnets}  # type: ignore[attr-defined]
    assert sorted(blocks.values()) == ["n1", "n1", "n2", "n2"]  # 7 endpoints each, 6 to a /29 block
    for done in made:
        endpoint = done.object
        assert isinstance(endpoint, Endpoint)
        (block,) = [b for b in blocks if endpoint.spec.addresses[0] in ipaddress.ip_network(b)]
        assert blocks[block] == endpoint.spec.node
    failing(
        ledger,
        intent.Invalid,
        "Endpoint/t/lost: network flat is routed; its endpoints take addresses from their node's blocks",
        obj("Endpoint", "lost", "t", {"network": "flat"}),
    )
    other = next(b for b, node in blocks.items() if node == "n2")
    wanted = str(ipaddress.ip_network(other)[5])
    failing(
        ledger,
        intent.Invalid,
        f"Endpoint/t/x: {wanted} is in no block of node n1 in network t/flat",
        obj("Endpoint", "x", "t", {"network": "flat", "node": "n1", "addresses": [wanted]}),
    )
    failing(
        ledger,
        intent.Invalid,
        "Subnet/acme/red-v4: spec.node gives a node a block of a routed network or of one that grows from a "
        "subnet pool; network acme/red is overlay without a subnet pool",
        *tenant_net()[:2],
        {**tenant_net()[2], "spec": {**tenant_net()[2]["spec"], "node": "n1"}},
    )


def test_service_backends_and_node_ports_come_from_the_ledger(ledger: Ledger) -> None:
    apply(ledger, *tenant_net(), obj("Node", "n1", spec={"address": "192.0.2.1"}), endpoint("web", node="n1"))
    spec = {
        "network": "red",
        "type": "NodePort",
        "ports": [
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        ],
        "backends": [{"endpoint": "web"}],
    }
    vip = apply(ledger, obj("ServiceVIP", "web", "acme", spec))[0].object
    assert isinstance(vip, ServiceVIP)
    assert [(str(b.address), b.node) for b in vip.spec.backends] == [("10.1.0.2", "n1")]
    assert [p.node_port for p in vip.spec.ports] == [30000, 30053]
    failing(
        ledger,
        intent.Invalid,
        "node port 30053 in the node port range 30000-32767 is already held",
        obj("ServiceVIP", "other", "acme", {**spec, "backends": []}),
    )
    with pytest.raises(intent.InUse, match="Endpoint/acme/web is in use by ServiceVIP/acme/web"):
        intent.delete(ledger, [(lookup_kind("Endpoint"), "acme", "web")])
    clusterip = apply(ledger, obj("ServiceVIP", "web", "acme", {**spec, "type": "ClusterIP"}))[0].object
    assert isinstance(clusterip, ServiceVIP) and [p.node_port for p in clusterip.spec.ports] == [None, None]
