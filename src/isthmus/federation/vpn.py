"""VPNv4 routes between clusters, as the federation speaker exchanges them. Pure functions.

A cluster exports each endpoint address of a network with export targets as a VPNv4 route: route
distinguisher ASN:VNI (the network's VNI, which the importer's VXLAN needs), the /32, the endpoint's node as
next hop (kept end to end: traffic goes node to node) and the targets as route-target communities. The
BIRD configuration holds them as static routes of a vpn4 table and exchanges that table with the peers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from isthmus.bgp.config import Settings, peer_name
from isthmus.model import Endpoint, Node, Object, VirtualNetwork, split_ref

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
STATIC = "exports"
_ROUTE = re.compile(r"^(\S+:\S+) (\S+/\d+)\s")
_RT = re.compile(r"\(rt, ([^,]+), (\d+)\)")


@dataclass(frozen=True, order=True)
class VpnRoute:
    distinguisher: str  # ASN:VNI of the exporting network
    prefix: Prefix
    next_hop: Address
    targets: tuple[str, ...]

    @property
    def vni(self) -> int:
        return int(self.distinguisher.rpartition(":")[2])


def exported(objects: Iterable[Object], asn: int) -> set[VpnRoute]:
    """The routes of the endpoints (IPv4, on a node) of networks with export targets."""
    networks: dict[str, tuple[int, tuple[str, ...]]] = {}
    nodes: dict[str, Address] = {}
    endpoints: list[Endpoint] = []
    for obj in objects:
        if isinstance(obj, VirtualNetwork) and obj.spec.export_targets and obj.spec.vni is not None:
            ref = f"{obj.metadata.namespace}/{obj.metadata.name}"
            networks[ref] = (obj.spec.vni, tuple(sorted(obj.spec.export_targets)))
        elif isinstance(obj, Node):
            nodes[obj.metadata.name] = obj.spec.address
        elif isinstance(obj, Endpoint) and obj.spec.node is not None:
            endpoints.append(obj)
    found = set()
    for endpoint in endpoints:
        ns, name = split_ref(endpoint.spec.network, endpoint.metadata.namespace)
        network, node = networks.get(f"{ns}/{name}"), nodes.get(endpoint.spec.node or "")
        if network is None or node is None or node.version != 4:
            continue
        vni, targets = network
        for address in endpoint.spec.addresses:
            if address.version == 4:
                found.add(VpnRoute(f"{asn}:{vni}", ipaddress.ip_network(address), node, targets))
    return found


def _community(target: str) -> str:
    high, _, low = target.rpartition(":")
    return f"bgp_ext_community.add((rt, {high}, {low}));"


def render(settings: Settings, routes: Iterable[VpnRoute], log: Path) -> str:
    """BIRD's configuration: `routes` as static routes of the vpn4 table, offered to every peer with their
    next hop kept; what the peers offer is learned into the same table."""
    if '"' in str(log):
        raise ValueError(f"log path {log} contains a double quote")
    lines = [
        "# Rendered by isthmus (isthmus.federation): the cluster's VPNv4 speaker. Rewritten on every change.",
        f"router id {settings.router_id};",
        f'log "{log}" 1000000 "{log}.1" all;',
        'timeformat protocol "%s.%3f";',
        "vpn4 table vpntab;",
        "",
        "protocol device { }",
        "",
        f"protocol static {STATIC} {{",
        "  vpn4 { table vpntab; };",
    ]
    for route in sorted(routes):
        communities = " ".join(_community(t) for t in route.targets)
        lines.append(
            f"  route {route.distinguisher} {route.prefix} via {route.next_hop} {{ {communities} }};"
        )
    lines += [
        "}",
        "",
        "template bgp federation {",
        f"  local as {settings.asn};",
        f"  hold time {settings.hold_time};",
        f"  keepalive time {settings.hold_time // 3};",
        "  connect delay time 1;",
        "  connect retry time 5;",
        "  graceful restart off;",
        f'  vpn4 mpls {{ table vpntab; import all; export where proto = "{STATIC}"; next hop keep; }};',
        "}",
    ]
    for peer in sorted(settings.peers, key=lambda p: int(p.address)):
        lines += [
            "",
            f"protocol bgp {peer_name(peer.address)} from federation {{",
            f"  neighbor {peer.address} as {peer.asn};",
            "}",
        ]
    return "\n".join(lines) + "\n"


def parse_routes(text: str) -> list[VpnRoute]:
    """The routes of `show route table vpntab all` (the best path of each)."""
    found: list[VpnRoute] = []
    current: tuple[str, Prefix] | None = None
    hop: Address | None = None
    targets: tuple[str, ...] = ()

    def done() -> None:
        if current is not None and hop is not None and targets:
            found.append(VpnRoute(current[0], current[1], hop, targets))

    for line in text.splitlines():
        header = _ROUTE.match(line)
        if header:
            done()
            current, hop, targets = (header[1], ipaddress.ip_network(header[2])), None, ()
        elif line.strip().startswith("BGP.next_hop:") and hop is None:
            hop = ipaddress.ip_address(line.split(":", 1)[1].split()[0])
        elif line.strip().startswith("BGP.ext_community:") and not targets:
            targets = tuple(f"{a}:{b}" for a, b in _RT.findall(line))
    done()
    return found
