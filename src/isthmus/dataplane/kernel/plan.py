"""A node's compiled state as kernel objects, keyed so that two plans diff object by object. Pure: the
driver reads what the kernel holds in the same keys and applies the difference.

Keys:
  ("vxlan", device)               Vxlan: one device per virtual network, on the node's underlay address
  ("peer", device, address)       str: a remote node's VTEP on the device: its MAC (static neighbour + fdb)
  ("route", table, prefix)        Route: an entry of a network's table (or of an egress owner's, below)
  ("rule", table)                 int: the `ip rule` priority that sends packets marked `table` to it
  ("rule", "underlay")            int: the priority, just before, of the rule that routes the outer VXLAN
                                  packets (they carry the inner packet's mark) in the node's main table
  ("veth", device)                Veth: a local endpoint's host-side interface (made on CNI ADD)
  ("chain", name)                 str: an nftables chain's rules; `name` ends in a hash of them
  ("set", name)                   str: an nftables set made for a peer of a policy: its type
  ("element", set, element)       str: an element of an nftables set or map and its value ("" in a set)

Forwarding: a pod's veth and a network's VXLAN device mark packets with the network's table and its
connection-tracking zone (networks joined by leaked routes share one); `ip rule fwmark T lookup T` picks
the table; connection tracking keeps the mark of the first packet, so replies return through the table
of the network that opened the connection. A flow with a peer outside the cluster (egress; a floating IP
reached from the uplink) lives in zone 0, where its replies from the uplink find it; that leaves tenants
with the same addresses apart inside the cluster, not towards the outside. (The first `ct zone set` of
a packet is the one that counts: it attaches the template the others then leave alone.)
IPv4 only in nftables (IPv6 endpoints get routes, no policy).

Egress addresses: the owner of a namespace's egress address source NATs the namespace's flows leaving
the cluster to it (`egress_snat`, by network mark and source). Another node steers them there: its pod's
veth marks them with the network's table plus the owner's slot (`egress_marks`; a slot is the owner's
node-local number, in mark bits 25-29); the network's table throws them (as all leaving traffic) and the
next `ip rule` picks the slot's table, whose default route is the owner over the network's VXLAN. The
connection's mark keeps the network's table only; replies from the owner, with an outside source, take
zone 0 as the flow did. The owner refuses new flows to the address.

Imported routes (another cluster's endpoints, learned by BGP VPNv4): over a VXLAN device in the remote
network's VNI (the node's own device when a local network has that VNI, else one made for it, with the
remote node as a peer); the other cluster sends replies in the VNI of the network here.

Routed networks: no VXLAN device. Each node's block of the network ends its own table in `unreachable`
(its endpoints have their /32 routes) and is thrown to the node's tables everywhere else, where the
underlay's routers know its owner by BGP. From the uplink, packets get the network's mark by destination
block and then by source block (the source's network wins, as a VXLAN device's does), and, between cluster
addresses, the destination network's zone; a flow with an outside peer is in zone 0 as on overlays.
Leaked routes out of a routed network reach remote endpoints of routed networks only.

Refusal: a VIP with a port that has no target is routed in every table (to the network's VXLAN device),
and the forward chain refuses that port (TCP reset, ICMP port unreachable) and the VIP's other ports as
unreachable, as the table does for other VIPs. Prerouting cannot refuse: the kernel routes that answer
without the packet's mark. Node ports with no target are refused by the input chain.

Incremental: `Planner` keeps a node's plan as a union of contributions. Each entry (a network, a route, a
service) and each aggregate (a local endpoint: its veth and isolation; the base chains with the rules; a
refused VIP's routes; a peer set's elements) gives kernel objects; an object given by several (a shared
chain, set or element) is held while one still gives it. A contribution records what it read beyond its
own entry (a node's address, a network, a zone, an identity, a service's VIPs) and is made again only
when that changes; a peer set's elements follow identities one by one. `update` returns the plan keys
that changed, for the driver. Invariant (a property test checks it on random sequences): after every
update the plan equals `plan(state)`, computed from scratch. VNIs are unique (admission sees to it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from isthmus.compile.compiler import INTERNAL
from isthmus.compile.state import (
    SHARED,
    Address,
    Allow,
    BlockEntry,
    Delta,
    EgressEntry,
    Entries,
    Entry,
    Identity,
    Isolation,
    Key,
    LocalEntry,
    NetworkEntry,
    NodeEntry,
    NodeState,
    Peer,
    Prefix,
    RouteEntry,
    RuleEntry,
    ServiceEntry,
    Target,
)
from isthmus.dataplane.kernel.ruleset import (
    BASE,
    FLOW_GROUP,
    FLOW_RATE,
    GATEWAY,
    GATEWAY6,
    SLOT_SHIFT,
    SLOTS,
    TO_NODES,
    VETH_PREFIX,
    VXLAN_PREFIX,
    named,
    recorded,
    via_key,
)
from isthmus.model.network import eui64

Plan = dict[Key, object]
LINK_LOCAL = ipaddress.IPv6Network("fe80::/64")
VXLAN_PORT = 4789
VXLAN_MTU = {4: 1450, 6: 1430}  # a 1500-byte underlay less VXLAN headers over IPv4 (50 B), IPv6 (70 B)
RULE_PRIORITY = 1000
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True)
class Vxlan:
    vni: int
    local: str
    mac: str


@dataclass(frozen=True)
class Route:
    kind: Literal["dev", "via", "unreachable", "throw"]
    device: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class Veth:
    endpoint: str
    network: str
    addresses: tuple[str, ...]
    mac: str
    mtu: int = VXLAN_MTU[4]  # that of the node's VXLAN devices


def veth_name(endpoint: str) -> str:
    return VETH_PREFIX + hashlib.sha1(endpoint.encode()).hexdigest()[:11]


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def node_mac(address: Address) -> str:
    """The MAC of a node's VXLAN devices: locally administered, from its underlay address."""
    raw = int(address).to_bytes(address.max_prefixlen // 8, "big")[-4:]
    return "02:49:" + ":".join(f"{b:02x}" for b in raw)


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of a VXLAN MAC: a node's IPv6 next hop on the device (the kernel
    refuses an IPv4 gateway for an IPv6 route; the peer's permanent neighbour entry maps it to the MAC)."""
    return str(eui64(LINK_LOCAL, mac))


def next_hop(prefix: Prefix, node: Address) -> str:
    """The gateway of a route to `prefix` over VXLAN to the node whose tunnel endpoint is `node`: that
    address for IPv4 over IPv4, else the link-local address of its VXLAN MAC (an IPv4 route over an IPv6
    underlay goes `via inet6` to it)."""
    return str(node) if prefix.version == node.version == 4 else link_local(node_mac(node))


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


Topic = tuple[str | int, ...]  # what a contribution read: ("node", name), ("zone", network)...
_ABSENT = object()


class _Builder:
    """One contribution being made: the objects it gives and the topics it read of the planner's context.
    Named chains and sets are content-addressed, so two contributions asking for one give the same."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.plan: Plan = {}
        self.reads: set[Topic] = set()

    def chain(self, prefix: str, body: str) -> str:
        name = f"{prefix}_{_hash(body)}"
        self.plan[("chain", name)] = body
        return name

    def flow(self, kind: str, words: str) -> str:
        """The flow-record prefix of a deciding rule: `kind` (a: allowed, d: dropped, s: DNAT to a
        service) and a hash of its words, which the planner keeps for the recorder."""
        prefix = kind + _hash(words)[:12]
        self.planner.words[prefix] = words
        return prefix

    def element(self, name: str, element: str, value: str = "") -> None:
        self.plan[("element", name, element)] = value

    def peer_set(self, peer: Peer, version: int, port: tuple[str, str] | None = None) -> str:
        """A set of the addresses of family `version` that `peer` matches; with `port` (name, protocol),
        address . port pairs of the matching endpoints that have that named port. Its elements are the
        planner's to keep. Only a set of CIDRs is an interval set: nft reads every such set whole before
        any change to elements."""
        kind = f"ipv{version}_addr"
        if port is not None:
            declared = f"{kind} . inet_service"
        else:
            declared = f"{kind}; flags interval" if peer.cidrs else kind
        name = "peer_" + _hash(f"{declared} {peer!r} {port!r}")  # the name says the type
        self.planner.peers[name] = (peer, version, port)
        self.plan[("set", name)] = declared
        return name

    def nodes(self) -> dict[str, Address]:
        self.reads.add(("nodes",))
        return self.planner.nodes

    def address(self, node: str | None) -> Address | None:
        """The node's tunnel endpoint."""
        self.reads.add(("node", node or ""))
        return self.planner.nodes.get(node or "")

    def hosts(self) -> dict[str, tuple[Address, ...]]:
        """Every node's underlay addresses, one of each family it has."""
        self.reads.add(("nodes",))
        return self.planner.hosts

    def host(self, node: str | None, version: int) -> Address | None:
        """The node's underlay address of family `version`."""
        self.reads.add(("node", node or ""))
        return next((a for a in self.planner.hosts.get(node or "", ()) if a.version == version), None)

    def network(self, ref: str) -> NetworkEntry | None:
        self.reads.add(("network", ref))
        return self.planner.networks.get(ref)

    def networks(self) -> list[NetworkEntry]:
        self.reads.add(("networks",))
        return list(self.planner.networks.values())

    def zone(self, ref: str) -> int:
        self.reads.add(("zone", ref))
        return self.planner.zone[ref]

    def vips(self, service: str) -> list[str]:
        self.reads.add(("vips", service))
        return sorted(self.planner.vips.get(service, ()))

    def egress(self, namespace: str) -> EgressEntry | None:
        self.reads.add(("egressip", namespace))
        return self.planner.egress.get(namespace)

    def slot(self, owner: str) -> int | None:
        """The owner's number in the marks of packets steered to it: 1 + its rank among owners."""
        self.reads.add(("owners",))
        rank = sorted(self.planner.owners).index(owner) + 1
        return rank if rank <= SLOTS else None

    def identity(self, network: str, address: str) -> Identity | None:
        self.reads.add(("identity", network, address))
        found = self.planner.identities.get(("identity", network, address))
        return found[1] if found else None


Match = tuple[Peer, int, tuple[str, str] | None]  # what a peer set holds: a peer's addresses of a family


def _member(match: Match, address: Address, identity: Identity) -> str | None:
    """The element an endpoint's address gives a peer set, if any."""
    peer, version, port = match
    if address.version != version or not peer.matches(address, identity):
        return None
    if port is None:
        return str(address)
    number = identity.named_port(*port)
    return None if number is None else f"{address} . {number}"


def _intervals(peer: Peer, version: int) -> list[str]:
    """A CIDR peer's prefixes of family `version`, less its exceptions, aggregated."""
    found: list[Prefix] = []
    for cidr in peer.cidrs:
        if cidr.version == version:
            parts = [cidr]
            for excluded in peer.excepts:
                if excluded.version == version:
                    parts = [q for p in parts for q in _exclude(p, excluded)]
            found += parts
    return [str(n) for n in ipaddress.collapse_addresses(found)]  # type: ignore[type-var]


def _exclude(network: Prefix, excluded: Prefix) -> Iterable[Prefix]:
    if not excluded.overlaps(network):
        return (network,)
    if network.subnet_of(excluded):  # type: ignore[arg-type]
        return ()
    return network.address_exclude(excluded)  # type: ignore[arg-type]


def _families(peer: Peer) -> tuple[int, ...]:
    """The address families a peer has addresses of: its one family, or a CIDR peer those of its CIDRs, any
    other both."""
    if peer.family is not None:
        return (peer.family,)
    return tuple(sorted({c.version for c in peer.cidrs})) if peer.cidrs else (4, 6)


def _ports(protocol: str, low: int, high: int) -> str:
    dport = f"{low}" if low == high else f"{low}-{high}"
    match = f"meta l4proto {protocol.lower()}" if protocol != "any" else ""
    return f"{match} th dport {dport}".strip() if (low, high) != (1, 65535) else match


def _allow(
    builder: _Builder, allow: Allow, direction: str, local: Identity | None, verdict: str
) -> list[str]:
    """One allowance as rules ending in `verdict`, one per family its peer has; none when a named port
    does not resolve."""
    field = "saddr" if direction == "ingress" else "daddr"
    if allow.port_name and direction == "ingress":
        number = local.named_port(allow.port_name, allow.protocol) if local else None
        if number is None:
            return []
        ports = _ports(allow.protocol, number, number)
    elif allow.port_name:
        port = (allow.port_name, allow.protocol)
        return [
            f"meta l4proto {allow.protocol.lower()} {_ip(v)} daddr . th dport "
            f"@{builder.peer_set(allow.peer, v, port)} {verdict}"
            for v in _families(allow.peer)
        ]
    else:
        ports = _ports(allow.protocol, allow.low, allow.high)
    if allow.peer == Peer():
        return [f"{ports} {verdict}".strip()]
    return [
        f"{_ip(v)} {field} @{builder.peer_set(allow.peer, v)} {ports} {verdict}".strip()
        for v in _families(allow.peer)
    ]


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _isolation(builder: _Builder, isolation: Isolation, direction: str, local: Identity | None) -> str:
    """Each allowance, recorded as the rule allowing the flow, then the drop, recorded as the policies'."""
    verdict = "accept" if direction == "ingress" else "return"
    rules = [
        recorded(line.removesuffix(verdict).strip(), builder.flow("a", allow.rule), verdict)
        for allow in isolation.allows
        for line in _allow(builder, allow, direction, local, verdict)
    ]
    policies = ", ".join(isolation.policies)
    return "\n".join([*rules, recorded("", builder.flow("d", policies), f'drop comment "{policies}"')])


def _dnat(protocol: str, targets: tuple[Target, ...], port: int) -> str:
    """DNAT to one of `targets`, all of one family."""
    ip = _ip(targets[0].address.version)

    def where(t: Target) -> str:
        return f"{t.address} . {t.port or port}"

    if len(targets) == 1:
        address = targets[0].address
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"meta l4proto {protocol} dnat {ip} to {shown}:{targets[0].port or port}"
    chosen = ", ".join(f"{i} : {where(t)}" for i, t in enumerate(targets))
    return f"meta l4proto {protocol} dnat {ip} to numgen random mod {len(targets)} map {{ {chosen} }}"


def _service(builder: _Builder, service: ServiceEntry, protocol: str, port: int, version: int) -> str | None:
    """The chain that DNATs a service's flows of family `version` to a target of that family; None when
    it has none (rejected)."""
    targets = tuple(t for t in service.targets if t.address.version == version)
    if not targets:
        return None
    proto, ip = protocol.lower(), _ip(version)
    record = (
        f'{FLOW_RATE} log prefix "{builder.flow("s", f"ServiceVIP {service.service}")}" group {FLOW_GROUP}'
    )
    if service.affinity is None:
        return builder.chain("svc", f"{record}\n{_dnat(proto, targets, port)}")
    backends = []
    for target in targets:
        seen = "aff_" + _hash(f"{service.service} {protocol} {port} {target}")
        builder.plan[("set", seen)] = f"ipv{version}_addr; flags dynamic,timeout; timeout {service.affinity}s"
        update = f"update @{seen} {{ {ip} saddr timeout {service.affinity}s }}"
        body = f"{update}\n{_dnat(proto, (target,), port)}"
        backends.append((seen, builder.chain("backend", body)))
    sticky = [f"{ip} saddr @{seen} goto {chain}" for seen, chain in backends]
    pick = ", ".join(f"{i} : goto {chain}" for i, (_, chain) in enumerate(backends))
    return builder.chain(
        "svc", "\n".join([record, *sticky, f"numgen random mod {len(backends)} vmap {{ {pick} }}"])
    )


def _rule(builder: _Builder, key: Key, rule: RuleEntry) -> str:
    """An Isthmus rule, in each family both its peers have (a service's: the family of its VIPs), recorded
    as `POLICY rules[INDEX]`."""
    verdict = "return" if rule.action == "allow" else f'drop comment "{rule.policy}"'
    prefix = builder.flow("a" if rule.action == "allow" else "d", f"{rule.policy} rules[{key[3]}]")
    ports = [_ports(rule.protocol, low, high) for low, high in rule.ports] or [
        f"meta l4proto {rule.protocol.lower()}" if rule.protocol != "any" else ""
    ]
    vips = builder.vips(rule.service) if rule.service is not None else []
    lines = []
    for version in sorted(set(_families(rule.source)) & set(_families(rule.destination))):
        ip = _ip(version)
        source = "" if rule.source == Peer() else f"{ip} saddr @{builder.peer_set(rule.source, version)} "
        if rule.service is not None:
            family = [v for v in vips if ipaddress.ip_address(v).version == version]
            if not family:
                continue  # no VIP of this family: nothing reaches it to match
            destination = f"ct original {ip} daddr {{ {', '.join(family)} }} "
        elif rule.destination == Peer():
            destination = ""
        else:
            destination = f"{ip} daddr @{builder.peer_set(rule.destination, version)} "
        lines += [recorded(f"{source}{destination}{p}".strip(), prefix, verdict) for p in ports]
    return "\n".join(dict.fromkeys(lines))


def zones(networks: Mapping[str, NetworkEntry], leaks: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Networks joined by leaked routes (network, target) share a conntrack zone (a reply may come from
    the other one): the smallest VNI among them."""
    parent: dict[str, str] = {}

    def find(n: str) -> str:
        while parent.setdefault(n, n) != n:
            n = parent[n]
        return n

    for network, target in leaks:
        parent[find(network)] = find(target)
    groups: dict[str, list[int]] = defaultdict(list)
    for ref, network_entry in networks.items():
        groups[find(ref)].append(network_entry.vni)
    return {ref: min(groups[find(ref)]) & 0xFFFF or 1 for ref in networks}


def plan(state: NodeState) -> Plan:
    """Every kernel object the node's state asks for, computed from scratch."""
    return Planner(state).plan


# the contributions made again when fired
CONTRIBUTORS = (
    "network",
    "route",
    "block",
    "service",
    "nodeport",
    "identity",
    "egressip",
    "endpoint",
    "base",
)


class Planner:
    """A node's plan, made from scratch from its state, then kept in step with it by `update`."""

    def __init__(self, state: NodeState) -> None:
        self.node = state.node
        self.plan: Plan = {}
        self.given: dict[Key, Plan] = {}  # contributor -> what it gives
        self.givers: dict[Key, dict[Key, object]] = {}  # plan key -> contributor -> what it gives there
        self.reads: dict[Key, set[Topic]] = {}  # contributor -> what it read
        self.readers: dict[Topic, set[Key]] = defaultdict(set)
        self.peers: dict[str, Match] = {}  # peer set -> what it matches
        self.words: dict[str, str] = {}  # flow-record prefix -> the deciding rule, as trace words it
        self.members: dict[str, Counter[str]] = {}  # live peer set of endpoints -> element -> identities
        self.dirty: set[Key] = set()  # plan keys whose givers changed
        self.changed: set[Key] = set()  # plan keys changed since `update` last returned
        # the context, from scratch: the state as seen, and what contributions read of it
        self.entries: Entries = {**state.shared, **state.own}
        self.nodes = {e.name: e.address for e in self.entries.values() if isinstance(e, NodeEntry)}
        self.hosts = {e.name: e.addresses for e in self.entries.values() if isinstance(e, NodeEntry)}
        self.networks = {e.ref: e for e in self.entries.values() if isinstance(e, NetworkEntry)}
        self.leaks = Counter(leak for e in self.entries.values() if (leak := _leak(e)))
        self.zone = zones(self.networks, self.leaks)
        self.vips: dict[str, Counter[str]] = defaultdict(Counter)  # service -> its VIPs -> entries
        self.rules: dict[Key, RuleEntry] = {}
        self.identities: dict[Key, tuple[Address, Identity]] = {}
        self.endpoints: dict[str, set[Key]] = defaultdict(set)  # local endpoint -> its "local" keys
        self.egress = {str(k[1]): e for k, e in self.entries.items() if isinstance(e, EgressEntry)}
        self.owners = Counter(e.node for e in self.egress.values())  # egress owners -> their addresses
        for key, entry in self.entries.items():
            if (vip := _vip(entry)) is not None:
                self.vips[vip[0]][vip[1]] += 1
            elif isinstance(entry, RuleEntry):
                self.rules[key] = entry
            elif isinstance(entry, Identity):
                self.identities[key] = (ipaddress.ip_address(str(key[2])), entry)
            elif isinstance(entry, LocalEntry):
                self.endpoints[entry.endpoint].add(key)
        for key in [k for k in self.entries if k[0] in CONTRIBUTORS]:
            self._make(key)
        for endpoint in self.endpoints:
            self._make(("endpoint", endpoint))
        self._make(("base",))
        self._settle()
        self.changed.clear()

    def update(self, state: NodeState, delta: Delta) -> set[Key]:
        """Bring the plan in step with `state`, which `delta` changed; returns the plan keys that changed.
        Only the contributions of changed entries, and of those that read what changed, are made again."""
        fired: set[Topic] = set()
        for scope in (SHARED, self.node):
            for key in (*delta.puts.get(scope, {}), *delta.deletes.get(scope, ())):
                old, new = self.entries.pop(key, None), state.get(key)
                if new is not None:
                    self.entries[key] = new
                fired |= {key, *self._context(key, old, new)}
        if ("zones",) in fired:
            zone, self.zone = self.zone, zones(self.networks, self.leaks)
            fired |= {("zone", n) for n in zone.keys() | self.zone.keys() if zone.get(n) != self.zone.get(n)}
        remake = {topic for topic in fired if topic[0] in CONTRIBUTORS}
        for topic in fired:
            remake |= self.readers.get(topic, set())
        for contributor in remake:
            self._make(contributor)
        self._settle()
        changed, self.changed = self.changed, set()
        return changed

    def _context(self, key: Key, old: Entry | None, new: Entry | None) -> set[Topic]:
        """Keep the context in step with one entry's change; returns what else that changes."""
        kind = key[0]
        if kind == "node":
            _keep(self.nodes, str(key[1]), new.address if isinstance(new, NodeEntry) else None)
            _keep(self.hosts, str(key[1]), new.addresses if isinstance(new, NodeEntry) else None)
            return {("nodes",)}
        if kind == "network":
            _keep(self.networks, str(key[1]), new if isinstance(new, NetworkEntry) else None)
            return {("networks",), ("zones",)}
        if kind == "route":
            return {("zones",)} if _count(self.leaks, _leak(old), _leak(new)) else set()
        if kind == "rule":
            _keep(self.rules, key, new if isinstance(new, RuleEntry) else None)
            return {("base",)}
        if kind == "egressip":
            _keep(self.egress, str(key[1]), new if isinstance(new, EgressEntry) else None)
            before = old.node if isinstance(old, EgressEntry) else None
            after = new.node if isinstance(new, EgressEntry) else None
            return {("owners",)} if _count(self.owners, before, after) else set()
        if kind == "identity":
            self._identity(key, old, new)
        elif kind == "local":
            return self._local(key, old, new)
        elif kind in ("service", "nodeport"):
            return self._vips(old, new)
        return set()

    def _vips(self, old: Entry | None, new: Entry | None) -> set[Topic]:
        before, after = _vip(old), _vip(new)
        if before == after:
            return set()
        fired: set[Topic] = set()
        for vip, gone in ((before, True), (after, False)):
            if vip is not None:
                counts = self.vips[vip[0]]
                if _count(counts, vip[1] if gone else None, None if gone else vip[1]):
                    fired.add(("vips", vip[0]))
                if not counts:
                    del self.vips[vip[0]]
        return fired

    def _local(self, key: Key, old: Entry | None, new: Entry | None) -> set[Topic]:
        fired: set[Topic] = set()
        for entry, held in ((old, False), (new, True)):
            if isinstance(entry, LocalEntry):
                keys = self.endpoints[entry.endpoint]
                if held:
                    keys.add(key)
                else:
                    keys.discard(key)
                if not keys:
                    del self.endpoints[entry.endpoint]
                fired.add(("endpoint", entry.endpoint))
        return fired

    def _identity(self, key: Key, old: Entry | None, new: Entry | None) -> None:
        """An identity changed: the live peer sets of endpoints gain or lose its address."""
        address = ipaddress.ip_address(str(key[2]))
        _keep(self.identities, key, (address, new) if isinstance(new, Identity) else None)
        for name, counts in self.members.items():
            match = self.peers[name]
            before = _member(match, address, old) if isinstance(old, Identity) else None
            after = _member(match, address, new) if isinstance(new, Identity) else None
            if before == after:
                continue
            contributor, given = ("peers", name), self.given.setdefault(("peers", name), {})
            if before is not None and _count(counts, before, None):
                del given[("element", name, before)]
                self._source(("element", name, before), contributor, _ABSENT)
            if after is not None and _count(counts, None, after):
                given[("element", name, after)] = ""
                self._source(("element", name, after), contributor, "")

    def _make(self, contributor: Key) -> None:
        """Make one contribution again: give what it gives now, and note what it read."""
        builder = _Builder(self)
        kind = contributor[0]
        if kind == "endpoint":
            _endpoint(builder, str(contributor[1]))
        elif kind == "base":
            _base(builder)
        elif kind == "refused":
            _refused(builder, str(contributor[1]))
        else:
            entry = self.entries.get(contributor)
            if isinstance(entry, NetworkEntry):
                _network(builder, entry)
            elif isinstance(entry, RouteEntry):
                _route(builder, entry)
            elif isinstance(entry, ServiceEntry):
                _service_elements(builder, contributor, entry)
            elif isinstance(entry, Identity):
                _egress_member(builder, contributor, entry)
            elif isinstance(entry, EgressEntry):
                _egress_address(builder, entry)
            elif isinstance(entry, BlockEntry):
                _block(builder, entry)
        self._give(contributor, builder.plan)
        old = self.reads.pop(contributor, set())
        for topic in old - builder.reads:
            readers = self.readers[topic]
            readers.discard(contributor)
            if not readers:
                del self.readers[topic]
        for topic in builder.reads - old:
            self.readers[topic].add(contributor)
        if builder.reads:
            self.reads[contributor] = builder.reads

    def _give(self, contributor: Key, made: Plan) -> None:
        """`contributor` now gives exactly `made`."""
        old = self.given.pop(contributor, {})
        for key in old.keys() - made.keys():
            self._source(key, contributor, _ABSENT)
        for key, value in made.items():
            if old.get(key, _ABSENT) != value:
                self._source(key, contributor, value)
        if made:
            self.given[contributor] = made

    def _source(self, key: Key, contributor: Key, value: object) -> None:
        givers = self.givers.setdefault(key, {})
        if value is _ABSENT:
            givers.pop(contributor, None)
            if not givers:
                del self.givers[key]
        else:
            givers[contributor] = value
        self.dirty.add(key)

    def _settle(self) -> None:
        """Resolve the plan keys whose givers changed. A refused VIP's element, and a peer set, appearing
        or going, make what depends on them: the VIP's routes, the set's elements."""
        while self.dirty:
            key = self.dirty.pop()
            givers = self.givers.get(key)
            value = _winner(givers) if givers else _ABSENT
            if value == self.plan.get(key, _ABSENT):
                continue
            if value is _ABSENT:
                del self.plan[key]
            else:
                self.plan[key] = value
            self.changed.add(key)
            if key[0] == "element" and key[1] in ("refused", "refused6"):
                self._make(("refused", key[2]))
            elif key[0] == "set" and key[1] in self.peers:
                self._peer_set(str(key[1]), value is not _ABSENT)

    def _peer_set(self, name: str, live: bool) -> None:
        """A peer set's elements: every one when it appears (then kept per identity, unless it is of
        CIDRs only), none when it goes."""
        made: Plan = {}
        if live:
            match = self.peers[name]
            peer, version, port = match
            if port is None and peer.cidrs:
                made = {("element", name, e): "" for e in _intervals(peer, version)}
            else:
                found = (_member(match, a, i) for a, i in self.identities.values())
                self.members[name] = Counter(e for e in found if e is not None)
                made = {("element", name, e): "" for e in self.members[name]}
        else:
            self.members.pop(name, None)
            self.peers.pop(name, None)
        self._give(("peers", name), made)


_PRECEDENCE = {"refused": 0, "block": 1, "network": 1}


def _winner(givers: dict[Key, object]) -> object:
    """What the plan holds of an object several give: a refused VIP's route rather than the table's own
    route to it, a routed network's block or another node's address rather than the same prefix
    unreachable as cluster-internal; anything else several give, they give alike."""
    if len(givers) > 1:
        return min(givers.items(), key=lambda given: _PRECEDENCE.get(str(given[0][0]), 2))[1]
    return next(iter(givers.values()))


def _leak(entry: Entry | None) -> tuple[str, str] | None:
    if isinstance(entry, RouteEntry) and entry.kind == "leak" and entry.target:
        return entry.network, entry.target
    return None


def _vip(entry: Entry | None) -> tuple[str, str] | None:
    if isinstance(entry, ServiceEntry):
        return entry.service, str(entry.vip)
    return None


def _keep(index: dict[_K, _V], key: _K, value: _V | None) -> None:
    if value is None:
        index.pop(key, None)
    else:
        index[key] = value


def _count(counts: Counter[_K], old: _K | None, new: _K | None) -> bool:
    """Move one count from `old` to `new`; True when a value appears or goes."""
    if old == new:
        return False
    moved = False
    if old is not None:
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
            moved = True
    if new is not None:
        counts[new] += 1
        moved |= counts[new] == 1
    return moved


def _base(builder: _Builder) -> None:
    """The base sets and chains, the chain of Isthmus rules (in key order) the forward chain jumps to,
    the node's own address (flows from the uplink DNATed to another node are source NATed to it; pods
    reach no node), and the underlay's `ip rule`."""
    ordered = sorted(builder.planner.rules.items())
    rules = builder.chain("rules", "\n".join(filter(None, (_rule(builder, k, e) for k, e in ordered))))
    to_nodes = builder.chain("to_nodes", TO_NODES)
    mine = {
        f"snat {_ip(a.version)} to NODE": f"to {a}" for a in builder.hosts().get(builder.planner.node, ())
    }
    for base, declared in BASE.items():
        if base[0] == "chain":
            body = (
                str(declared)
                .replace("jump rules", f"jump {rules}")
                .replace("jump to_nodes", f"jump {to_nodes}")
            )
            lines = (_node_snat(line, mine) for line in body.split("\n"))
            builder.chain(str(base[1]), "\n".join(line for line in lines if line is not None))
        else:
            builder.plan[base] = declared
    for addresses in builder.hosts().values():
        for address in addresses:
            builder.element(named("nodes", address), str(address))
    builder.plan[("rule", "underlay")] = RULE_PRIORITY - 1
    builder.plan[("rule", "nodes")] = RULE_PRIORITY - 2
    builder.element("internal", GATEWAY)  # hairpinned flows come back to it: they stay in their zone
    builder.element("internal6", GATEWAY6)


def _node_snat(line: str, mine: dict[str, str]) -> str | None:
    """A line that source NATs to the node's address of its family: with that address; None without it."""
    for snat, to in mine.items():
        if line.endswith(snat):
            return line.replace("to NODE", to)
    return None if line.endswith("NODE") else line


def _network(builder: _Builder, network: NetworkEntry) -> None:
    """Its `ip rule`; whether it reaches the nodes; routes to the other nodes' addresses (replies to flows
    they source NATed), over its VXLAN device or, routed, through the underlay; unless routed, that device
    (with the other nodes as peers) and its mark and zone. Other nodes: those the network reaches
    (`NetworkEntry.nodes`), or every one."""
    builder.plan[("rule", network.table)] = RULE_PRIORITY
    if network.node_access:
        builder.element("node_access", str(network.table))
    device, me, every = vxlan_name(network.vni), builder.planner.node, builder.nodes()
    reach = network.nodes
    nodes = {n: a for n, a in every.items() if reach is None or n in reach or n == me}
    routed = network.mode == "routed"
    hosts = builder.hosts()
    for name, tunnel in nodes.items():
        if name != me and me in nodes:
            for address in hosts.get(name, ()):
                host = ipaddress.ip_network(address)
                route = Route("throw") if routed else Route("via", device, next_hop(host, tunnel))
                builder.plan[("route", network.table, str(host))] = route
    if routed:
        return
    if me in nodes:
        builder.plan[("vxlan", device)] = Vxlan(network.vni, str(nodes[me]), node_mac(nodes[me]))
        for name, address in nodes.items():
            if name != me:
                builder.plan[("peer", device, str(address))] = node_mac(address)
    builder.element("networks", f'"{device}"', str(network.table))
    builder.element("zones", f'"{device}"', str(builder.zone(network.ref)))


def _endpoint(builder: _Builder, endpoint: str) -> None:
    """A local endpoint: one veth holding its addresses, its mark, zone and hairpin, and per direction the
    NetworkPolicy isolation of its first address that has one (its addresses share its identity; the
    chain holds the rules of both families)."""
    planner = builder.planner
    builder.reads.add(("endpoint", endpoint))
    found = [planner.entries.get(k) for k in planner.endpoints.get(endpoint, ())]
    attached = sorted(
        (e for e in found if isinstance(e, LocalEntry)), key=lambda e: (e.address.version, int(e.address))
    )
    if not attached:
        return
    name, first = veth_name(endpoint), attached[0]
    addresses = tuple(str(e.address) for e in attached)
    me = builder.address(builder.planner.node)
    mtu = VXLAN_MTU[me.version if me is not None else 4]
    builder.plan[("veth", name)] = Veth(endpoint, first.network, addresses, first.mac, mtu)
    network = builder.network(first.network)
    if network is not None:
        builder.element("networks", f'"{name}"', str(network.table))
        builder.element("zones", f'"{name}"', str(builder.zone(first.network)))
    for local in attached:
        builder.element(named("hairpin", local.address), f"{local.address} . {local.address}")
    for direction in ("ingress", "egress"):
        for local in attached:
            key = (direction, local.network, str(local.address))
            builder.reads.add(key)
            isolation = planner.entries.get(key)
            if isinstance(isolation, Isolation):
                identity = builder.identity(local.network, str(local.address))
                body = _isolation(builder, isolation, direction, identity)
                chain = builder.chain("in" if direction == "ingress" else "out", body)
                builder.element(direction, f'"{name}"', f"jump {chain}")
                break


def _refused(builder: _Builder, vip: str) -> None:
    """A refused VIP is routed in every table (to the network's VXLAN device; a routed network's table
    throws it to the node's), so that the forward chain refuses it."""
    refused = ("element", named("refused", vip), vip) in builder.planner.plan
    if refused and builder.planner.node in builder.nodes():
        host = ipaddress.ip_network(vip)
        for network in builder.networks():
            routed = network.mode == "routed"
            route = Route("throw") if routed else Route("dev", vxlan_name(network.vni))
            builder.plan[("route", network.table, str(host))] = route


def _route(builder: _Builder, route: RouteEntry) -> None:
    network = builder.network(route.network)
    if network is None:
        return
    key = ("route", network.table, str(route.prefix))
    if route.kind == "unreachable":
        builder.plan[key] = Route("unreachable")
        if route.rule == INTERNAL:
            builder.element(named("internal", route.prefix.network_address), str(route.prefix))
    elif route.kind == "egress":
        builder.plan[key] = Route("throw")  # on to the node's own tables, out of its uplink
        builder.element("egress_networks", str(network.table))
    elif route.kind == "imported":
        _imported(builder, key, route)
    elif route.kind == "block" and route.node == builder.planner.node:
        builder.plan[key] = Route("unreachable")  # what of it is attached here has its own routes
    elif route.node == builder.planner.node and route.endpoint:
        builder.plan[key] = Route("dev", veth_name(route.endpoint))
    elif network.mode == "routed":  # a remote endpoint: its node's block is thrown to the underlay
        if route.kind == "leak":
            builder.plan[key] = Route("throw")
    elif (address := builder.address(route.node)) is not None:
        builder.plan[key] = Route("via", vxlan_name(network.vni), next_hop(route.prefix, address))
    backend = route.prefix.network_address
    if route.kind == "leak" and route.via is not None and route.via.version == backend.version:
        builder.element(named("via_only", backend), f"{network.table} . {backend}")
        builder.planner.words[via_key(network.table, backend)] = route.rule
        builder.element(named("via_allowed", backend), f"{network.table} . {backend} . {route.via}")


def _imported(builder: _Builder, key: Key, route: RouteEntry) -> None:
    """Another cluster's endpoint: over a VXLAN device in its network's VNI (this node's own, or one made
    for it) to its node. Its replies come back in the VNI of the network here, as that cluster imports it."""
    me = builder.address(builder.planner.node)
    if me is None or route.vni is None or route.via is None:
        return
    device = vxlan_name(route.vni)
    builder.plan[("vxlan", device)] = Vxlan(route.vni, str(me), node_mac(me))
    builder.plan[("peer", device, str(route.via))] = node_mac(route.via)
    builder.plan[key] = Route("via", device, next_hop(route.prefix, route.via))


def _egress_member(builder: _Builder, key: Key, identity: Identity) -> None:
    """An endpoint of a namespace with an egress address: the owner source NATs its flows out; the node
    it is attached to, if another, marks them with the owner's slot, whose table sends them over VXLAN
    to the owner (after the network's table has thrown them, as it throws everything leaving)."""
    egress = builder.egress(identity.namespace)
    network = builder.network(str(key[1]))
    address = str(key[2])
    version = ipaddress.ip_address(address).version
    source = egress.of(version) if egress is not None else None
    if egress is None or network is None or source is None:
        return
    element = f"{network.table} . {address}"
    if egress.node == builder.planner.node:
        builder.element(named("egress_snat", address), element, str(source))
        return
    routed = network.mode == "routed"
    builder.reads.add(("local", network.ref, address))
    tunnel, slot = builder.address(egress.node), builder.slot(egress.node)
    owner = builder.host(egress.node, version) if routed else tunnel  # routed: through the underlay
    if ("local", network.ref, address) not in builder.planner.entries or owner is None or slot is None:
        return
    table = network.table | slot << SLOT_SHIFT
    builder.element(named("egress_marks", address), element, str(table))
    default = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    route = (
        Route("via", "", str(owner))
        if routed
        else Route("via", vxlan_name(network.vni), next_hop(default, owner))
    )
    builder.plan[("route", table, str(default))] = route
    builder.plan[("rule", table)] = RULE_PRIORITY + 1


def _block(builder: _Builder, block: BlockEntry) -> None:
    """A routed network's block: the end of its own node's (nothing else of it is here), thrown to the
    node's tables elsewhere (the underlay's routers know the owner by BGP); from the uplink, packets to or
    from it get the network's mark and zone."""
    network = builder.network(block.network)
    if network is None or builder.planner.node not in builder.nodes():
        return
    mine = block.node == builder.planner.node
    builder.plan[("route", network.table, str(block.prefix))] = Route("unreachable" if mine else "throw")
    first = block.prefix.network_address
    builder.element(named("routed_marks", first), str(block.prefix), str(network.table))
    builder.element(named("routed_zones", first), str(block.prefix), str(builder.zone(network.ref)))


def _egress_address(builder: _Builder, egress: EgressEntry) -> None:
    """The owner refuses new flows to the egress address: only replies come to it."""
    if egress.node == builder.planner.node:
        for address in egress.addresses:
            builder.element(named("egress_addresses", address), str(address))


def _outside(builder: _Builder, address: str, service: ServiceEntry) -> ServiceEntry:
    """An external or floating IP goes to the service's targets on this node; with none here, to no
    target with `local_only`, else to every one (the base chain source NATs those flows to the node's
    address, so that replies come back through it). Flows from the uplink get the first target's network
    mark before DNAT, and their own target's after it (`backend_marks`): the service's backends may be in
    several networks (pods keep theirs when their namespace's isolation changes), each routed by its table.
    Targets are of the address's family."""
    version = ipaddress.ip_address(address).version
    family = tuple(t for t in service.targets if t.address.version == version)
    local = tuple(t for t in family if t.node == builder.planner.node)
    targets = local or (() if service.local_only else family)
    network = _network_of(builder, targets[0]) if targets else None
    if network is not None:
        builder.element(named("outside_marks", address), address, str(network.table))
    _backend_marks(builder, targets)
    return replace(service, targets=targets)


def _backend_marks(builder: _Builder, targets: Iterable[Target]) -> None:
    """Flows from the uplink DNATed to these targets take their network's mark (its table routes them)."""
    for target in targets:
        if (own := _network_of(builder, target)) is not None:
            builder.element(named("backend_marks", target.address), str(target.address), str(own.table))


def _network_of(builder: _Builder, target: Target) -> NetworkEntry | None:
    """The target's network: as the service says, else (a backend stored without it) as its endpoint's
    attachment here says."""
    if target.network is not None:
        return builder.network(target.network)
    if target.node != builder.planner.node or not target.endpoint:
        return None
    builder.reads.add(("endpoint", target.endpoint))
    for key in builder.planner.endpoints.get(target.endpoint, ()):
        if str(key[2]) == str(target.address):
            return builder.network(str(key[1]))
    return None


def _service_elements(builder: _Builder, key: Key, service: ServiceEntry) -> None:
    """A service's address and port (or a node port) to the chain of its targets of that family."""
    if key[0] == "service":
        address, protocol, port = str(key[1]), str(key[2]), int(key[3])
        version = ipaddress.ip_address(address).version
        builder.element(named("served", address), address)
        if protocol == "any":  # a floating IP of endpoints: every port to the first of its family
            fixed = [t for t in service.targets if t.address.version == version][:1]
            if fixed:
                builder.element(named("floating", address), address, str(fixed[0].address))
                _outside(builder, address, replace(service, targets=tuple(fixed)))
            return
        if address != str(service.vip):  # a floating or external IP
            service = _outside(builder, address, service)
        chain = _service(builder, service, protocol, port, version)
        element = f"{address} . {protocol.lower()} . {port}"
        if chain is None:
            builder.element(named("rejected", address), element)
            builder.element(named("refused", address), address)
        else:
            builder.element(named("services", address), element, f"goto {chain}")
            if {t.address for t in service.targets} <= {a for h in builder.hosts().values() for a in h}:
                builder.element(named("host_services", address), element)  # a node is the peer: zone 0
        return
    protocol, port = str(key[1]), int(key[2])
    element = f"{protocol.lower()} . {port}"
    here = tuple(t for t in service.targets if t.node == builder.planner.node)
    service = replace(service, targets=here if service.local_only else service.targets)
    for version in (4, 6):  # at the node's addresses of each family the service has targets of
        suffix = "" if version == 4 else "6"
        chain = _service(builder, service, protocol, port, version)
        if chain is not None:
            builder.element(f"nodeports{suffix}", element, f"goto {chain}")
            _backend_marks(builder, (t for t in service.targets if t.address.version == version))
        elif version == service.vip.version:
            builder.element(f"nodeport_rejected{suffix}", element)
