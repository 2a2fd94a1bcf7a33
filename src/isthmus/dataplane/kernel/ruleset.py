"""The base of the nftables table `inet isthmus`: its sets and hooked chains, and the text of a rule in
each address family. Pure text, for the planner.

A rule written for IPv4 has an IPv6 twin (`six`): `ip6` for `ip`, the `6` set of each set of addresses,
ICMPv6 for ICMP, the IPv6 gateway for the IPv4 one. Rules without an address run for both families.
Pods reach their node over IPv6 for neighbour discovery and path MTU, and at its IPv6 address when the
underlay has one."""

from __future__ import annotations

import ipaddress
import re

from isthmus.compile.state import GUARDED, Address

GATEWAY = "169.254.1.1"  # on every pod veth's host side; pods route everything to it
GATEWAY6 = "fe80::1"  # the same for IPv6, added without duplicate address detection
MARK_MASK = 0x1FFFFFF  # the bits of a mark that name a table (1000 + a 24-bit VNI)
SLOT_SHIFT, SLOTS = 25, 31  # mark bits 25-29: the egress owner a packet is steered to (node-local number)
TO_NODE = 0x80000000  # a mark bit: a pod's flow to another node's address, routed by the main table
VETH_PREFIX, VXLAN_PREFIX = "isv", "isx"
FLOW_GROUP = 100  # the NFLOG group of flow records
EVENTS = "assured,protoinfo,destroy"  # the conntrack events of a recorded connection (`ct event set`)
RECORDED = 0x40000000  # a mark bit: the packet's flow is recorded on this node (by the rule that allowed it)
FLOW_RATE = "limit rate 500/second burst 500 packets"  # per rule; beyond it, the twin rule counts
_NEIGHBOURS = "packet-too-big, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"


_FOLLOWED = f"ct event set {EVENTS}"  # conntrack tells the agent when the recorded connection is
_UNFOLLOWED = "ct state new ct event set 0x0"  # established and closed, and of no other connection


def via_key(table: int, backend: Address | str) -> str:
    """The key of the words of a via-only route (network `table`'s route to `backend`, leaked only for
    traffic to a service): its policy rule, which the `v` drop does not name."""
    return f"v{table}/{backend}"


def recorded(match: str, prefix: str, verdict: str) -> str:
    """Rules matching `match` with `verdict`: the first records the packet (NFLOG, `prefix` naming the
    deciding rule, at most FLOW_RATE; an allowed flow gets the RECORDED mark and conntrack's EVENTS),
    the second, its twin, counts what the limit left unrecorded. The verdict is the same either way."""
    mark = f" meta mark set meta mark or {RECORDED:#x} {_FOLLOWED}" if prefix.startswith("a") else ""
    logged = f'{match} {FLOW_RATE} log prefix "{prefix}" group {FLOW_GROUP}{mark} {verdict}'.strip()
    return f"{logged}\n{match} counter {verdict}".replace("  ", " ").strip()


