"""The compiler: a full compile equals the sum of the deltas, on random sequences of changes."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isthmus.compile import Compiler
from isthmus.compile.compiler import Unit
from isthmus.compile.state import SHARED, Entries
from isthmus.model import Object, parse_object

NAMESPACES = ("x", "y")
LABELS = st.dictionaries(
    st.sampled_from(["pod", "app", "uses", "security-group.isthmus.io/g"]),
    st.sampled_from(["a", "b", "s", ""]),
    max_size=2,
)


def _meta(name: str, namespace: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "labels": labels or {}} | ({"namespace": namespace} if namespace else {})


@st.composite
def objects(draw: st.DrawFn) -> Object:
    """One object of a small universe (so that changes collide): a node, a network (with egress, external
    or growing from a pool), a subnet, a subnet pool, an endpoint, a service, a floating IP, an egress IP,
    a NetworkPolicy, a namespace's labels or an Isthmus Policy."""
    ns = draw(st.sampled_from(NAMESPACES))
    kind = draw(
        st.sampled_from(
            [
                "Node",
                "VirtualNetwork",
                "Endpoint",
                "Endpoint",
                "ServiceVIP",
                "FloatingIP",
                "EgressIP",
                "SecurityGroup",
                "ImportedRoute",
                "NetworkPolicy",
                "Namespace",
                "Policy",
                "Subnet",
                "SubnetPool",
            ]
        )
    )
    if kind == "Node":
        i = draw(st.integers(1, 2))
        body = {"metadata": _meta(f"n{i}"), "spec": {"address": f"192.0.2.{draw(st.integers(1, 3))}"}}
    elif kind == "VirtualNetwork":
        outside = draw(
            st.sampled_from(
                [
                    {},
                    {"egress": True},
                    {"external": True},
                    {"subnetPool": "p"},
                    {"mode": "routed", "egress": True},
                ]
            )
        )
        body = {
            "metadata": _meta(draw(st.sampled_from("ab")), ns),
            "spec": {
                "vni": draw(st.integers(1, 3)),
                "importTargets": draw(st.sampled_from([[], ["64512:1"]])),
                **outside,
            },
        }
    elif kind == "Subnet":
        cidr = draw(st.sampled_from(["10.0.0.0/29", "10.0.0.8/29", "10.1.0.0/24", "203.0.113.0/24"]))
        body = {
            "metadata": _meta(draw(st.sampled_from(["s1", "s2"])), ns),
            "spec": {
                "network": draw(st.sampled_from("ab")),
                "cidr": cidr,
                "node": draw(st.sampled_from([None, "n1", "n2"])),  # a routed network's block
            },
        }
    elif kind == "SubnetPool":
        cidr = draw(st.sampled_from(["10.8.0.0/16", "10.0.0.0/16"]))
        body = {"metadata": _meta("p"), "spec": {"cidr": cidr, "blockPrefixLength": 24}}
    elif kind == "Endpoint":
        body = {
            "metadata": _meta(f"e{draw(st.integers(1, 4))}", ns, draw(LABELS)),
            "spec": {
                "network": draw(st.sampled_from(["a", "b"])),
                "node": draw(st.sampled_from([None, "n1", "n2"])),
                "addresses": [f"10.0.0.{draw(st.integers(1, 6))}"],
                "ports": [{"name": "http", "port": draw(st.sampled_from([80, 81]))}],
            },
        }
    elif kind == "ServiceVIP":
        backends = draw(st.lists(st.integers(1, 4), max_size=3, unique=True))
        body = {
            "metadata": _meta(draw(st.sampled_from(["s", "t"])), ns),
            "spec": {
                "network": "a",
                "vip": f"10.254.0.{draw(st.integers(1, 3))}",
                "ports": [{"port": 80, "targetPort": draw(st.sampled_from([80, "http"]))}],
                "backends": [
                    {
                        "endpoint": f"e{i}",
                        "address": f"10.0.0.{i}",
                        "node": "n1",
                        "ports": {"http": 81},
                        "ready": draw(st.booleans()),
                    }
                    for i in backends
                ],
                "externalIPs": draw(st.sampled_from([[], ["203.0.113.9"]])),
                "sessionAffinity": draw(st.sampled_from(["None", "ClientIP"])),
            },
        }
    elif kind == "FloatingIP":
        body = {
            "metadata": _meta("f", ns),
            "spec": {"pool": "public", "address": "203.0.113.5", "service": "s"},
        }
    elif kind == "EgressIP":
        body = {
            "metadata": _meta("g", ns),
            "spec": {
                "pool": "public",
                "address": f"203.0.113.{draw(st.integers(20, 21))}",
                "node": draw(st.sampled_from([None, "n1", "n2"])),
            },
        }
    elif kind == "ImportedRoute":
        body = {
            "metadata": _meta(f"r{draw(st.integers(1, 2))}"),
            "spec": {
                "prefix": f"10.9.0.{draw(st.integers(1, 3))}/32",
                "nextHop": "192.0.2.9",
                "vni": draw(st.integers(1, 4)),
                "routeTargets": [draw(st.sampled_from(["64512:1", "64512:2"]))],
            },
        }
    elif kind == "SecurityGroup":
        rule = {
            "direction": draw(st.sampled_from(["ingress", "egress"])),
            "protocol": draw(st.sampled_from([None, "TCP", "ICMP"])),
            "remoteGroup": draw(st.sampled_from([None, "g"])),
        }
        body = {"metadata": _meta("g", ns), "spec": {"rules": [rule]}}
    elif kind == "NetworkPolicy":
        body = {
            "apiVersion": "networking.k8s.io/v1",
            "metadata": _meta(draw(st.sampled_from(["p", "q"])), ns),
            "spec": {
                "podSelector": {"matchLabels": draw(LABELS)},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": draw(LABELS)}}],
                        "ports": [{"port": draw(st.sampled_from([80, "http"]))}],
                    }
                ],
                "policyTypes": draw(st.sampled_from([["Ingress"], ["Ingress", "Egress"]])),
            },
        }
    elif kind == "Namespace":
        body = {"apiVersion": "v1", "metadata": _meta(ns, None, draw(LABELS))}
    else:
        body = {
            "metadata": _meta(draw(st.sampled_from(["uses-s", "deny"])), ns),
            "spec": {
                "priority": draw(st.integers(1, 3)),
                "rules": [
                    {
                        "action": draw(st.sampled_from(["allow", "deny"])),
                        "source": {"selector": {"matchLabels": draw(LABELS)}},
                        "destination": {"service": "s"},
                    }
                ],
            },
        }
    body.setdefault("apiVersion", "isthmus.io/v1")
    return parse_object({**body, "kind": kind})


