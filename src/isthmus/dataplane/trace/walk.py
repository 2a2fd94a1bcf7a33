"""The trace driver: a packet walked through the compiled state, hop by hop, each hop naming its rule.

Order, as the kernel dataplane applies it: on the source node, service DNAT (and backend choice), then
Isthmus Policy rules, then the source's egress NetworkPolicy (after DNAT, so against the backend), then
the route in the source network's table (local veth, VXLAN to the owning node, a leaked route, out of the
cluster through the node or the owner of the namespace's egress address, or the unreachable default); on
the destination node, the attachment and its ingress NetworkPolicy; UDP replies return through connection
tracking. A service with several backends is walked to each of them: the verdict is "allow" only when
every backend is reached.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from isthmus.compile.compiler import INTERNAL, Compiler
from isthmus.compile.netpol import allowing
from isthmus.compile.state import (
    GUARDED,
    Address,
    EgressEntry,
    Identity,
    Isolation,
    LocalEntry,
    NetworkEntry,
    NodeEntry,
    RouteEntry,
    RuleEntry,
    ServiceEntry,
    Target,
)
from isthmus.model import Endpoint

Verdict = Literal["allow", "deny"]


@dataclass(frozen=True)
class Hop:
    node: str
    step: str
    detail: str
    rule: str = ""


DECIDING = ("ingress policy", "egress policy", "policy")  # the steps where a policy allows a packet


@dataclass
class Trace:
    verdict: Verdict
    hops: list[Hop]
    backends: list[dict[str, Any]] = field(default_factory=list)

    def deciding(self) -> str:
        """The rule that decided, as a flow record names it: a denied packet's last hop's; an allowed
        one's last policy allowing it (ingress over egress over an Isthmus policy), "" when nothing
        isolates it."""
        if self.verdict == "deny":
            return self.hops[-1].rule if self.hops else ""
        return next((h.rule for h in reversed(self.hops) if h.step in DECIDING), "")

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.deciding(),
            "hops": [{"node": h.node, "step": h.step, "detail": h.detail, "rule": h.rule} for h in self.hops],
            "backends": self.backends,
        }


@dataclass(frozen=True)
class Source:
    """Where a packet starts: an endpoint (network, node, identity), or an address outside the cluster."""

    address: Address
    name: str
    network: str | None = None
    node: str | None = None
    identity: Identity | None = None
    addresses: tuple[Address, ...] = ()  # an endpoint's, of each family; `address` is one of them


class Tracer:
    """Indexes of one compiled state for walking packets; build it once for many traces."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        shared = compiler.state[""]
        # network -> prefix length (longest first) -> prefix (its address, tagged with its version) -> route
        self.routes: dict[str, dict[int, dict[int, RouteEntry]]] = defaultdict(dict)
        self.identities: dict[Address, tuple[str, Identity]] = {}
        for key, entry in shared.items():
            if isinstance(entry, RouteEntry):
                table = self.routes[entry.network].setdefault(entry.prefix.prefixlen, {})
                table[int(entry.prefix.network_address) | entry.prefix.version << 128] = entry
            elif isinstance(entry, Identity):
                self.identities[ipaddress.ip_address(str(key[2]))] = (str(key[1]), entry)
        for network, lengths in self.routes.items():
            self.routes[network] = dict(sorted(lengths.items(), reverse=True))
        self.rules: list[tuple[str, RuleEntry]] = [
            (name, entry)
            for _, name, entry in sorted(
                (k[1:4], f"{e.policy} rules[{k[3]}]", e)
                for k, e in shared.items()
                if isinstance(e, RuleEntry)
            )
        ]
        self.shared = shared
        self.hosts = {e.address: e.name for e in shared.values() if isinstance(e, NodeEntry)}
        self.cidr_sensitive = any(
            a.peer.cidrs
            for scope, entries in compiler.state.items()
            if scope
            for e in entries.values()
            if isinstance(e, Isolation)
            for a in e.allows
        ) or any(e.source.cidrs or e.destination.cidrs for _, e in self.rules)

    def endpoint(self, namespace: str | None, name: str, family: int | None = None) -> Source:
        """An endpoint as a source, from its first address or its address of `family`."""
        endpoint = self.compiler.objects["Endpoint"].get((namespace or "", name))
        addresses = endpoint.spec.addresses if isinstance(endpoint, Endpoint) else []
        chosen = [a for a in addresses if family in (None, a.version)]
        if not isinstance(endpoint, Endpoint) or not chosen:
            which = f"IPv{family} address" if family else "address"
            raise LookupError(f"endpoint {namespace}/{name} not found, or it has no {which} yet")
        return Source(
            chosen[0],
            f"{namespace}/{name}" if namespace else name,
            self.compiler.network_of(endpoint),
            endpoint.spec.node,
            self.compiler.identity(endpoint),
            tuple(addresses),
        )

    def signature(self, source: Source) -> tuple[Any, ...]:
        """Sources with one signature get the same verdicts (the matrix computes one row for them)."""
        egress = self._own(source.node, "egress", source.network, source.address) if source.node else None
        return (
            source.network,
            source.identity,
            egress,
            source.address if self.cidr_sensitive or source.identity is None else None,
        )

    def _own(self, node: str | None, kind: str, network: str | None, address: Address) -> Any:
        return self.compiler.state.get(node or "", {}).get((kind, network or "", str(address)))

    def trace(self, source: Source, destination: Address, protocol: str, port: int) -> Trace:
        """The packet's walk; an endpoint sends it from its address of the destination's family."""
        if source.address.version != destination.version:
            same = [a for a in source.addresses if a.version == destination.version]
            if not same:
                detail = f"{source.name} has no IPv{destination.version} address to reach {destination}"
                return Trace("deny", [Hop(source.node or "", "source", detail)])
            source = replace(source, address=same[0])
        service = (
            self.shared.get(("service", str(destination), protocol, port))
            or self.shared.get(("service", str(destination), "any", 0))
            or (self.shared.get(("nodeport", protocol, port)) if destination in self.hosts else None)
        )
        node = source.node or self._entry_node(service)
        hops = [
            Hop(
                node,
                "source",
                f"{source.name} {source.address}"
                + (f" in network {source.network}" if source.network else ""),
            )
        ]
        if not isinstance(service, ServiceEntry):
            verdict = self._walk(source, node, destination, port, protocol, None, hops)
            return Trace(verdict, hops)
        targets = tuple(t for t in service.targets if t.address.version == destination.version)
        if not targets:
            family = f" of IPv{destination.version}" if service.targets else ""
            detail = f"{destination}:{port}/{protocol}: rejected: no endpoints{family}"
            hops.append(Hop(node, "service", detail, f"ServiceVIP {service.service}"))
            return Trace("deny", hops)
        if source.node is None and destination != service.vip:  # a floating or external IP, from outside
            hosts = sorted({t.node for t in targets if t.node})
            how = f"{destination} is announced by {', '.join(hosts)}; the router spreads flows over them"
            hops.append(Hop(node, "enter", how, "BGP"))
            targets = tuple(t for t in targets if t.node == node) or targets
        results = []
        first_denied: list[Hop] | None = None
        chosen: list[Hop] | None = None
        for target in targets:
            walked = list(hops)
            walked.append(
                self._dnat(node, destination, port, protocol, service, target, source, len(targets))
            )
            verdict = self._walk(source, node, target.address, target.port or port, protocol, service, walked)
            results.append({"address": str(target.address), "port": target.port or port, "verdict": verdict})
            chosen = chosen or walked
            if verdict == "deny" and first_denied is None:
                first_denied = walked
        assert chosen is not None
        verdict = "deny" if first_denied else "allow"
        return Trace(verdict, first_denied or chosen, results)

    def _entry_node(self, service: object) -> str:
        """Where traffic from outside enters: a node hosting a target of the service (those announce
        its floating IP; the router spreads flows over them), else the first node."""
        nodes = self.compiler.nodes()
        if isinstance(service, ServiceEntry):
            nodes = sorted({t.node for t in service.targets if t.node}) or nodes
        return nodes[0] if nodes else ""

    @staticmethod
    def _dnat(
        node: str,
        destination: Address,
        port: int,
        protocol: str,
        service: ServiceEntry,
        target: Target,
        source: Source,
        count: int,
    ) -> Hop:
        local = " local" if count < len(service.targets) else ""
        how = f"ClientIP affinity {service.affinity} s" if service.affinity else "random"
        hairpin = ", hairpin to itself" if target.endpoint == source.name else ""
        return Hop(
            node,
            "service",
            f"{destination}:{port}/{protocol} DNAT to {target.address}:{target.port or port} "
            f"(1 of {count}{local} backends, {how}{hairpin})",
            f"ServiceVIP {service.service}",
        )

    def _walk(
        self,
        source: Source,
        node: str,
        destination: Address,
        port: int,
        protocol: str,
        service: ServiceEntry | None,
        hops: list[Hop],
    ) -> Verdict:
        found = self.identities.get(destination)
        target_identity = found[1] if found else None
        rule = self._rule(source, destination, target_identity, protocol, port, service)
        if rule is not None:
            name, entry = rule
            hops.append(Hop(node, "policy", f"Isthmus policy: {entry.action}", name))
            if entry.action == "deny":
                return "deny"
        egress = self._own(source.node, "egress", source.network, source.address)
        if isinstance(egress, Isolation):
            allow = allowing(egress, destination, target_identity, protocol, port, target_identity)
            if allow is None:
                hops.append(
                    Hop(
                        node,
                        "egress policy",
                        f"{source.name} is isolated for egress; nothing allows "
                        f"{destination}:{port}/{protocol}",
                        ", ".join(egress.policies),
                    )
                )
                return "deny"
            hops.append(Hop(node, "egress policy", f"allowed to {destination}:{port}/{protocol}", allow.rule))
        # from outside, only a service's DNAT leads in: the backend is routed in its own network's table
        network_name = source.network or (found[0] if service is not None and found else None)
        if network_name is None:
            hops.append(
                Hop(node, "route", f"{destination}: not routed into the cluster from outside", "no route")
            )
            return "deny"
        route = self.route(network_name, destination, node)
        network = self.shared.get(("network", network_name))
        table = (
            f"table {network.table} of network {network_name}"
            if isinstance(network, NetworkEntry)
            else (f"network {network_name}")
        )
        host = self.hosts.get(destination)
        if host is not None and source.network is not None:
            hops += self._to_node(node, host, destination, port, protocol, network, network_name)
            return "deny" if hops[-1].step == "node guard" else "allow"
        if route is not None and route.kind == "block" and route.node == node:
            where = f"{route.rule} in {table}: nothing of it attached here"
            hops.append(Hop(node, "route", f"{destination}: unreachable", where))
            return "deny"
        if route is None or route.kind == "unreachable":
            internal = route is not None and route.rule == INTERNAL
            prefix = f"{route.prefix} (cluster-internal)" if route is not None and internal else "default"
            hops.append(Hop(node, "route", f"{destination}: unreachable", f"unreachable {prefix} in {table}"))
            return "deny"
        if route.kind == "egress":
            hops += self._leave(node, source, destination, route, table)
            reply = f"{destination}:{port}" if protocol == "UDP" else ""
            hops += self._snat(source, reply, hops[-1].node, route.rule)
            return "allow"
        if route.kind == "imported":
            out = f"{destination}: VXLAN VNI {route.vni} to {route.via}, a node of another cluster"
            hops.append(Hop(node, "route", out, f"{route.prefix} in {table}; {route.rule}"))
            return "allow"  # what the other cluster's policy says is its own to trace
        if route.kind == "leak" and route.via is not None and (service is None or service.vip != route.via):
            hops.append(
                Hop(node, "route", f"{destination}: leaked only for traffic to {route.via}", route.rule)
            )
            return "deny"
        where = f"route {route.prefix} in {table}" + (
            f" (leaked by {route.rule})" if route.kind == "leak" else ""
        )
        arrive = route.node or node
        if arrive == node:
            hops.append(Hop(node, "route", f"{destination}: local, through the endpoint's veth", where))
        elif isinstance(network, NetworkEntry) and network.mode == "routed":
            hops.append(Hop(node, "route", f"{destination}: through the underlay to {arrive}", where))
            hops.append(Hop(arrive, "underlay", f"from the uplink into the table of network {network_name}"))
        else:
            vtep = self.shared.get(("node", arrive))
            hops.append(
                Hop(
                    node,
                    "route",
                    f"{destination}: VXLAN VNI {network.vni if isinstance(network, NetworkEntry) else '?'}"
                    f" to {arrive} ({vtep.address if isinstance(vtep, NodeEntry) else '?'})",
                    where,
                )
            )
            hops.append(Hop(arrive, "tunnel", f"decapsulated into the table of network {network_name}"))
        return self._arrive(source, arrive, destination, port, protocol, service, hops, found)

    @staticmethod
    def _to_node(
        node: str,
        host: str,
        destination: Address,
        port: int,
        protocol: str,
        network: object,
        network_name: str,
    ) -> list[Hop]:
        """To a node's address: refused to networks without node access and on the node's infrastructure
        ports; else delivered to the node's host stack, source NATed to the sending node's address (through
        its uplink when it is another node)."""
        if not isinstance(network, NetworkEntry) or not network.node_access:
            why = f"{destination} is node {host}'s address; network {network_name} does not reach the nodes"
            return [Hop(node, "node guard", why, f"VirtualNetwork {network_name} nodeAccess: false")]
        guarded = GUARDED.get((protocol, port))
        if guarded is not None:
            why = f"{destination}:{port}/{protocol} is node {host}'s {guarded}: no endpoint reaches it"
            return [Hop(node, "node guard", why, "node infrastructure")]
        if host == node:
            how = f"{destination}: node {node}'s own address, to its host stack, source NATed to it"
            return [Hop(node, "route", how, "node address")]
        return [
            Hop(
                node,
                "route",
                f"{destination}: node {host}'s address, through {node}'s uplink",
                "node address",
            ),
            Hop(node, "snat", f"source NAT to {node}'s address", "node address"),
            Hop(host, "host", f"to node {host}'s host stack", "node address"),
        ]

    def _egress(self, source: Source) -> EgressEntry | None:
        found = self.shared.get(("egressip", source.identity.namespace)) if source.identity else None
        return found if isinstance(found, EgressEntry) else None

    def _leave(
        self, node: str, source: Source, destination: Address, route: RouteEntry, table: str
    ) -> list[Hop]:
        """Out of the cluster: through the node's uplink, or over VXLAN to the owner of the source's
        egress address and through its uplink."""
        where = f"{route.prefix} egress in {table}"
        egress = self._egress(source)
        mine = egress.of(source.address.version) if egress is not None else None
        if egress is None or mine is None or egress.node == node:
            return [Hop(node, "route", f"{destination}: leaves the cluster through {node}'s uplink", where)]
        network = source.network or ""
        vni, vtep = self.shared.get(("network", network)), self.shared.get(("node", egress.node))
        how = "the underlay" if isinstance(vni, NetworkEntry) and vni.mode == "routed" else "VXLAN"
        steer = (
            f"{destination}: {how} to {egress.node} ({vtep.address if isinstance(vtep, NodeEntry) else '?'}),"
            f" owner of {mine}"
        )
        return [
            Hop(node, "route", steer, f"{where}; EgressIP {egress.egress}"),
            Hop(egress.node, "route", f"{destination}: leaves the cluster through its uplink", where),
        ]

    def _snat(self, source: Source, reply: str, node: str, rule: str) -> list[Hop]:
        """Source NAT to the egress address or the node's; the `reply` (UDP) returns through connection
        tracking."""
        egress = self._egress(source)
        version = source.address.version
        if egress is not None and (mine := egress.of(version)) is not None:
            owned = f"EgressIP {egress.egress}"
            hops = [Hop(node, "snat", f"source {source.address} -> {mine}", owned)]
            address: Address | str = mine
        else:
            uplink = self.shared.get(("node", node))
            of = (
                [a for a in uplink.addresses if a.version == version] if isinstance(uplink, NodeEntry) else []
            )
            address = of[0] if of else "?"
            hops = [Hop(node, "snat", f"source {source.address} -> {address} (masquerade)", rule)]
        if reply:
            back = f"destination rewritten back to {source.address}"
            hops.append(
                Hop(node, "reply", f"{reply} -> {address}: established in connection tracking, {back}")
            )
        return hops

    def route(self, network: str, destination: Address, node: str | None = None) -> RouteEntry | None:
        """The longest prefix of the network's table on `node` that holds the destination (an endpoint
        inside its node's block has its own route there alone)."""
        host = str(ipaddress.ip_network(destination))
        own = self.compiler.state.get(node or "", {}).get(("route", network, host))
        if node and isinstance(own, RouteEntry):
            return own
        bits, value = destination.max_prefixlen, int(destination)
        for length, table in self.routes.get(network, {}).items():
            if length > bits:
                continue
            found = table.get((value >> (bits - length) << (bits - length)) | destination.version << 128)
            if found is not None:
                return found
        return None

    def _arrive(
        self,
        source: Source,
        node: str,
        destination: Address,
        port: int,
        protocol: str,
        service: ServiceEntry | None,
        hops: list[Hop],
        found: tuple[str, Identity] | None,
    ) -> Verdict:
        network = found[0] if found else ""
        local = self._own(node, "local", network, destination)
        if not isinstance(local, LocalEntry):
            hops.append(
                Hop(node, "deliver", f"{destination}: no endpoint attached here", "no local endpoint")
            )
            return "deny"
        ingress = self._own(node, "ingress", network, destination)
        if isinstance(ingress, Isolation):
            allow = allowing(ingress, source.address, source.identity, protocol, port, None)
            if allow is None:
                hops.append(
                    Hop(
                        node,
                        "ingress policy",
                        f"{local.endpoint} is isolated for ingress; nothing "
                        f"allows {source.name} on {port}/{protocol}",
                        ", ".join(ingress.policies),
                    )
                )
                return "deny"
            hops.append(
                Hop(node, "ingress policy", f"allowed from {source.name} on {port}/{protocol}", allow.rule)
            )
        hops.append(Hop(node, "deliver", f"to {local.endpoint} {destination}:{port}/{protocol}"))
        if protocol == "UDP":
            back = f", source rewritten back to {service.vip}" if service else ""
            hops.append(
                Hop(
                    node,
                    "reply",
                    f"{destination}:{port} -> {source.address}: established in connection tracking{back}",
                )
            )
        return "allow"

    def _rule(
        self,
        source: Source,
        destination: Address,
        identity: Identity | None,
        protocol: str,
        port: int,
        service: ServiceEntry | None,
    ) -> tuple[str, RuleEntry] | None:
        for name, entry in self.rules:
            if entry.protocol not in ("any", protocol):
                continue
            if entry.ports and not any(low <= port <= high for low, high in entry.ports):
                continue
            if not entry.source.matches(source.address, source.identity):
                continue
            if entry.service is not None:
                if service is None or service.service != entry.service:
                    continue
            elif not entry.destination.matches(destination, identity):
                continue
            return name, entry
        return None
