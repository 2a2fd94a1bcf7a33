"""IPv6 over the VXLAN overlay with an IPv4 underlay: two node namespaces joined by a veth, each with the
kernel driver holding a plan of one network's VXLAN device, the other node as its peer and the other node's
IPv6 block via that node's link-local next hop. Real pings cross the overlay, and what the kernel holds
reads back as the plan (nothing to redo on the next sync)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from isthmus.dataplane.kernel.driver import Driver, drift
from isthmus.dataplane.kernel.plan import Plan, Route, Vxlan, next_hop, node_mac

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NODES = {"a": ("10.9.6.1", "fd00:10:1::/64"), "b": ("10.9.6.2", "fd00:10:2::/64")}
TABLE, VNI = 1007, 7
DEVICE = f"isx{VNI}"


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


def _plan(me: str, other: str) -> Plan:
    mine, theirs = (ipaddress.ip_address(NODES[n][0]) for n in (me, other))
    block = ipaddress.ip_network(NODES[other][1])
    return {
        ("vxlan", DEVICE): Vxlan(VNI, str(mine), node_mac(mine)),
        ("peer", DEVICE, str(theirs)): node_mac(theirs),
        ("route", TABLE, str(block)): Route("via", DEVICE, next_hop(block, theirs)),
    }


@pytest.fixture
def nodes() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = {n: f"v6o{n}{tag}" for n in NODES}
    for name in names.values():
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(names["a"], "link", "add", "under", "type", "veth", "peer", "under", "netns", names["b"])
        for node, name in names.items():
            ip(name, "addr", "add", f"{NODES[node][0]}/24", "dev", "under")
            ip(name, "link", "set", "under", "up")
            ip(name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_ipv6_crosses_the_overlay_via_the_link_local_next_hop_of_the_other_node(
    nodes: dict[str, str],
) -> None:
    for node, other in (("a", "b"), ("b", "a")):
        driver = Driver(nodes[node])
        try:
            assert driver.sync(_plan(node, other)) == {}
        finally:
            driver.close()
        own = ipaddress.ip_network(NODES[node][1])
        ip(nodes[node], "-6", "addr", "add", f"{own[1]}/128", "dev", DEVICE, "nodad")  # an address inside
        ip(
            nodes[node],
            "-6",
            "rule",
            "add",
            "to",
            str(ipaddress.ip_network(NODES[other][1])),
            "lookup",
            str(TABLE),
        )
    route = ip(nodes["a"], "-6", "route", "show", "table", str(TABLE))
    hop = next_hop(ipaddress.ip_network(NODES["b"][1]), ipaddress.ip_address(NODES["b"][0]))
    assert f"via {hop} dev {DEVICE}" in route and hop.startswith("fe80::")
    neighbour = ip(nodes["a"], "-6", "neigh", "show", "dev", DEVICE)
    assert f"{hop} lladdr {node_mac(ipaddress.ip_address(NODES['b'][0]))} PERMANENT" in neighbour
    target = ipaddress.ip_network(NODES["b"][1])[1]
    source = ipaddress.ip_network(NODES["a"][1])[1]
    ping = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            nodes["a"],
            "ping",
            "-6",
            "-c",
            "2",
            "-W",
            "2",
            "-I",
            str(source),
            str(target),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for node, other in (("a", "b"), ("b", "a")):
        assert drift(_plan(node, other), nodes[node]) == {}  # the link-local neighbour reads as its peer's
