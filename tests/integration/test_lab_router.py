"""The lab's outside world: a gateway router (BIRD 2) with a session to every node and an outside client
behind it (what the router does with announced floating IPs: test_lab_bgp.py)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from isthmus.lab.fabric import Fabric, ip
from tests.integration.labs import isthmus, lab, lab_exec, running

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("bird"),
    reason="needs root, nftables and BIRD 2 (scripts/bootstrap)",
)
NODES = ("node-1", "node-2", "node-3")
ROUTER, OUTSIDE = "192.168.77.1", "198.51.100.10"
FLOATING = "203.0.113.77"
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "nodeName": "node-1",
        "containers": [{"name": "web", "image": "web", "ports": [{"containerPort": 80}]}],
    },
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("router")
    (base / "pod.yaml").write_text(yaml.safe_dump(POD))
    topology = {
        "name": "r",
        "router": {"asn": 64500},
        "outside": {"address": OUTSIDE},
        "nodes": [{"name": n} for n in NODES],
        "manifests": ["pod.yaml"],
    }
    started = time.monotonic()
    with running(base, topology, "--timeout", "60") as (work, up):
        print(f"lab up with router and outside client: {time.monotonic() - started:.1f} s")
        assert f"router {ROUTER}: BIRD 2, AS 64500" in up.output
        assert f"outside client {OUTSIDE}" in up.output
        yield work


def sessions(work: Path) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = json.loads(lab(work, "status", "-o", "json").output)["router"][
        "sessions"
    ]
    return found


def test_the_nodes_peer_with_the_router(work: Path) -> None:
    found = sessions(work)
    addresses = Fabric.load(work).nodes
    assert set(found) == set(NODES)
    for node, session in found.items():
        assert (session["address"], session["asn"]) == (addresses[node], "64512")
        assert session["state"] in ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")
    assert "ROUTER PEER" in lab(work, "status").output
    ledger = json.loads(isthmus(work, "get", "nodes", "-o", "json").output)["items"]
    assert {n["metadata"]["name"] for n in ledger} == set(NODES)
    for node in ledger:
        assert node["spec"]["bgp"]["asn"] == 64512
        assert node["spec"]["bgp"]["peers"] == [{"address": ROUTER, "asn": 64500}]


def test_the_nodes_and_the_outside_client_route_through_the_router(work: Path) -> None:
    assert "default via 198.51.100.1 dev eth0" in lab_exec(work, "outside", "ip", "route").stdout
    for node in NODES:
        assert f"default via {ROUTER} dev eth0" in lab_exec(work, node, "ip", "route").stdout
    assert lab_exec(work, "router", "ip", "route", "show", "default").stdout == ""  # no way out of the lab
    sysctl = lab_exec(
        work, "router", "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.fib_multipath_hash_policy"
    )
    assert sysctl.stdout.split() == ["1", "1"]


def test_the_outside_client_reaches_the_router_and_the_nodes_but_no_pod(work: Path) -> None:
    for address in ("198.51.100.1", ROUTER, Fabric.load(work).nodes["node-2"]):
        ping = lab_exec(work, "outside", "ping", "-c", "1", "-W", "2", address)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    pods = json.loads(lab(work, "status", "-o", "json").output)["pods"]
    assert [p["phase"] for p in pods] == ["Running"]
    ping = lab_exec(work, "outside", "ping", "-c", "1", "-W", "2", pods[0]["address"])
    assert ping.returncode != 0
    assert "From 198.51.100.1" in ping.stdout and "Unreachable" in ping.stdout, ping.stdout


def test_router_routes_shows_its_bgp_and_kernel_routes(work: Path) -> None:
    shown = lab(work, "router", "routes").output
    assert "BGP routes (birdc show route all):" in shown
    kernel = shown.split("Kernel routes (ip route):\n", 1)[1]
    assert f"192.168.77.0/24 dev eth0 proto kernel scope link src {ROUTER}" in kernel
    assert "198.51.100.0/24 dev outside proto kernel scope link src 198.51.100.1" in kernel
    assert "Network not found" in lab(work, "router", "routes", FLOATING).output  # nothing announced yet


def test_bird_runs_inside_the_router_namespace(work: Path) -> None:
    """So that `lab down` ends it with the namespace's other processes, also after a crash."""
    fabric = Fabric.load(work)
    pid = (work / "router" / "bird.pid").read_text().strip()
    assert fabric.processes["bird/router"] == int(pid)
    assert pid in ip("netns", "pids", fabric.router_netns).stdout.split()
