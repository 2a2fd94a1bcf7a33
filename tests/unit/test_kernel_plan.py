"""The kernel plan: kept incrementally from the compiler's deltas, it always equals the plan made from
scratch of the node's state, on random sequences of ledger changes."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isthmus.compile import Compiler
from isthmus.compile.announce import announced
from isthmus.compile.compiler import Unit
from isthmus.dataplane.kernel.plan import Planner, Route, node_mac, plan, veth_name
from isthmus.model import Object, VirtualNetwork, parse_object
from tests.unit.test_compile import LABELS, NAMESPACES, _meta, objects

NODES = ("n1", "n2")
VNIS = {(ns, name): 10 + i for i, (ns, name) in enumerate((ns, n) for ns in NAMESPACES for n in "ab")}


def _unique_vni(obj: Object) -> Object:
    """Admission gives every network its own VNI; the compiler's strategy lets them collide."""
    if not isinstance(obj, VirtualNetwork):
        return obj
    vni = VNIS[(obj.metadata.namespace or "", obj.metadata.name)]
    return obj.model_copy(update={"spec": obj.spec.model_copy(update={"vni": vni})})


PEERS = st.sampled_from(
    [
        {"podSelector": {"matchLabels": {"app": "a"}}},
        {"namespaceSelector": {}},
        {"namespaceSelector": {"matchLabels": {"app": "s"}}, "podSelector": {}},
        {"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.4/30"]}},
        {"ipBlock": {"cidr": "fd00::/120", "except": ["fd00::4/126"]}},
    ]
)


@st.composite
def more(draw: st.DrawFn) -> Object:
    """What the compiler's strategy leaves out: egress NetworkPolicies (peers of pods, namespaces and
    CIDRs; named ports, so sets of address . port pairs) and Isthmus Policies leaking one network's
    endpoints into another (networks sharing a conntrack zone)."""
    ns = draw(st.sampled_from(NAMESPACES))
    if draw(st.booleans()):
        body: dict[str, Any] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(draw(st.sampled_from(["p", "r"])), ns),
            "spec": {
                "podSelector": {"matchLabels": draw(LABELS)},
                "egress": [{"to": [draw(PEERS)], "ports": [{"port": draw(st.sampled_from([80, "http"]))}]}],
                "policyTypes": ["Egress"],
            },
        }
    else:
        body = {
            "apiVersion": "isthmus.io/v1",
            "kind": "Policy",
            "metadata": _meta("leak", ns),
            "spec": {
                "rules": [
                    {
                        "action": "allow",
                        "source": {"network": draw(st.sampled_from("ab"))},
                        "destination": {"network": draw(st.sampled_from(["a", "b", "x/a", "y/b"]))},
                    },
                    {
                        "action": "deny",
                        "protocol": "TCP",
                        "ports": [{"port": 22}],
                        "source": {"cidr": "10.0.0.0/29"},
                    },
                ]
            },
        }
    return parse_object(body)


def _unit(obj: Object) -> Unit:
    return obj.kind, obj.metadata.namespace or "", obj.metadata.name


def _seed() -> list[Object]:
    """A small cluster for the changes to work on: both nodes, three networks (one with egress), pods of
    both namespaces on both nodes, a service over them and a NetworkPolicy isolating some."""
    docs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": _meta(n), "spec": {"address": f"192.0.2.{i + 1}"}}
        for i, n in enumerate(NODES)
    ]
    docs += [
        {"kind": "VirtualNetwork", "metadata": _meta(name, ns), "spec": {"vni": VNIS[(ns, name)], **extra}}
        for ns, name, extra in (("x", "a", {"egress": True}), ("x", "b", {}), ("y", "a", {}))
    ]
    docs += [
        {
            "kind": "Endpoint",
            "metadata": _meta(f"e{i}", ns, {"app": "a" if i % 2 else "b", "pod": "a"}),
            "spec": {
                "network": "a" if i < 3 else "b",
                "node": NODES[i % 2],
                "addresses": [f"10.0.0.{i}", *([f"fd00::{i}"] if i < 3 else [])],  # two dual stack
                "ports": [{"name": "http", "port": 80}],
            },
        }
        for ns in NAMESPACES
        for i in range(1, 5)
    ]
    docs.append(
        {
            "kind": "ServiceVIP",
            "metadata": _meta("s", "x"),
            "spec": {
                "network": "a",
                "vips": ["10.254.0.1", "fd00:254::1"],
                "ports": [{"port": 80, "targetPort": "http"}],
                "backends": [
                    {
                        "endpoint": f"e{i}",
                        "addresses": [f"10.0.0.{i}", f"fd00::{i}"],
                        "node": NODES[i % 2],
                        "ports": {"http": 80},
                    }
                    for i in (1, 2)
                ],
            },
        }
    )
    objects = [parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs]
    return objects + [
        parse_object(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta("p", ns),
                "spec": {
                    "podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}],
                    "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}],
                    "policyTypes": ["Ingress", "Egress"],
                },
            }
        )
        for ns in NAMESPACES
    ]


