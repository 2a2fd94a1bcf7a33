"""Kubernetes NetworkPolicy semantics, compiled for one endpoint: is it isolated, and what may pass.

Invariants (networking.k8s.io/v1): an endpoint is isolated for a direction when a policy of its namespace
selects it and lists that direction in its (defaulted) policyTypes; then only the union of those policies'
rules pass. A rule with no peers matches every peer, with no ports every port. A peer with only a
podSelector means pods of the policy's namespace; with a namespaceSelector, pods of the matching
namespaces; ipBlock, addresses (checked after DNAT, so against the backend). A rule with no ports allows
every protocol (ICMP too). Ingress named ports resolve on the endpoint itself; egress named ports on the
destination, when the packet is traced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from isthmus.compile.state import Allow, Identity, Isolation, Peer, Selector
from isthmus.model.netpol import NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec
from isthmus.model.selector import LabelSelector

Named = tuple[str, NetworkPolicySpec]  # "NAMESPACE/NAME" and the parsed spec


def selector(given: LabelSelector) -> Selector:
    return Selector(
        tuple(sorted(given.match_labels.items())),
        tuple((r.key, r.operator, tuple(r.values)) for r in given.match_expressions),
    )


def peer(given: NetworkPolicyPeer, namespace: str) -> Peer:
    if given.ip_block is not None:
        return Peer(cidrs=(given.ip_block.cidr,), excepts=tuple(given.ip_block.except_))
    pods = selector(given.pod_selector) if given.pod_selector is not None else None
    if given.namespace_selector is not None:
        return Peer(namespaces=selector(given.namespace_selector), pods=pods, family=given.family)
    return Peer(namespace=namespace, pods=pods or Selector(), family=given.family)


def _allows(
    peers: Sequence[Peer], ports: Sequence[NetworkPolicyPort], local: Identity, ingress: bool, rule: str
) -> list[Allow]:
    made: list[Allow] = []
    for one in peers or [Peer()]:
        if not ports:
            made.append(Allow(one, "any", rule=rule))
        for port in ports:
            if port.port is None:
                made.append(Allow(one, port.protocol, rule=rule))
            elif isinstance(port.port, int):
                made.append(Allow(one, port.protocol, port.port, port.end_port or port.port, rule=rule))
            elif not ingress:
                made.append(Allow(one, port.protocol, 0, 0, port_name=port.port, rule=rule))
            elif (number := local.named_port(port.port, port.protocol)) is not None:
                made.append(Allow(one, port.protocol, number, number, rule=rule))
    return made


def isolation(local: Identity, policies: Sequence[Named]) -> tuple[Isolation | None, Isolation | None]:
    """The endpoint's ingress and egress isolation under its namespace's policies (None: not isolated)."""
    found: dict[str, tuple[list[str], list[Allow]]] = {"Ingress": ([], []), "Egress": ([], [])}
    labels = local.labels
    for name, spec in policies:
        if not selector(spec.pod_selector).matches(labels):
            continue
        types = spec.effective_types()
        if "Ingress" in types:
            found["Ingress"][0].append(name)
            for i, rule in enumerate(spec.ingress):
                peers = [peer(p, local.namespace) for p in rule.from_]
                found["Ingress"][1].extend(_allows(peers, rule.ports, local, True, f"{name} ingress[{i}]"))
        if "Egress" in types:
            found["Egress"][0].append(name)
            for i, out in enumerate(spec.egress):
                peers = [peer(p, local.namespace) for p in out.to]
                found["Egress"][1].extend(_allows(peers, out.ports, local, False, f"{name} egress[{i}]"))
    return tuple(  # type: ignore[return-value]
        Isolation(tuple(names), tuple(allows)) if names else None
        for names, allows in (found["Ingress"], found["Egress"])
    )


def allowing(
    isolated: Isolation,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    identity: Identity | None,
    protocol: str,
    port: int,
    destination: Identity | None,
) -> Allow | None:
    """The first allowance that lets this peer (`address`, `identity`) through on `protocol`/`port`;
    `destination` resolves named ports (egress)."""
    for allow in isolated.allows:
        if allow.protocol not in (protocol, "any") or not allow.peer.matches(address, identity):
            continue
        if allow.port_name:
            if destination is not None and destination.named_port(allow.port_name, protocol) == port:
                return allow
        elif allow.low <= port <= allow.high:
            return allow
    return None