_MARK = f"meta mark and {MARK_MASK:#x}"
_NODEPORT = "meta nfproto ipv4 meta l4proto . th dport"
_SERVICES = f"""ip daddr . meta l4proto . th dport vmap @services
fib daddr type local {_NODEPORT} vmap @nodeports
dnat ip to ip daddr map @floating"""
_REFUSE = "\n".join(
    (
        recorded(
            "meta l4proto tcp ip daddr . meta l4proto . th dport @rejected", "r", "reject with tcp reset"
        ),
        recorded("ip daddr . meta l4proto . th dport @rejected", "r", "reject"),
        recorded("ip daddr @refused", "r", "reject with icmp host-unreachable"),
    )
)
_REFUSE_NODEPORT = f"""meta l4proto tcp {_NODEPORT} @nodeport_rejected reject with tcp reset
{_NODEPORT} @nodeport_rejected reject"""
_OUTSIDE = f'iifname != "{VETH_PREFIX}*" iifname != "{VXLAN_PREFIX}*"'  # from the uplink
_VIA = f"{_MARK} . ip daddr . ct original ip daddr != @via_allowed"
_LEAVING = f"{_MARK} @egress_networks ip daddr != @internal ip daddr != @served ip daddr != @nodes"  # outside
_GUARDED = ", ".join(f"{protocol.lower()} . {port}" for protocol, port in GUARDED)
_POD = f'iifname "{VETH_PREFIX}*"'
TO_NODES = (
    "\n".join(  # a pod's packet to a node's address: refused on its infrastructure ports, or without access
        (
            recorded(
                f"{_POD} meta l4proto . th dport {{ {_GUARDED} }}", "g", 'drop comment "node infrastructure"'
            ),
            recorded(f"{_POD} {_MARK} != @node_access", "n", 'drop comment "no node access"'),
        )
    )
)
_UPLINK = f'oifname != "{VETH_PREFIX}*" oifname != "{VXLAN_PREFIX}*"'  # routed out of the node
_BASE4: dict[tuple[str, str], str] = {
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
    ("set", "outside_marks"): "ipv4_addr : mark",
    ("set", "backend_marks"): "ipv4_addr : mark",
    ("set", "internal"): "ipv4_addr; flags interval",
    ("set", "served"): "ipv4_addr",
    ("set", "nodes"): "ipv4_addr",
    ("set", "node_access"): "mark",
    ("set", "host_services"): "ipv4_addr . inet_proto . inet_service",
    ("set", "egress_marks"): "mark . ipv4_addr : mark",
    ("set", "egress_snat"): "mark . ipv4_addr : ipv4_addr",
    ("set", "egress_addresses"): "ipv4_addr",
    ("set", "routed_marks"): "ipv4_addr : mark; flags interval",
    ("set", "routed_zones"): "typeof ip daddr : ct zone; flags interval",
    ("set", "ingress"): "ifname : verdict",
    ("set", "egress"): "ifname : verdict",
    ("chain", "pre_raw"): f"""type filter hook prerouting priority raw; policy accept;
meta mark set iifname map @networks
{_POD} ip daddr @nodes ct zone set 0
{_POD} ip daddr . meta l4proto . th dport @host_services ct zone set 0
iifname "{VXLAN_PREFIX}*" ip saddr @nodes ct zone set 0
{_LEAVING} ct zone set 0
iifname "{VXLAN_PREFIX}*" {_MARK} @egress_networks ip saddr != @internal ip saddr != @served ct zone set 0
iifname "{VXLAN_PREFIX}*" fib daddr type local ct zone set 0
{_OUTSIDE} ip saddr @internal ct zone set ip daddr map @routed_zones
ct zone set iifname map @zones
{_OUTSIDE} meta mark set ip daddr map @outside_marks
{_OUTSIDE} meta mark set ip daddr map @routed_marks
{_OUTSIDE} meta mark set ip saddr map @routed_marks
iifname "{VETH_PREFIX}*" {_LEAVING} meta mark set {_MARK} . ip saddr map @egress_marks""",
    ("chain", "out_raw"): """type filter hook output priority raw; policy accept;
ct zone set oifname map @zones""",
    ("chain", "pre_route"): f"""type filter hook prerouting priority filter; policy accept;
ct state new ct direction original ct mark set {_MARK}
ct direction reply meta mark set ct mark
{_POD} ct direction original ip daddr @nodes meta mark set meta mark or {TO_NODE:#x}
{_OUTSIDE} ct direction original ct status dnat meta mark set ip daddr map @backend_marks
{_OUTSIDE} ct state new ct status dnat ct mark set {_MARK}""",
    ("chain", "out_route"): """type route hook output priority mangle; policy accept;
ct direction reply ct mark != 0 meta mark set ct mark""",
    ("chain", "pre_nat"): f"""type nat hook prerouting priority dstnat; policy accept;
{_SERVICES}""",
    ("chain", "out_nat"): f"""type nat hook output priority -100; policy accept;
{_SERVICES}""",
    ("chain", "post_nat"): f"""type nat hook postrouting priority srcnat; policy accept;
ip saddr . ip daddr @hairpin snat ip to {GATEWAY}
{_OUTSIDE} oifname != "{VETH_PREFIX}*" ct status dnat snat ip to NODE
{_POD} ip daddr @nodes {_UPLINK} masquerade
{_LEAVING} {_UPLINK} snat ip to {_MARK} . ip saddr map @egress_snat
{_LEAVING} {_UPLINK} masquerade""",
    ("chain", "forward"): f"""type filter hook forward priority filter; policy accept;
ct state established,related accept
{_UNFOLLOWED}
{recorded("ct state invalid", "i", "drop")}
{recorded("ip daddr @egress_addresses", "e", "reject")}
{_REFUSE}
{recorded(f"{_POD} {_MARK} . ip daddr @via_only {_VIA}", "v", 'drop comment "only via a service"')}
{_POD} ip daddr @nodes jump to_nodes
iifname "{VETH_PREFIX}*" jump rules
iifname vmap @egress
oifname vmap @ingress
{_POD} ct state new meta mark and {RECORDED:#x} == 0 {FLOW_RATE} log prefix "o" group {FLOW_GROUP} {_FOLLOWED}
{_OUTSIDE} oifname "{VETH_PREFIX}*" ct state new {FLOW_RATE} log prefix "o" group {FLOW_GROUP} {_FOLLOWED}""",
    ("chain", "input"): f"""type filter hook input priority filter; policy accept;
{_REFUSE_NODEPORT}
{_POD} ct state established,related accept
{_POD} {_UNFOLLOWED}
{_POD} icmpv6 type {{ {_NEIGHBOURS} }} accept
{recorded(f"{_POD} ip daddr != @nodes", "h", 'drop comment "pods reach their node on its address only"')}
{_POD} jump to_nodes
{_POD} jump rules
iifname vmap @egress
""",
    ("chain", "in_nat"): f"""type nat hook input priority 100; policy accept;
{_POD} snat ip to NODE""",
}