CHANGES = st.lists(
    st.tuples(st.booleans(), st.one_of(objects().map(_unique_vni), objects().map(_unique_vni), more())),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), CHANGES)
def test_the_incremental_plan_equals_the_plan_from_scratch(
    seeded: bool, changes: list[tuple[bool, Object]]
) -> None:
    compiler = Compiler(_seed() if seeded else ())
    planners = {node: Planner(compiler.node_state(node)) for node in NODES}
    for delete, obj in changes:
        delta = compiler.change(deletes=[_unit(obj)]) if delete else compiler.change([obj])
        for node, planner in planners.items():
            state = compiler.node_state(node)
            before = dict(planner.plan)
            changed = planner.update(state, delta)
            assert planner.plan == plan(state)
            # the driver applies only the keys said to have changed
            assert {
                k for k in before.keys() | planner.plan.keys() if before.get(k) != planner.plan.get(k)
            } <= changed


def test_a_refused_vip_is_routed_in_every_table_while_it_has_no_target() -> None:
    docs = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1"}},
        {"kind": "VirtualNetwork", "metadata": _meta("a", "x"), "spec": {"vni": 7}},
        {"kind": "VirtualNetwork", "metadata": _meta("b", "x"), "spec": {"vni": 8}},
        {
            "kind": "Endpoint",
            "metadata": _meta("e1", "x"),
            "spec": {"network": "a", "node": "n1", "addresses": ["10.0.0.1"]},
        },
    ]
    compiler = Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)
    planner = Planner(compiler.node_state("n1"))
    vip = {
        "apiVersion": "isthmus.io/v1",
        "kind": "ServiceVIP",
        "metadata": _meta("s", "x"),
        "spec": {"network": "a", "vip": "10.254.0.1", "ports": [{"port": 80}], "backends": []},
    }
    changed = planner.update(compiler.node_state("n1"), compiler.change([parse_object(vip)]))
    routes = {k: planner.plan[k] for k in changed if k[0] == "route"}
    assert routes == {
        ("route", 1007, "10.254.0.1/32"): Route("dev", "isx7"),
        ("route", 1008, "10.254.0.1/32"): Route("dev", "isx8"),
    }
    vip["spec"]["backends"] = [{"endpoint": "e1", "address": "10.0.0.1", "node": "n1"}]
    changed = planner.update(compiler.node_state("n1"), compiler.change([parse_object(vip)]))
    assert set(routes) <= changed and not set(routes) & planner.plan.keys()
    assert ("element", "refused", "10.254.0.1") in changed
    assert planner.plan == plan(compiler.node_state("n1"))


def test_a_routed_network_has_no_vxlan_and_throws_other_nodes_blocks_to_the_underlay() -> None:
    bgp = {"asn": 64512, "peers": [{"address": "192.0.2.254", "asn": 64500}]}
    docs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1", "bgp": bgp}},
        {"kind": "Node", "metadata": _meta("n2"), "spec": {"address": "192.0.2.2"}},
        {"kind": "VirtualNetwork", "metadata": _meta("flat", "x"), "spec": {"vni": 9, "mode": "routed"}},
        *[
            {
                "kind": "Subnet",
                "metadata": _meta(f"b{i}", "x"),
                "spec": {"network": "flat", "cidr": f"10.32.0.{8 * (i - 1)}/29", "node": f"n{i}"},
            }
            for i in (1, 2)
        ],
        *[
            {
                "kind": "Endpoint",
                "metadata": _meta(f"e{i}", "x"),
                "spec": {"network": "flat", "node": f"n{i}", "addresses": [f"10.32.0.{8 * (i - 1) + 2}"]},
            }
            for i in (1, 2)
        ],
    ]
    compiler = Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)
    made = plan(compiler.node_state("n1"))
    assert not any(k[0] in ("vxlan", "peer") for k in made)
    assert made[("route", 1009, "10.32.0.0/29")] == Route("unreachable")  # its own block ends here
    assert made[("route", 1009, "10.32.0.8/29")] == Route("throw")  # n2's: to the node's tables
    assert made[("route", 1009, "10.32.0.2/32")] == Route("dev", veth_name("x/e1"))
    assert ("route", 1009, "10.32.0.10/32") not in made  # n2's endpoint: through its block
    assert made[("element", "routed_marks", "10.32.0.8/29")] == "1009"  # from the uplink, both blocks
    assert made[("element", "routed_marks", "10.32.0.0/29")] == "1009"
    assert announced(compiler.node_state("n1")) == {"10.32.0.0/29"}


