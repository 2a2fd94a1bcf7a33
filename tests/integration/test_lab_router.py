"""The lab's outside world: a gateway router (BIRD 2) with a session to every node and an outside client
behind it. Before the agents speak BGP, stand-in speakers (BIRD in node namespaces, started here) announce
one address from three nodes: the router's kernel holds one route with a next hop per node, its layer-4
hash spreads flows over all of them, and a speaker that stops takes its next hop away."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
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


def next_hops(work: Path, prefix: str) -> list[str]:
    """The gateways of the router's kernel route to `prefix` (none when it has no route)."""
    shown = lab_exec(work, "router", "ip", "-j", "route", "show", prefix)
    assert shown.returncode == 0, shown.stderr
    return sorted(
        hop["gateway"] for route in json.loads(shown.stdout) for hop in route.get("nexthops", [route])
    )


def commands(netns: str) -> set[str]:
    """The names of the processes inside `netns`."""
    found = set()
    for pid in ip("netns", "pids", netns).stdout.split():
        with contextlib.suppress(OSError):  # ended meanwhile
            found.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return found


def wait_for(what: Callable[[], bool], timeout: float = 20.0) -> float:
    """Seconds until `what` holds; fails the test after `timeout`."""
    started = time.monotonic()
    while not what():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:.0f} s", pytrace=False)
        time.sleep(0.2)
    return time.monotonic() - started


class Speakers:
    """Stand-in BGP speakers, one BIRD per node namespace announcing FLOATING (next hop self), by PID."""

    def __init__(self, work: Path, directory: Path) -> None:
        self.fabric, self.directory = Fabric.load(work), directory
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        address = self.fabric.nodes[node]
        files = {what: self.directory / f"{node}.{what}" for what in ("conf", "ctl", "pid", "log")}
        files["conf"].write_text(
            f"router id {address};\nprotocol device {{ }}\n"
            f"protocol static {{ ipv4; route {FLOATING}/32 unreachable; }}\n"
            f"protocol bgp uplink {{ local {address} as 64512; neighbor {ROUTER} as 64500; "
            "connect delay time 1; ipv4 { import none; export all; next hop self; }; }\n"
        )
        bird = ["bird", "-f", "-c", str(files["conf"]), "-s", str(files["ctl"]), "-P", str(files["pid"])]
        with files["log"].open("ab") as log:
            self.running[node] = subprocess.Popen(
                ["ip", "netns", "exec", self.fabric.node_netns(node), *bird], stdout=log, stderr=log
            )

    def stop(self, node: str) -> None:
        process = self.running.pop(node)
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def speakers(work: Path, tmp_path: Path) -> Iterator[Speakers]:
    started = Speakers(work, tmp_path)
    yield started
    for node in list(started.running):
        started.stop(node)


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


def spread(work: Path, directory: Path, flows: int) -> Counter[str]:
    """The next hop the router picks for each of `flows` TCP flows from the outside client to FLOATING."""
    batch = directory / "flows"
    batch.write_text(
        "".join(
            f"route get {FLOATING} from {OUTSIDE} iif outside ipproto tcp sport {20000 + i} dport 80\n"
            for i in range(flows)
        )
    )
    shown = lab_exec(work, "router", "ip", "-batch", str(batch))
    assert shown.returncode == 0, shown.stderr
    return Counter(re.findall(r" via (\S+) ", shown.stdout))


def test_one_multipath_route_per_announced_address_loses_a_withdrawn_next_hop(
    work: Path, speakers: Speakers, tmp_path: Path
) -> None:
    fabric = Fabric.load(work)
    if any("bird" in commands(fabric.node_netns(n)) for n in NODES):
        pytest.skip("the agents run their own BGP speakers: a stand-in would take their place")
    addresses = fabric.nodes
    for node in NODES:
        speakers.start(node)
    took = wait_for(lambda: next_hops(work, FLOATING) == sorted(addresses.values()))
    print(f"three speakers to one route with three next hops: {took:.1f} s")
    assert {s["state"] for s in sessions(work).values()} == {"Established"}
    shown = lab(work, "router", "routes", FLOATING).output
    bgp, kernel = shown.split("Kernel routes (ip route):\n", 1)
    assert bgp.count(f"{FLOATING}/32") == 1 and bgp.count("unicast [") == len(NODES)
    assert all(f"[{node} " in bgp and f"via {addresses[node]} on eth0" in bgp for node in NODES)
    assert kernel.count("nexthop via") == len(NODES)
    chosen = spread(work, tmp_path, 1000)
    assert set(chosen) == set(addresses.values()) and min(chosen.values()) > 200, chosen
    speakers.stop("node-2")
    took = wait_for(lambda: next_hops(work, FLOATING) == [addresses["node-1"], addresses["node-3"]])
    print(f"a speaker stopped to its next hop withdrawn: {took:.1f} s")
    assert sessions(work)["node-2"]["state"] != "Established"
