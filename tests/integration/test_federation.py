"""Two clusters, each its own ledger, each running `isthmus federation run` (a BIRD VPNv4 speaker) in a
namespace of its own, joined by a veth: a network exporting route target 64512:7 in cluster A gives its
endpoint's route to the network of cluster B that imports it, next hop A's node, in A's VNI; changing or
removing the target takes it away."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isthmus import intent
from isthmus.compile import Compiler
from isthmus.dataplane.kernel.plan import Route, plan
from isthmus.model import KINDS, ImportedRoute, parse_object
from isthmus.store import Ledger, objects, open_ledger
from tests.integration.labs import until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("bird"), reason="needs root and BIRD 2 (scripts/bootstrap)"
)


@dataclass
class Cluster:
    name: str
    netns: str
    address: str
    asn: int
    ledger: Ledger
    state: Path

    def apply(self, *docs: dict[str, Any]) -> None:
        intent.apply(self.ledger, [parse_object({"apiVersion": "isthmus.io/v1", **d}) for d in docs])

    def imported(self) -> list[ImportedRoute]:
        found = objects.list_objects(self.ledger, next(k for k in KINDS if k.kind == "ImportedRoute"))[0]
        return [r for r in found if isinstance(r, ImportedRoute)]

    def compiled(self) -> Compiler:
        return Compiler(o for info in KINDS if info.model for o in objects.list_objects(self.ledger, info)[0])


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    tag = uuid.uuid4().hex[:6]
    a, b = (
        Cluster(n, f"fed{n}{tag}", addr, asn, open_ledger(str(tmp_path / n)), tmp_path / n)
        for n, addr, asn in (("a", "10.9.0.1", 64512), ("b", "10.9.0.2", 64513))
    )
    subprocess.run(["ip", "netns", "add", a.netns], check=True)
    subprocess.run(["ip", "netns", "add", b.netns], check=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(
            ["ip", "-n", a.netns, "link", "add", "fed", "type", "veth", "peer", "fed", "netns", b.netns],
            check=True,
        )
        for one in (a, b):
            for command in (
                ["addr", "add", f"{one.address}/24", "dev", "fed"],
                ["link", "set", "fed", "up"],
                ["link", "set", "lo", "up"],
            ):
                subprocess.run(["ip", "-n", one.netns, *command], check=True)
        for one, other in ((a, b), (b, a)):
            argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(one.state), "federation", "run"]
            argv += [
                "--address",
                one.address,
                "--asn",
                str(one.asn),
                "--peer",
                f"{other.address}:{other.asn}",
            ]
            argv += ["--work", str(one.state / "federation")]
            log = (one.state / "federation.log").open("wb")
            processes.append(
                subprocess.Popen(["ip", "netns", "exec", one.netns, *argv], stdout=log, stderr=log)
            )
        yield a, b
    finally:
        for process in processes:
            process.terminate()
            process.wait(15)
        for one in (a, b):
            subprocess.run(["ip", "netns", "del", one.netns], check=False)


def test_route_targets_join_networks_of_two_clusters(clusters: tuple[Cluster, Cluster]) -> None:
    a, b = clusters
    a.apply(
        {"kind": "Tenant", "metadata": {"name": "leonardo"}},
        {"kind": "Node", "metadata": {"name": "a1"}, "spec": {"address": "10.9.0.11"}},
        {
            "kind": "VirtualNetwork",
            "metadata": {"name": "db", "namespace": "leonardo"},
            "spec": {"exportTargets": ["64512:7"]},
        },
        {
            "kind": "Subnet",
            "metadata": {"name": "db-v4", "namespace": "leonardo"},
            "spec": {"network": "db", "cidr": "10.50.0.0/24"},
        },
    )
    b.apply(
        {"kind": "Tenant", "metadata": {"name": "web"}},
        {"kind": "Node", "metadata": {"name": "b1"}, "spec": {"address": "10.9.0.21"}},
        {
            "kind": "VirtualNetwork",
            "metadata": {"name": "web", "namespace": "web"},
            "spec": {"importTargets": ["64512:7"]},
        },
    )
    a.apply(
        {
            "kind": "Endpoint",
            "metadata": {"name": "pg-1", "namespace": "leonardo"},
            "spec": {"kind": "vm", "network": "db", "node": "a1", "addresses": ["10.50.0.5"]},
        }
    )
    vni = a.compiled().state[""][("network", "leonardo/db")].vni  # type: ignore[union-attr]
    seconds = until(
        lambda: [(str(r.spec.prefix), str(r.spec.next_hop), r.spec.vni) for r in b.imported()],
        [("10.50.0.5/32", "10.9.0.11", vni)],
    )
    print(f"route in the other cluster's ledger {seconds:.2f} s after the endpoint")
    network = b.compiled().state[""][("network", "web/web")]
    made = plan(b.compiled().node_state("b1"))
    assert made[("route", network.table, "10.50.0.5/32")] == Route("via", f"isx{vni}", "10.9.0.11")  # type: ignore[union-attr]
    assert a.imported() == []  # b exports nothing
    os.kill(int((a.state / "federation" / "bird.pid").read_text()), signal.SIGKILL)  # a's speaker dies
    until(lambda: len(b.imported()), 0)  # its session, and routes, go at once
    seconds = until(lambda: len(b.imported()), 1)  # its controller starts it again
    print(f"speaker killed: its routes back {seconds:.2f} s after they went")
    changed = {
        "kind": "VirtualNetwork",
        "metadata": {"name": "db", "namespace": "leonardo"},
        "spec": {"vni": vni, "exportTargets": ["64512:8"]},
    }
    a.apply(changed)
    seconds = until(lambda: ("route", "web/web", "10.50.0.5/32") in b.compiled().state[""], False)
    print(f"target changed: route gone from the importing network after {seconds:.2f} s")
    a.apply({**changed, "spec": {"vni": vni}})
    until(b.imported, [])