_PORTS = frozenset({"nodeports", "nodeport_rejected"})  # of one family (`nfproto`), though holding no address
FAMILY_SETS = _PORTS | frozenset(
    name for (kind, name), typed in _BASE4.items() if kind == "set" and re.search(r"ipv4_addr|\bip ", typed)
)


def six(text: str) -> str:
    """The IPv6 twin of IPv4 rule text (itself when it names no address)."""
    text = re.sub(r"\bip (?=saddr|daddr|to\b)", "ip6 ", text)
    text = re.sub(r"@(\w+)", lambda m: f"@{m[1]}6" if m[1] in FAMILY_SETS else m[0], text)
    text = text.replace("nfproto ipv4", "nfproto ipv6").replace(
        "icmp host-unreachable", "icmpv6 addr-unreachable"
    )
    return text.replace(GATEWAY, GATEWAY6)


def both(body: str) -> str:
    """Each line of `body`, followed by its IPv6 twin where it has one."""
    lines = body.split("\n")
    return "\n".join(t for line in lines for t in dict.fromkeys((line, six(line))))


def named(name: str, address: Address | str) -> str:
    """The set of `name`'s kind for the family of `address`."""
    return name if ipaddress.ip_address(address).version == 4 else f"{name}6"


def _twins() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for (kind, name), declared in _BASE4.items():
        if kind == "chain":
            found[(kind, name)] = both(declared)
            continue
        found[(kind, name)] = declared
        if name in FAMILY_SETS:
            found[(kind, f"{name}6")] = declared.replace("ipv4_addr", "ipv6_addr").replace("ip ", "ip6 ")
    return found


BASE = _twins()
