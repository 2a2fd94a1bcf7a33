"""A node's compiled state as kernel objects, keyed so that two plans diff object by object. Pure: the
driver reads what the kernel holds in the same keys and applies the difference.

Keys:
  ("vxlan", device)               Vxlan: one device per virtual network, on the node's underlay address
  ("peer", device, address)       str: a remote node's VTEP on the device: its MAC (static neighbour + fdb)
  ("route", table, prefix)        Route: an entry of a network's table
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
of the network that opened the connection. IPv4 only in nftables (IPv6 endpoints get routes, no policy).

Refusal: a VIP with a port that has no target is routed in every table (to the network's VXLAN device),
and the forward chain refuses that port (TCP reset, ICMP port unreachable) and the VIP's other ports as
unreachable, as the table does for other VIPs. Prerouting cannot refuse: the kernel routes that answer
without the packet's mark. Node ports with no target are refused by the input chain.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from isthmus.compile.state import (
    Address,
    Allow,
    Identity,
    Isolation,
    Key,
    LocalEntry,
    NetworkEntry,
    NodeEntry,
    NodeState,
    Peer,
    RouteEntry,
    RuleEntry,
    ServiceEntry,
    Target,
)

Plan = dict[Key, object]
GATEWAY = "169.254.1.1"  # on every pod veth's host side; pods route everything to it
VXLAN_PORT = 4789
VXLAN_MTU = 1450
RULE_PRIORITY = 1000
MARK_MASK = 0x1FFFFFF  # the bits of a mark that name a table (1000 + a 24-bit VNI)
MASQUERADE = 0x40000000  # a mark bit: source NAT this packet (hairpin)
VETH_PREFIX, VXLAN_PREFIX = "isv", "isx"


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


def veth_name(endpoint: str) -> str:
    return VETH_PREFIX + hashlib.sha1(endpoint.encode()).hexdigest()[:11]


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def node_mac(address: Address) -> str:
    """The MAC of a node's VXLAN devices: locally administered, from its underlay address."""
    raw = int(address).to_bytes(address.max_prefixlen // 8, "big")[-4:]
    return "02:49:" + ":".join(f"{b:02x}" for b in raw)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _v4(address: Address | str) -> bool:
    return ipaddress.ip_address(address).version == 4


class _Builder:
    """Collects a plan; named chains and peer sets are made once, whoever asks for them."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.plan: Plan = {}
        self.vips: dict[str, set[str]] = defaultdict(set)
        for entry in state.shared.values():
            if isinstance(entry, ServiceEntry) and _v4(entry.vip):
                self.vips[entry.service].add(str(entry.vip))
        self.identities = [
            (ipaddress.ip_address(str(k[2])), e)
            for k, e in state.shared.items()
            if k[0] == "identity" and isinstance(e, Identity)
        ]

    def chain(self, prefix: str, body: str) -> str:
        name = f"{prefix}_{_hash(body)}"
        self.plan[("chain", name)] = body
        return name

    def element(self, name: str, element: str, value: str = "") -> None:
        self.plan[("element", name, element)] = value

    def peer_set(self, peer: Peer, port: tuple[str, str] | None = None) -> str:
        """A set of the addresses `peer` matches; with `port` (name, protocol), address . port pairs of
        the matching endpoints that have that named port."""
        name = "peer_" + _hash(repr((peer, port)))
        if ("set", name) in self.plan:
            return name
        if port is None:
            self.plan[("set", name)] = "ipv4_addr; flags interval"
            for prefix in _intervals(peer, self.identities):
                self.element(name, prefix)
        else:
            self.plan[("set", name)] = "ipv4_addr . inet_service"
            for address, identity in self.identities:
                number = identity.named_port(*port)
                if number is not None and address.version == 4 and peer.matches(address, identity):
                    self.element(name, f"{address} . {number}")
        return name


def _intervals(peer: Peer, identities: Iterable[tuple[Address, Identity]]) -> list[str]:
    if peer.cidrs:
        found: list[ipaddress.IPv4Network] = []
        for cidr in peer.cidrs:
            if isinstance(cidr, ipaddress.IPv4Network):
                parts = [cidr]
                for excluded in peer.excepts:
                    if isinstance(excluded, ipaddress.IPv4Network):
                        parts = [
                            q
                            for p in parts
                            for q in ((p,) if not excluded.overlaps(p) else _exclude(p, excluded))
                        ]
                found += parts
        return [str(n) for n in ipaddress.collapse_addresses(found)]
    return sorted(
        {str(a) for a, identity in identities if a.version == 4 and peer.matches(a, identity)},
        key=lambda a: int(ipaddress.ip_address(a)),
    )


def _exclude(
    network: ipaddress.IPv4Network, excluded: ipaddress.IPv4Network
) -> Iterable[ipaddress.IPv4Network]:
    if network.subnet_of(excluded):
        return ()
    return network.address_exclude(excluded)


def _ports(protocol: str, low: int, high: int) -> str:
    dport = f"{low}" if low == high else f"{low}-{high}"
    match = f"meta l4proto {protocol.lower()}" if protocol != "any" else ""
    return f"{match} th dport {dport}".strip() if (low, high) != (1, 65535) else match


def _allow(builder: _Builder, allow: Allow, direction: str, local: Identity | None, verdict: str) -> str:
    """One allowance as a rule ending in `verdict`; "" when a named port does not resolve."""
    field = "saddr" if direction == "ingress" else "daddr"
    if allow.port_name and direction == "ingress":
        number = local.named_port(allow.port_name, allow.protocol) if local else None
        if number is None:
            return ""
        ports = _ports(allow.protocol, number, number)
    elif allow.port_name:
        pairs = builder.peer_set(allow.peer, (allow.port_name, allow.protocol))
        return f"meta l4proto {allow.protocol.lower()} ip daddr . th dport @{pairs} {verdict}"
    else:
        ports = _ports(allow.protocol, allow.low, allow.high)
    everything = allow.peer == Peer()
    peer = "" if everything else f"ip {field} @{builder.peer_set(allow.peer)} "
    return f"{peer}{ports} {verdict}".strip()


def _isolation(builder: _Builder, isolation: Isolation, direction: str, local: Identity | None) -> str:
    verdict = "accept" if direction == "ingress" else "return"
    rules = [_allow(builder, a, direction, local, verdict) for a in isolation.allows]
    return "\n".join([*(r for r in rules if r), f'counter drop comment "{", ".join(isolation.policies)}"'])


def _dnat(protocol: str, targets: tuple[Target, ...], port: int) -> str:
    def where(t: Target) -> str:
        return f"{t.address} . {t.port or port}"

    if len(targets) == 1:
        return f"meta l4proto {protocol} dnat ip to {targets[0].address}:{targets[0].port or port}"
    chosen = ", ".join(f"{i} : {where(t)}" for i, t in enumerate(targets))
    return f"meta l4proto {protocol} dnat ip to numgen random mod {len(targets)} map {{ {chosen} }}"


def _service(builder: _Builder, service: ServiceEntry, protocol: str, port: int) -> str | None:
    """The chain that DNATs a service's flows to a target; None when it has none (rejected)."""
    targets = tuple(t for t in service.targets if _v4(t.address))
    if not targets:
        return None
    proto = protocol.lower()
    if service.affinity is None:
        return builder.chain("svc", _dnat(proto, targets, port))
    backends = []
    for target in targets:
        seen = "aff_" + _hash(f"{service.service} {protocol} {port} {target}")
        builder.plan[("set", seen)] = f"ipv4_addr; flags dynamic,timeout; timeout {service.affinity}s"
        body = f"update @{seen} {{ ip saddr timeout {service.affinity}s }}\n" + _dnat(proto, (target,), port)
        backends.append((seen, builder.chain("backend", body)))
    sticky = [f"ip saddr @{seen} goto {chain}" for seen, chain in backends]
    pick = ", ".join(f"{i} : goto {chain}" for i, (_, chain) in enumerate(backends))
    return builder.chain("svc", "\n".join([*sticky, f"numgen random mod {len(backends)} vmap {{ {pick} }}"]))


def _rule(builder: _Builder, rule: RuleEntry) -> str:
    source = "" if rule.source == Peer() else f"ip saddr @{builder.peer_set(rule.source)} "
    if rule.service is not None:
        vips = sorted(builder.vips.get(rule.service, ()))
        if not vips:
            return ""  # a service with no VIP: nothing reaches it to match
        destination = f"ct original ip daddr {{ {', '.join(vips)} }} "
    else:
        destination = "" if rule.destination == Peer() else f"ip daddr @{builder.peer_set(rule.destination)} "
    verdict = "return" if rule.action == "allow" else f'counter drop comment "{rule.policy}"'
    ports = [_ports(rule.protocol, low, high) for low, high in rule.ports] or [
        f"meta l4proto {rule.protocol.lower()}" if rule.protocol != "any" else ""
    ]
    return "\n".join(f"{source}{destination}{p} {verdict}".replace("  ", " ").strip() for p in ports)


_MARK = f"meta mark and {MARK_MASK:#x}"
_SERVICES = """ip daddr . meta l4proto . th dport vmap @services
fib daddr type local meta l4proto . th dport vmap @nodeports
dnat ip to ip daddr map @floating"""
_REFUSE = """meta l4proto tcp ip daddr . meta l4proto . th dport @rejected reject with tcp reset
ip daddr . meta l4proto . th dport @rejected reject
ip daddr @refused reject with icmp host-unreachable"""
_REFUSE_NODEPORT = """meta l4proto tcp meta l4proto . th dport @nodeport_rejected reject with tcp reset
meta l4proto . th dport @nodeport_rejected reject"""
_VIA = f"{_MARK} . ip daddr . ct original ip daddr != @via_allowed"
BASE: Plan = {
    ("set", "networks"): "ifname : mark",
    ("set", "zones"): "typeof iifname : ct zone",
    ("set", "hairpin"): "ipv4_addr . ipv4_addr",
    ("set", "egress_networks"): "mark",
    ("set", "via_only"): "mark . ipv4_addr",
    ("set", "via_allowed"): "mark . ipv4_addr . ipv4_addr",
    ("set", "services"): "ipv4_addr . inet_proto . inet_service : verdict",
    ("set", "nodeports"): "inet_proto . inet_service : verdict",
    ("set", "rejected"): "ipv4_addr . inet_proto . inet_service",
    ("set", "nodeport_rejected"): "inet_proto . inet_service",
    ("set", "refused"): "ipv4_addr",
    ("set", "floating"): "ipv4_addr : ipv4_addr",
    ("set", "ingress"): "ifname : verdict",
    ("set", "egress"): "ifname : verdict",
    ("chain", "pre_raw"): """type filter hook prerouting priority raw; policy accept;
meta mark set iifname map @networks
ct zone set iifname map @zones""",
    ("chain", "out_raw"): """type filter hook output priority raw; policy accept;
ct zone set oifname map @zones""",
    ("chain", "pre_mangle"): f"""type filter hook prerouting priority mangle; policy accept;
ct state new ct direction original ct mark set {_MARK}
ct direction reply meta mark set ct mark""",
    ("chain", "pre_nat"): f"""type nat hook prerouting priority dstnat; policy accept;
{_SERVICES}""",
    ("chain", "out_nat"): f"""type nat hook output priority -100; policy accept;
{_SERVICES}""",
    ("chain", "post_nat"): f"""type nat hook postrouting priority srcnat; policy accept;
ip saddr . ip daddr @hairpin masquerade
{_MARK} @egress_networks oifname != "{VETH_PREFIX}*" oifname != "{VXLAN_PREFIX}*" masquerade""",
    ("chain", "forward"): f"""type filter hook forward priority filter; policy accept;
ct state established,related accept
ct state invalid drop
{_REFUSE}
iifname "{VETH_PREFIX}*" {_MARK} . ip daddr @via_only {_VIA} counter drop comment "only via a service"
iifname "{VETH_PREFIX}*" jump rules
iifname vmap @egress
oifname vmap @ingress""",
    ("chain", "input"): f"""type filter hook input priority filter; policy accept;
{_REFUSE_NODEPORT}
iifname "{VETH_PREFIX}*" ct state established,related accept
iifname "{VETH_PREFIX}*" counter drop comment "pods do not reach the node"
""",
}


def zones(state: NodeState) -> dict[str, int]:
    """Networks joined by leaked routes share a conntrack zone (a reply may come from the other one):
    the smallest VNI among them."""
    parent: dict[str, str] = {}

    def find(n: str) -> str:
        while parent.setdefault(n, n) != n:
            n = parent[n]
        return n

    for entry in state.shared.values():
        if isinstance(entry, RouteEntry) and entry.kind == "leak" and entry.target:
            parent[find(entry.network)] = find(entry.target)
    vnis = {e.ref: e.vni for e in state.shared.values() if isinstance(e, NetworkEntry)}
    groups: dict[str, list[int]] = defaultdict(list)
    for network, vni in vnis.items():
        groups[find(network)].append(vni)
    return {network: min(groups[find(network)]) & 0xFFFF or 1 for network in vnis}


def plan(state: NodeState) -> Plan:
    """Every kernel object the node's state asks for."""
    builder = _Builder(state)
    made = builder.plan
    me = state.get(("node", state.node))
    nodes = {e.name: e.address for e in state.shared.values() if isinstance(e, NodeEntry)}
    networks = {e.ref: e for e in state.shared.values() if isinstance(e, NetworkEntry)}
    zone = zones(state)
    local_address = str(me.address) if isinstance(me, NodeEntry) else ""
    for network in networks.values():
        device = vxlan_name(network.vni)
        if local_address:
            made[("vxlan", device)] = Vxlan(network.vni, local_address, node_mac(nodes[state.node]))
            for name, address in nodes.items():
                if name != state.node:
                    made[("peer", device, str(address))] = node_mac(address)
        made[("rule", network.table)] = RULE_PRIORITY
        builder.element("networks", f'"{device}"', str(network.table))
        builder.element("zones", f'"{device}"', str(zone[network.ref]))
    made[("rule", "underlay")] = RULE_PRIORITY - 1
    _veths(builder, networks, zone)
    for key, entry in state.shared.items():
        if isinstance(entry, RouteEntry) and entry.network in networks:
            _route(builder, entry, networks, nodes, state.node)
        elif isinstance(entry, ServiceEntry) and key[0] in ("service", "nodeport"):
            _service_elements(builder, key, entry)
    for key, entry in state.own.items():
        if isinstance(entry, Isolation):
            direction, where, own = str(key[0]), str(key[1]), str(key[2])
            local = state.get(("local", where, own))
            if not isinstance(local, LocalEntry) or not _v4(own):
                continue
            identity = state.shared.get(("identity", where, own))
            body = _isolation(builder, entry, direction, identity if isinstance(identity, Identity) else None)
            chain = builder.chain("in" if direction == "ingress" else "out", body)
            builder.element(direction, f'"{veth_name(local.endpoint)}"', f"jump {chain}")
    refused = [str(k[2]) for k in made if k[:2] == ("element", "refused")]
    for vip in refused if local_address else ():  # routed, so that the forward chain refuses them
        for network in networks.values():
            made[("route", network.table, f"{vip}/32")] = Route("dev", vxlan_name(network.vni))
    ordered = sorted((k, e) for k, e in state.shared.items() if k[0] == "rule" and isinstance(e, RuleEntry))
    rules = builder.chain("rules", "\n".join(filter(None, (_rule(builder, e) for _, e in ordered))))
    for base, declared in BASE.items():
        if base[0] == "chain":
            builder.chain(str(base[1]), str(declared).replace("jump rules", f"jump {rules}"))
        else:
            made[base] = declared
    return made


def _veths(builder: _Builder, networks: dict[str, NetworkEntry], zone: dict[str, int]) -> None:
    """One veth per local endpoint, holding all its addresses."""
    veths: dict[str, Veth] = {}
    for entry in builder.state.own.values():
        if isinstance(entry, LocalEntry):
            name = veth_name(entry.endpoint)
            known = veths.get(name)
            addresses = (*(known.addresses if known else ()), str(entry.address))
            veths[name] = Veth(entry.endpoint, entry.network, addresses, entry.mac)
    for name, veth in veths.items():
        builder.plan[("veth", name)] = veth
        if veth.network in networks:
            builder.element("networks", f'"{name}"', str(networks[veth.network].table))
            builder.element("zones", f'"{name}"', str(zone[veth.network]))
        for own in veth.addresses:
            if _v4(own):
                builder.element("hairpin", f"{own} . {own}")


def _route(
    builder: _Builder,
    route: RouteEntry,
    networks: dict[str, NetworkEntry],
    nodes: dict[str, Address],
    me: str,
) -> None:
    network = networks[route.network]
    key = ("route", network.table, str(route.prefix))
    if route.kind == "unreachable":
        builder.plan[key] = Route("unreachable")
    elif route.kind == "egress":
        builder.plan[key] = Route("throw")  # on to the node's own tables, out of its uplink
        builder.element("egress_networks", str(network.table))
    elif route.node == me and route.endpoint:
        builder.plan[key] = Route("dev", veth_name(route.endpoint))
    elif route.node in nodes:
        builder.plan[key] = Route("via", vxlan_name(network.vni), str(nodes[route.node]))
    if route.kind == "leak" and route.via is not None and _v4(route.prefix.network_address):
        backend = route.prefix.network_address
        builder.element("via_only", f"{network.table} . {backend}")
        builder.element("via_allowed", f"{network.table} . {backend} . {route.via}")


def _service_elements(builder: _Builder, key: Key, service: ServiceEntry) -> None:
    if key[0] == "service":
        address, protocol, port = str(key[1]), str(key[2]), int(key[3])
        if not _v4(address):
            return
        if protocol == "any":  # a floating IP of endpoints: every port to the first
            if service.targets and _v4(service.targets[0].address):
                builder.element("floating", address, str(service.targets[0].address))
            return
        chain = _service(builder, service, protocol, port)
        element = f"{address} . {protocol.lower()} . {port}"
        if chain is None:
            builder.element("rejected", element)
            builder.element("refused", address)
        else:
            builder.element("services", element, f"goto {chain}")
        return
    protocol, port = str(key[1]), int(key[2])
    chain = _service(builder, service, protocol, port)
    element = f"{protocol.lower()} . {port}"
    if chain is None:
        builder.element("nodeport_rejected", element)
    else:
        builder.element("nodeports", element, f"goto {chain}")
