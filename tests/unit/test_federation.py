"""The VPNv4 routes a cluster exports, BIRD's configuration holding them, and the routes read back."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from isthmus.bgp.config import Settings
from isthmus.federation.vpn import VpnRoute, exported, parse_routes, render
from isthmus.model import parse_object
from isthmus.model.network import BgpPeer
from tests.unit.test_compile import _meta

SHOWN = """Table vpntab:
64512:4096 10.50.0.5/32 unicast [peer_10_9_0_1 11:14:18.067 from 10.9.0.1] * (100) [AS64512i]
\tvia 10.9.0.11 on fed
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64512
\tBGP.next_hop: 10.9.0.11
\tBGP.local_pref: 100
\tBGP.ext_community: (rt, 64512, 7) (rt, 10.0.0.1, 9)
\tBGP.mpls_label_stack: 3
64512:4097 10.50.1.0/24 unicast [peer_10_9_0_1 11:14:18.067 from 10.9.0.1] * (100) [AS64512i]
\tvia 10.9.0.12 on fed
\tBGP.next_hop: 10.9.0.12
\tBGP.ext_community: (rt, 64512, 8)
"""


def test_routes_learned_are_read_with_their_distinguisher_next_hop_and_targets() -> None:
    assert parse_routes(SHOWN) == [
        VpnRoute(
            "64512:4096",
            ipaddress.ip_network("10.50.0.5/32"),
            ipaddress.ip_address("10.9.0.11"),
            ("64512:7", "10.0.0.1:9"),
        ),
        VpnRoute(
            "64512:4097",
            ipaddress.ip_network("10.50.1.0/24"),
            ipaddress.ip_address("10.9.0.12"),
            ("64512:8",),
        ),
    ]
    assert parse_routes(SHOWN)[0].vni == 4096


def test_endpoints_of_exporting_networks_are_announced_from_their_nodes(tmp_path: Path) -> None:
    docs = [
        {"kind": "Node", "metadata": _meta("a1"), "spec": {"address": "10.9.0.11"}},
        {
            "kind": "VirtualNetwork",
            "metadata": _meta("db", "x"),
            "spec": {"vni": 4096, "exportTargets": ["64512:7"]},
        },
        {"kind": "VirtualNetwork", "metadata": _meta("private", "x"), "spec": {"vni": 4097}},
        {
            "kind": "Endpoint",
            "metadata": _meta("pg", "x"),
            "spec": {"network": "db", "node": "a1", "addresses": ["10.50.0.5", "fd00:50::5"]},
        },
        {
            "kind": "Endpoint",
            "metadata": _meta("unbound", "x"),
            "spec": {"network": "db", "addresses": ["10.50.0.6"]},
        },
        {
            "kind": "Endpoint",
            "metadata": _meta("hidden", "x"),
            "spec": {"network": "private", "node": "a1", "addresses": ["10.51.0.5"]},
        },
    ]
    routes = exported([parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs], 64512)
    assert routes == {
        VpnRoute(
            "64512:4096",
            ipaddress.ip_network(prefix),
            ipaddress.ip_address("10.9.0.11"),
            ("64512:7",),
        )
        for prefix in ("10.50.0.5/32", "fd00:50::5/128")
    }
    settings = Settings(ipaddress.ip_address("10.9.0.1"), 64512, (BgpPeer(address="10.9.0.2", asn=64513),))
    text = render(settings, routes, tmp_path / "bird.log", "eth0")
    assert "route 64512:4096 10.50.0.5/32 via 10.9.0.11 { bgp_ext_community.add((rt, 64512, 7)); };" in text
    assert (  # VPNv6 over the IPv4 underlay: the node's address embedded in 64:ff9b::/96
        "route 64512:4096 fd00:50::5/128 via 64:ff9b::a09:b%eth0 onlink "
        "{ bgp_ext_community.add((rt, 64512, 7)); };" in text
    )
    assert "next hop keep" in text and "neighbor 10.9.0.2 as 64513;" in text
