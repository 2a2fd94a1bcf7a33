"""Security groups are enforced as the NetworkPolicies they amount to: a member is isolated both ways,
a rule allows its protocol, ports and peers (a prefix or another group's members), replies pass."""

from __future__ import annotations

from typing import Any

from isthmus.compile import Compiler
from isthmus.dataplane.kernel.plan import plan
from isthmus.dataplane.trace import Tracer
from isthmus.model import parse_object
from tests.unit.test_compile import _meta


def _cloud(rules: list[dict[str, Any]]) -> Tracer:
    """Tenant t: network net on node n1, VMs db (in group pg), app (in group web) and other (no group)."""
    groups = {
        "db": {"security-group.isthmus.io/pg": ""},
        "app": {"security-group.isthmus.io/web": ""},
        "other": {},
    }
    docs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": _meta("n1"), "spec": {"address": "192.0.2.1"}},
        {"kind": "VirtualNetwork", "metadata": _meta("net", "t"), "spec": {"vni": 5}},
        {"kind": "SecurityGroup", "metadata": _meta("pg", "t"), "spec": {"rules": rules}},
        {
            "kind": "SecurityGroup",
            "metadata": _meta("web", "t"),
            "spec": {"rules": [{"direction": "egress"}, {"direction": "egress", "ethertype": "IPv6"}]},
        },
        *[
            {
                "kind": "Endpoint",
                "metadata": _meta(name, "t", labels),
                "spec": {
                    "kind": "vm",
                    "network": "net",
                    "node": "n1",
                    "addresses": [f"10.0.0.{i + 2}", f"fd00::{i + 2}"],
                },
            }
            for i, (name, labels) in enumerate(groups.items())
        ],
    ]
    return Tracer(Compiler(parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs))


def _verdict(
    tracer: Tracer, source: str, destination: str, port: int, protocol: str = "TCP", family: int = 4
) -> str:
    target = tracer.endpoint("t", destination, family).address
    return tracer.trace(tracer.endpoint("t", source), target, protocol, port).verdict


def test_a_group_admits_only_what_its_rules_allow() -> None:
    tracer = _cloud(
        [
            {
                "direction": "ingress",
                "protocol": "TCP",
                "portRangeMin": 5432,
                "portRangeMax": 5432,
                "remoteGroup": "web",
            },
            {"direction": "ingress", "protocol": "UDP", "remoteIpPrefix": "10.0.0.4/32"},
        ]
    )
    assert _verdict(tracer, "app", "db", 5432) == "allow"  # from the web group's member
    assert _verdict(tracer, "other", "db", 5432) == "deny"  # not a member of web
    assert _verdict(tracer, "app", "db", 22) == "deny"  # not the rule's port
    assert _verdict(tracer, "other", "db", 53, "UDP") == "allow"  # 10.0.0.4 is other's address
    assert _verdict(tracer, "db", "other", 80) == "deny"  # pg allows nothing out
    assert _verdict(tracer, "app", "other", 80) == "allow"  # web sends anywhere; other is in no group


def test_icmp_rules_and_rules_of_any_protocol_let_icmp_through() -> None:
    tracer = _cloud([{"direction": "ingress", "protocol": "ICMP", "remoteGroup": "web"}])
    made = plan(tracer.compiler.node_state("n1"))
    chains = [str(v) for k, v in made.items() if k[0] == "chain" and str(k[1]).startswith("in_")]
    assert any("meta l4proto icmp counter accept" in c for c in chains), chains
    assert _verdict(tracer, "app", "db", 80) == "deny"  # ICMP only
    anything = _cloud([{"direction": "ingress", "remoteGroup": "web"}])
    chains = [
        str(v)
        for k, v in plan(anything.compiler.node_state("n1")).items()
        if k[0] == "chain" and str(k[1]).startswith("in_")
    ]
    assert any(line.endswith("accept") and "l4proto" not in line for c in chains for line in c.splitlines())


def test_a_rule_keeps_to_its_ethertype_with_a_remote_group_too() -> None:
    """Dual-stack VMs: an IPv6 rule naming a group lets its members in over IPv6 only; an IPv6 rule with
    no remote, any IPv6 address; the kernel's sets follow (IPv6 members only)."""
    ethertype = {"ethertype": "IPv6", "protocol": "TCP", "portRangeMin": 5432, "portRangeMax": 5432}
    tracer = _cloud(
        [
            {"direction": "ingress", "remoteGroup": "web", **ethertype},
            {
                "direction": "ingress",
                "protocol": "TCP",
                "portRangeMin": 22,
                "portRangeMax": 22,
                "ethertype": "IPv6",
            },
        ]
    )
    assert _verdict(tracer, "app", "db", 5432, family=6) == "allow"
    assert _verdict(tracer, "app", "db", 5432, family=4) == "deny"
    assert _verdict(tracer, "other", "db", 5432, family=6) == "deny"
    assert _verdict(tracer, "other", "db", 22, family=6) == "allow"
    assert _verdict(tracer, "other", "db", 22, family=4) == "deny"
    made = plan(tracer.compiler.node_state("n1"))
    members = {str(k[2]) for k in made if k[0] == "element" and str(k[1]).startswith("peer_")}
    assert "fd00::3" in members and "10.0.0.3" not in members  # app's addresses: only the IPv6 one
