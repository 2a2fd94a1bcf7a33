"""VPNv4 and VPNv6 routes between clusters, as the federation speaker exchanges them. Pure functions.

A cluster exports each endpoint address of a network with export targets as a VPN route: route
distinguisher ASN:VNI (the network's VNI, which the importer's VXLAN needs), the /32 or /128, the endpoint's
node as next hop (kept end to end: traffic goes node to node) and the targets as route-target communities.
The BIRD configuration holds them as static routes of a vpn4 and a vpn6 table and exchanges both with the
peers. The underlay is IPv4: a VPNv6 route's next hop, which BGP carries as IPv6, is the node's IPv4
address embedded in 64:ff9b::/96 (RFC 6052), resolved through a route BIRD alone holds for that prefix.
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
STATIC = {4: "exports", 6: "exports6"}
TABLE = {4: "vpntab", 6: "vpntab6"}
EMBEDDED = ipaddress.IPv6Network("64:ff9b::/96")
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
    """The routes of the endpoints (on a node with an IPv4 address) of networks with export targets."""
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
            found.add(VpnRoute(f"{asn}:{vni}", ipaddress.ip_network(address), node, targets))
    return found


def embed(node: Address) -> ipaddress.IPv6Address:
    """A node's IPv4 address as a VPNv6 next hop."""
    return EMBEDDED[int(node)]


def _unembed(hop: Address) -> Address:
    return ipaddress.IPv4Address(int(hop) - int(EMBEDDED.network_address)) if hop in EMBEDDED else hop


def _community(target: str) -> str:
    high, _, low = target.rpartition(":")
    return f"bgp_ext_community.add((rt, {high}, {low}));"


def render(settings: Settings, routes: Iterable[VpnRoute], log: Path, device: str) -> str:
    """BIRD's configuration: `routes` as static routes of the vpn4 and vpn6 tables, offered to every peer
    with their next hop kept; what the peers offer is learned into the same tables. `device` is the
    speaker's interface on the underlay (where an embedded next hop is said to be)."""
    if '"' in str(log):
        raise ValueError(f"log path {log} contains a double quote")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", device):
        raise ValueError(f"interface {device!r}: BIRD names a next hop's interface by a plain word")
    lines = [
        "# Rendered by isthmus (isthmus.federation): the cluster's VPN speaker. Rewritten on every change.",
        f"router id {settings.router_id};",
        f'log "{log}" 1000000 "{log}.1" all;',
        'timeformat protocol "%s.%3f";',
        "vpn4 table vpntab;",
        "vpn6 table vpntab6;",
        "",
        "protocol device { }",
        "",
        "protocol static embedded { ipv6; route 64:ff9b::/96 blackhole; }  # resolves embedded next hops",
    ]
    for version in (4, 6):
        lines += [
            "",
            f"protocol static {STATIC[version]} {{",
            f"  vpn{version} {{ table {TABLE[version]}; }};",
        ]
        for route in sorted(r for r in routes if r.prefix.version == version):
            communities = " ".join(_community(t) for t in route.targets)
            hop = str(route.next_hop) if version == 4 else f"{embed(route.next_hop)}%{device} onlink"
            lines.append(f"  route {route.distinguisher} {route.prefix} via {hop} {{ {communities} }};")
        lines.append("}")
    lines += [
        "",
        "template bgp federation {",
        f"  local as {settings.asn};",
        f"  hold time {settings.hold_time};",
        f"  keepalive time {settings.hold_time // 3};",
        "  connect delay time 1;",
        "  connect retry time 5;",
        "  graceful restart off;",
        f'  vpn4 mpls {{ table vpntab; import all; export where proto = "{STATIC[4]}"; next hop keep; }};',
        f'  vpn6 mpls {{ table vpntab6; import all; export where proto = "{STATIC[6]}"; next hop keep; '
        "gateway recursive; igp table master6; };",
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
    """The routes of `show route table vpntab all` or `vpntab6` (the best path of each), with embedded
    next hops as the IPv4 addresses they embed."""
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
            hop = _unembed(ipaddress.ip_address(line.split(":", 1)[1].split()[0]))
        elif line.strip().startswith("BGP.ext_community:") and not targets:
            targets = tuple(f"{a}:{b}" for a, b in _RT.findall(line))
    done()
    return found
