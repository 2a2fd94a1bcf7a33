"""Security groups as NetworkPolicies: a group isolates its members both ways, and each rule is an
allowance, so the compiler enforces both with one mechanism. A pure function.

A rule with no remote allows every address of its ethertype; a remote group, that group's members' addresses
of its ethertype (in the group's tenant); no protocol, every protocol (ICMP included); ICMP, all of ICMP
(types and codes are not told apart).
"""

from __future__ import annotations

from typing import Any

from isthmus.model.netpol import NetworkPolicySpec
from isthmus.model.security import SecurityGroup, SecurityGroupRule, member_label
from isthmus.model.service import FAMILY

ANY = {"IPv4": "0.0.0.0/0", "IPv6": "::/0"}


def _peer(rule: SecurityGroupRule) -> dict[str, Any]:
    if rule.remote_group is not None:
        return {"podSelector": {"matchLabels": {member_label(rule.remote_group): ""}}}
    cidr = str(rule.remote_ip_prefix) if rule.remote_ip_prefix is not None else ANY[rule.ethertype]
    return {"ipBlock": {"cidr": cidr}}


def _ports(rule: SecurityGroupRule) -> list[dict[str, Any]]:
    if rule.protocol is None:
        return []
    if rule.protocol == "ICMP":
        return [{"protocol": "ICMP"}]
    if rule.port_range_min is None and rule.port_range_max is None:
        return [{"protocol": rule.protocol}]
    low = rule.port_range_min or 1
    high = rule.port_range_max or 65535
    return [{"protocol": rule.protocol, "port": low} | ({"endPort": high} if high != low else {})]


def network_policy(group: SecurityGroup) -> NetworkPolicySpec:
    """The NetworkPolicy that does what the group does, each peer kept to its rule's ethertype."""
    rules: dict[str, list[dict[str, Any]]] = {"ingress": [], "egress": []}
    for rule in group.spec.rules:
        peers = "from" if rule.direction == "ingress" else "to"
        rules[rule.direction].append({peers: [_peer(rule)], "ports": _ports(rule)})
    spec = NetworkPolicySpec.model_validate(
        {
            "podSelector": {"matchLabels": {member_label(group.metadata.name): ""}},
            "policyTypes": ["Ingress", "Egress"],
            **rules,
        }
    )
    kept = {d: [FAMILY[r.ethertype] for r in group.spec.rules if r.direction == d] for d in rules}
    ingress = [
        r.model_copy(update={"from_": [p.only(f) for p in r.from_]})
        for r, f in zip(spec.ingress, kept["ingress"], strict=True)
    ]
    egress = [
        r.model_copy(update={"to": [p.only(f) for p in r.to]})
        for r, f in zip(spec.egress, kept["egress"], strict=True)
    ]
    return spec.model_copy(update={"ingress": ingress, "egress": egress})
