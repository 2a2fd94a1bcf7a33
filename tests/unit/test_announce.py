"""Floating IPs and egress addresses on the node side: a node announces a service's floating IP only
while it hosts a ready backend of it, and flows from its uplink to that address go to the local backend,
marked with the backend network's table and conntrack zone so that replies find them. The owner of an
egress address announces it and source NATs its namespace's flows to it; other nodes steer them there."""

from __future__ import annotations

from typing import Any

from isthmus.compile import Compiler
from isthmus.compile.announce import announced
from isthmus.compile.state import EgressEntry
from isthmus.dataplane.kernel.plan import RULE_PRIORITY, SLOT_SHIFT, Route, plan
from isthmus.model import parse_object
from tests.unit.test_compile import _meta

BGP = {"asn": 64512, "peers": [{"address": "192.0.2.254", "asn": 64500}]}


def _cluster(
    backends: list[tuple[str, str]], announce: list[str] | None = None, policy: str = "Cluster"
) -> Compiler:
    """Nodes n1 (speaking BGP) and n2, network x/a (VNI 7), endpoints e1 on n1 and e2 on n2, service s
    with the given (endpoint, node) backends and floating IP 203.0.113.5."""
    bgp = BGP | ({"announce": announce} if announce is not None else {})
    docs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1", "bgp": bgp}},
        {"kind": "Node", "metadata": _meta("n2"), "spec": {"address": "192.0.2.2"}},
        {"kind": "VirtualNetwork", "metadata": _meta("a", "x"), "spec": {"vni": 7}},
        {
            "kind": "Endpoint",
            "metadata": _meta("e1", "x"),
            "spec": {"network": "a", "node": "n1", "addresses": ["10.0.0.1"]},
        },
        {
            "kind": "Endpoint",
            "metadata": _meta("e2", "x"),
            "spec": {"network": "a", "node": "n2", "addresses": ["10.0.0.2"]},
        },
        {
            "kind": "ServiceVIP",
            "metadata": _meta("s", "x"),
            "spec": {
                "network": "a",
                "vip": "10.254.0.1",
                "type": "LoadBalancer",
                "externalTrafficPolicy": policy,
                "ports": [{"port": 80}],
                "backends": [
                    {"endpoint": e, "address": f"10.0.0.{e[1]}", "node": node, "network": "x/a"}
                    for e, node in backends
                ],
            },
        },
        {
            "kind": "FloatingIP",
            "metadata": _meta("s", "x"),
            "spec": {"pool": "public", "address": "203.0.113.5", "service": "s"},
        },
    ]
    return Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)


def test_a_node_announces_a_floating_ip_only_while_it_hosts_a_backend() -> None:
    both = _cluster([("e1", "n1"), ("e2", "n2")])
    assert announced(both.node_state("n1")) == {"203.0.113.5/32"}
    assert announced(both.node_state("n2")) == set()  # no BGP configured there
    assert announced(_cluster([("e2", "n2")]).node_state("n1")) == set()
    vips = _cluster([("e1", "n1")], ["floatingIPs", "serviceVIPs"])
    assert announced(vips.node_state("n1")) == {"203.0.113.5/32", "10.254.0.1/32"}


def test_uplink_flows_to_a_floating_ip_go_to_the_local_backend_in_its_table() -> None:
    made = plan(_cluster([("e1", "n1"), ("e2", "n2")]).node_state("n1"))
    assert made[("element", "outside_marks", "203.0.113.5")] == "1007"
    chain = str(made[("element", "services", "203.0.113.5 . tcp . 80")]).removeprefix("goto ")
    assert str(made[("chain", chain)]).endswith("\nmeta l4proto tcp dnat ip to 10.0.0.1:80")  # local only
    vip_chain = str(made[("element", "services", "10.254.0.1 . tcp . 80")]).removeprefix("goto ")
    assert "10.0.0.2" in str(made[("chain", vip_chain)])  # the ClusterIP keeps every backend


