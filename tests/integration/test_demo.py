"""The README's first command, `scripts/demo`, run as a user runs it (in a lab directory of its own), and
each step of its request path checked in what it prints: both clusters hold each other's routes, the
router spreads the public IP (of each family) over the 3 nginx nodes, every request from the outside
client (in IPv4, then in IPv6) comes back
through an nginx pod and a leonardo pod with data read from a PostgreSQL VM of the other cluster, and nginx
cannot reach the database."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(b) for b in ("nft", "bird", "nginx")),
    reason="needs root, nftables, BIRD 2, nginx and PostgreSQL (scripts/bootstrap dev)",
)


HOP = r"^nginx (default/nginx-\S+) -> leonardo (default/leonardo-\S+) -> database (10\.80\.0\.1[123]): (\d+) "


def test_the_demo_runs_and_every_request_reads_the_database_of_the_other_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "ISTHMUS_LAB": str(tmp_path / "lab")}
    demo, isthmus = str(ROOT / "scripts" / "demo"), str(ROOT / ".venv" / "bin" / "isthmus")
    try:
        done = subprocess.run([demo], capture_output=True, text=True, env=env, timeout=600, check=False)
        shown = done.stdout
        assert done.returncode == 0, shown[-3000:] + done.stderr[-3000:]
        vms = re.findall(
            r"^64601-\d+-10-80-0-1[123]-32$", shown, re.M
        )  # the VMs' routes, in the main cluster
        pods = re.findall(r"^64600-\d+-10-32-\d+-\d+-32$", shown, re.M)  # leonardo's, in the other one
        assert (len(vms), len(pods)) == (3, 3), shown
        assert shown.count("nexthop via 192.168.77.1") == 3  # the public IP: one next hop per nginx node
        assert shown.count("nexthop via fd00:77::") == 3  # its IPv6 one too, over the IPv6 underlay
        hops = re.findall(HOP + r"sessions stored$", shown, re.M)
        assert len(hops) == 9, shown  # 6 requests in IPv4, then 3 in IPv6
        counts = [int(h[3]) for h in hops]
        assert counts == list(range(counts[0], counts[0] + 9))  # each request a session more, read back
        assert "a node of another cluster" in shown  # the last hop goes straight to the VM's node
        assert re.search(r"^10\.80\.0\.11:5432 -> ", shown, re.M)  # nginx cannot reach the database
    finally:
        subprocess.run([isthmus, "lab", "down"], env=env, check=True, capture_output=True)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [n for n in listed.splitlines() if n.startswith("leonardo-")]  # the demo lab's prefix