def test_an_imported_route_goes_over_vxlan_in_the_remote_vni_to_the_remote_node() -> None:
    docs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1"}},
        {
            "kind": "VirtualNetwork",
            "metadata": _meta("db", "x"),
            "spec": {"vni": 9, "importTargets": ["64512:7"]},
        },
        {"kind": "VirtualNetwork", "metadata": _meta("other", "x"), "spec": {"vni": 10}},
        {
            "kind": "ImportedRoute",
            "metadata": _meta("r1"),
            "spec": {
                "prefix": "10.77.0.5/32",
                "nextHop": "192.0.2.50",
                "vni": 4096,
                "routeTargets": ["64512:7"],
            },
        },
    ]
    compiler = Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)
    made = plan(compiler.node_state("n1"))
    assert made[("route", 1009, "10.77.0.5/32")] == Route("via", "isx4096", "192.0.2.50")
    assert ("route", 1010, "10.77.0.5/32") not in made  # imports no such target
    assert made[("peer", "isx4096", "192.0.2.50")] == "02:49:c0:00:02:32"
    assert ("vxlan", "isx4096") in made
    network = parse_object(
        {
            "apiVersion": "isthmus.io/v1",
            "kind": "VirtualNetwork",
            "metadata": _meta("db", "x"),
            "spec": {"vni": 9},
        }
    )
    compiler.change([network])  # the route target goes: so does the route
    assert ("route", 1009, "10.77.0.5/32") not in plan(compiler.node_state("n1"))


def test_an_ipv6_block_of_another_node_goes_via_the_link_local_of_its_vxlan_mac() -> None:
    """The kernel refuses an IPv4 gateway for an IPv6 route: a dual-stack overlay network's blocks on n2
    go via n2's address (IPv4) and the EUI-64 link-local of n2's VXLAN MAC (IPv6), on the same device."""
    docs: list[dict[str, Any]] = [
        *[{"kind": "Node", "metadata": _meta(f"n{i}"), "spec": {"address": f"192.0.2.{i}"}} for i in (1, 2)],
        {"kind": "VirtualNetwork", "metadata": _meta("pods", "x"), "spec": {"vni": 9}},
        *[
            {
                "kind": "Subnet",
                "metadata": _meta(f"b{n}", "x"),
                "spec": {"network": "pods", "cidr": c, "node": "n2"},
            }
            for n, c in ((4, "10.32.0.8/29"), (6, "fd00:10:2::/64"))
        ],
    ]
    compiler = Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)
    made = plan(compiler.node_state("n1"))
    assert made[("route", 1009, "10.32.0.8/29")] == Route("via", "isx9", "192.0.2.2")
    assert made[("route", 1009, "fd00:10:2::/64")] == Route("via", "isx9", "fe80::49:c0ff:fe00:202")
    assert (
        made[("peer", "isx9", "192.0.2.2")]
        == node_mac(ipaddress.ip_address("192.0.2.2"))
        == "02:49:c0:00:02:02"
    )


def test_ipv6_gets_the_twin_of_every_ipv4_rule_service_and_set() -> None:
    """A dual-stack endpoint and service: its VIP of each family DNATs to the backends of that family,
    hairpin of each family, NetworkPolicy peers as sets of each family, refusals in ICMPv6, and pods'
    neighbour discovery reaching the node."""
    made = plan(Compiler(_seed()).node_state(NODES[1]))
    assert ("element", "services", "10.254.0.1 . tcp . 80") in made
    chain = str(made[("element", "services6", "fd00:254::1 . tcp . 80")]).removeprefix("goto ")
    assert "dnat ip6 to numgen random mod 2 map { 0 : fd00::1 . 80, 1 : fd00::2 . 80 }" in str(
        made[("chain", chain)]
    )
    assert ("element", "hairpin6", "fd00::1 . fd00::1") in made
    assert ("element", "internal6", "fe80::1") in made
    ingress = str(made[("element", "ingress", f'"{veth_name("x/e1")}"')]).removeprefix("jump ")
    rules = str(made[("chain", ingress)])
    assert "ip saddr @peer_" in rules and "ip6 saddr @peer_" in rules
    six = [k for k, v in made.items() if k[0] == "set" and v == "ipv6_addr"]
    assert any(("element", k[1], "fd00::1") in made for k in six)
    chains = {str(k[1]).rpartition("_")[0]: str(v) for k, v in made.items() if k[0] == "chain"}
    assert "ip6 daddr @refused6 counter reject with icmpv6 addr-unreachable" in chains["forward"]
    assert "icmpv6 type { packet-too-big, nd-router-solicit" in chains["input"]
