"""The node speaker's BIRD configuration, rendered from its settings and the prefixes it announces (pure).

Invariants of every rendered configuration: BIRD learns nothing (`import none`) and writes nothing to the
kernel (no `protocol kernel`); each peer is offered exactly the announced prefixes of its own address
family, as blackhole routes of the static protocols `announce4` and `announce6`, with the node itself as
next hop. The BGP protocols depend on the settings only, so a change of prefixes reconfigures the static
protocols and never restarts a session. Graceful restart is off: when the speaker dies, its peers drop its
routes at once instead of keeping them stale. The same inputs give the same text."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from isthmus.model.meta import IPAddress
from isthmus.model.network import BgpPeer

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
STATIC = {4: "announce4", 6: "announce6"}
HOLD_MIN = 3


@dataclass(frozen=True)
class Settings:
    """What the node's speaker is: its router id (the node's address; of an IPv6 address its low 32 bits),
    its AS, its peers (at least one, each address once) and the hold time it offers (BIRD takes the
    lower of both ends'; keepalives every third of it)."""

    address: IPAddress
    asn: int
    peers: tuple[BgpPeer, ...]
    hold_time: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.asn <= 2**32 - 1:
            raise ValueError(f"local AS {self.asn} is out of range (1-4294967295)")
        if not self.peers:
            raise ValueError("a BGP speaker needs at least one peer")
        addresses = [p.address for p in self.peers]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"peers repeat an address: {', '.join(map(str, addresses))}")
        for peer in self.peers:
            address = peer.address
            if (
                address.is_link_local
                or address.is_multicast
                or address.is_unspecified
                or address == self.address
            ):
                raise ValueError(f"peer {address}: not a usable neighbour address")
        if self.router_id == ipaddress.IPv4Address(0):
            raise ValueError(f"node address {self.address} gives router id 0.0.0.0")
        if not HOLD_MIN <= self.hold_time <= 65535:
            raise ValueError(f"hold time {self.hold_time} is out of range ({HOLD_MIN}-65535 s)")

    @property
    def router_id(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(int(self.address) & 0xFFFFFFFF)


def peer_name(address: IPAddress) -> str:
    """The BGP protocol's name: one per address (`peer_10_0_0_1`, `peer_2001_db8__1`)."""
    return "peer_" + str(address).replace(".", "_").replace(":", "_")


def render(settings: Settings, prefixes: Iterable[Prefix], log: Path) -> str:
    """BIRD's configuration for `settings` announcing `prefixes`; BIRD logs to `log` (1 MB, one old
    file kept)."""
    if '"' in str(log):
        raise ValueError(f"log path {log} contains a double quote")
    by_family: dict[int, set[Prefix]] = {4: set(), 6: set()}
    for prefix in prefixes:
        by_family[prefix.version].add(prefix)
    lines = [
        "# Rendered by isthmus (isthmus.bgp): the node's BGP speaker. Rewritten on every change.",
        f"router id {settings.router_id};",
        f'log "{log}" 1000000 "{log}.1" all;',
        'timeformat protocol "%s.%3f";',
        "",
        "protocol device { }",
    ]
    for version, name in STATIC.items():
        lines += ["", f"protocol static {name} {{", f"  ipv{version};"]
        ordered = sorted(by_family[version], key=lambda p: (int(p.network_address), p.prefixlen))
        lines += [f"  route {p} blackhole;" for p in ordered]
        lines.append("}")
    lines += [
        "",
        "template bgp isthmus_peer {",
        f"  local as {settings.asn};",
        f"  hold time {settings.hold_time};",
        f"  keepalive time {settings.hold_time // 3};",
        "  connect delay time 1;",
        "  connect retry time 5;",
        "  error wait time 5, 60;",
        "  graceful restart off;",
        "}",
    ]
    for peer in sorted(settings.peers, key=lambda p: (p.address.version, int(p.address))):
        version = peer.address.version
        lines += [
            "",
            f"protocol bgp {peer_name(peer.address)} from isthmus_peer {{",
            f"  neighbor {peer.address} as {peer.asn};",
            f'  ipv{version} {{ import none; export where proto = "{STATIC[version]}"; next hop self; }};',
            "}",
        ]
    return "\n".join(lines) + "\n"