def _unit(obj: Object) -> Unit:
    return obj.kind, obj.metadata.namespace or "", obj.metadata.name


def _applied(
    state: dict[str, Entries], puts: dict[str, Entries], deletes: dict[str, set[Any]]
) -> dict[str, Entries]:
    after = copy.copy({scope: dict(entries) for scope, entries in state.items()})
    for scope, keys in deletes.items():
        for key in keys:
            del after[scope][key]
    for scope, entries in puts.items():
        after.setdefault(scope, {}).update(entries)
    return {scope: entries for scope, entries in after.items() if entries or scope == SHARED}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), objects()), min_size=1, max_size=25))
def test_a_full_compile_equals_the_sum_of_the_deltas(changes: list[tuple[bool, Object]]) -> None:
    compiler, held = Compiler(), {}
    for delete, obj in changes:
        before = {scope: dict(entries) for scope, entries in compiler.state.items()}
        if delete:
            held.pop(_unit(obj), None)
            delta = compiler.change(deletes=[_unit(obj)])
        else:
            held[_unit(obj)] = obj
            delta = compiler.change([obj])
        fresh = Compiler(held.values())
        current = {s: e for s, e in compiler.state.items() if e or s == SHARED}
        assert current == {s: e for s, e in fresh.state.items() if e or s == SHARED}
        assert _applied(before, delta.puts, delta.deletes) == current


def test_an_egress_table_routes_out_but_keeps_every_cluster_prefix_unreachable() -> None:
    docs = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1"}},
        {"kind": "VirtualNetwork", "metadata": _meta("pods", "x"), "spec": {"vni": 7, "egress": True}},
        {"kind": "VirtualNetwork", "metadata": _meta("vms", "y"), "spec": {"vni": 8}},
        {
            "kind": "Subnet",
            "metadata": _meta("pods", "x"),
            "spec": {"network": "pods", "cidr": "10.0.0.0/24"},
        },
        {"kind": "Subnet", "metadata": _meta("vms", "y"), "spec": {"network": "vms", "cidr": "10.0.1.0/24"}},
    ]
    compiler = Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs)
    routes = {k[2]: e.kind for k, e in compiler.state[SHARED].items() if k[:2] == ("route", "x/pods")}
    assert routes == {
        "0.0.0.0/0": "egress",
        "::/0": "egress",
        "10.0.0.0/23": "unreachable",  # both tenants' subnets, aggregated
    }  # the node's address is not among them: endpoints reach it (NetworkEntry.node_access)
    other = {k[2]: e.kind for k, e in compiler.state[SHARED].items() if k[:2] == ("route", "y/vms")}
    assert other == {"0.0.0.0/0": "unreachable", "::/0": "unreachable"}
    subnet = {
        "kind": "Subnet",
        "metadata": _meta("more", "y"),
        "spec": {"network": "vms", "cidr": "172.16.0.0/16"},
    }
    delta = compiler.change([parse_object({"apiVersion": "isthmus.io/v1", **subnet})])
    assert set(delta.puts[SHARED]) == {("route", "x/pods", "172.16.0.0/16")} and not delta.deletes


def test_a_network_compiled_after_its_block_and_endpoint_routes_the_endpoint_by_the_block() -> None:
    """The endpoint inside its node's block has its /32 only in that node's scope, whether its network
    came first or last (found by the property test above: the network's arrival left it shared)."""
    docs = [
        {"kind": "Node", "metadata": _meta("n2"), "spec": {"address": "192.0.2.2"}},
        {
            "kind": "Subnet",
            "metadata": _meta("s1", "x"),
            "spec": {"network": "b", "cidr": "10.0.0.0/29", "node": "n2"},
        },
        {
            "kind": "Endpoint",
            "metadata": _meta("e1", "x"),
            "spec": {"network": "b", "node": "n2", "addresses": ["10.0.0.1"]},
        },
        {"kind": "VirtualNetwork", "metadata": _meta("b", "x"), "spec": {"vni": 1}},
    ]
    objects = [parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs]
    incremental = Compiler()
    for obj in objects:
        incremental.change([obj])
    key = ("route", "x/b", "10.0.0.1/32")
    assert key in incremental.state["n2"] and key not in incremental.state[SHARED]
    assert incremental.state == Compiler(objects).state