def _fip_chain(made: dict[Any, Any]) -> str:
    """The floating IP's DNAT (after the rule recording it)."""
    chain = str(made[("element", "services", "203.0.113.5 . tcp . 80")]).removeprefix("goto ")
    return str(made[("chain", chain)]).splitlines()[-1]


def test_a_node_with_no_local_backend_sends_floating_ip_flows_to_others_unless_policy_is_local() -> None:
    remote = plan(_cluster([("e2", "n2")]).node_state("n1"))
    assert remote[("element", "outside_marks", "203.0.113.5")] == "1007"  # routed by the backend's table
    assert _fip_chain(remote) == "meta l4proto tcp dnat ip to 10.0.0.2:80"
    post_nat = next(str(v) for k, v in remote.items() if k[0] == "chain" and str(k[1]).startswith("post_nat"))
    assert "ct status dnat snat ip to 192.0.2.1" in post_nat  # replies come back through this node
    assert ("route", 1007, "192.0.2.1/32") not in remote  # its own address: the table's end
    on_n2 = plan(_cluster([("e2", "n2")]).node_state("n2"))
    assert on_n2[("route", 1007, "192.0.2.1/32")] == Route("via", "isx7", "192.0.2.1")  # the way back
    local = plan(_cluster([("e2", "n2")], policy="Local").node_state("n1"))
    assert ("element", "rejected", "203.0.113.5 . tcp . 80") in local  # Local: none here, refused
    assert _fip_chain(plan(_cluster([("e1", "n1")], policy="Local").node_state("n1"))).endswith("10.0.0.1:80")


def _egress(node: str | None = None) -> Compiler:
    """The cluster above with egress from network x/a and x's egress address 203.0.113.20."""
    compiler = _cluster([("e1", "n1")])
    network = {"kind": "VirtualNetwork", "metadata": _meta("a", "x"), "spec": {"vni": 7, "egress": True}}
    egress = {
        "kind": "EgressIP",
        "metadata": _meta("out", "x"),
        "spec": {"pool": "public", "address": "203.0.113.20", "node": node},
    }
    compiler.change([parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in (network, egress)])
    return compiler


def _owner(compiler: Compiler) -> str:
    entry = compiler.state[""][("egressip", "x")]
    assert isinstance(entry, EgressEntry)
    return entry.node


def test_an_egress_address_is_owned_by_a_node_announcing_egress_ips_unless_one_is_named() -> None:
    assert _owner(_egress()) == "n1"  # the only node speaking BGP
    assert announced(_egress().node_state("n1")) == {"203.0.113.5/32", "203.0.113.20/32"}
    named = _egress("n2")
    assert _owner(named) == "n2"
    assert announced(named.node_state("n1")) == {"203.0.113.5/32"}
    named.change(deletes=[("Node", "", "n2")])
    assert _owner(named) == "n1"  # its node gone, it moves


def test_the_owner_source_nats_the_namespace_and_other_nodes_steer_to_it() -> None:
    owner = plan(_egress("n1").node_state("n1"))
    assert owner[("element", "egress_snat", "1007 . 10.0.0.2")] == "203.0.113.20"  # e2, on n2
    assert owner[("element", "egress_snat", "1007 . 10.0.0.1")] == "203.0.113.20"
    assert ("element", "egress_addresses", "203.0.113.20") in owner
    assert not any(k[:2] == ("element", "egress_marks") for k in owner)
    other = plan(_egress("n1").node_state("n2"))
    table = 1007 | 1 << SLOT_SHIFT
    assert other[("element", "egress_marks", "1007 . 10.0.0.2")] == str(table)  # only its own endpoint
    assert ("element", "egress_marks", "1007 . 10.0.0.1") not in other
    assert other[("route", table, "0.0.0.0/0")] == Route("via", "isx7", "192.0.2.1")  # VXLAN to n1
    assert other[("rule", table)] == RULE_PRIORITY + 1
    assert not any(k[:2] == ("element", "egress_snat") for k in other)
