"""Federation on a lab of two clusters (one node each, a VPNv4 speaker each): how soon a VM of one cluster
reaches a VM of the other once their networks' route targets match, and is cut off once they do not.
Needs root, nftables and BIRD 2 (scripts/bootstrap)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.harness import Figures, Goal, benchmark
from bench.labs import lab, run
from isthmus.lab.fabric import Fabric

ROUNDS = 5
TOPOLOGY = {
    "clusters": [{"name": "os", "asn": 64601}],
    "nodes": [{"name": "a1"}, {"name": "b1", "cluster": "os"}],
}
CONNECT = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with socket.create_connection((sys.argv[1], 22), 0.2) as conn:
            conn.sendall(b"?")
            if conn.recv(64):
                print(time.time())
                break
    except OSError:
        time.sleep(0.02)
"""  # the wall-clock time of the first answer from ADDRESS:22, trying for SECONDS


def _side(tenant: str, cidr: str, node: str, targets: list[str]) -> list[dict[str, Any]]:
    """A tenant's network with `targets` both ways, its subnet and a VM on `node` at .10."""
    spec = {"importTargets": targets, "exportTargets": targets}
    docs: list[dict[str, Any]] = [
        {"kind": "Tenant", "metadata": {"name": tenant}},
        {"kind": "VirtualNetwork", "metadata": {"name": "net", "namespace": tenant}, "spec": spec},
        {
            "kind": "Subnet",
            "metadata": {"name": "net-v4", "namespace": tenant},
            "spec": {"network": "net", "cidr": cidr},
        },
        {
            "kind": "Endpoint",
            "metadata": {"name": "vm", "namespace": tenant},
            "spec": {"kind": "vm", "network": "net", "node": node, "addresses": [cidr.replace("0/24", "10")]},
        },
    ]
    return [{"apiVersion": "isthmus.io/v1", **d} for d in docs]


def _apply(work: Path, docs: list[dict[str, Any]], *cluster: str) -> None:
    path = work.parent / "change.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    run("lab", "--dir", str(work), "apply", "-f", str(path), *cluster, "--timeout", "30")


def _first_answer(fabric: Fabric, seconds: float) -> subprocess.Popen[str]:
    """A client in a's VM polling b's VM; it prints when it was first answered."""
    sandbox = fabric.sandbox("a", "vm")
    argv = ["ip", "netns", "exec", sandbox, sys.executable, "-c", CONNECT, "10.72.0.10", str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


@benchmark(
    "federation",
    units={"connect_median_s": "s", "connect_max_s": "s", "disconnect_median_s": "s"},
    goals=(Goal("connect_max_s", "<", 3),),
)
def federation() -> Figures:
    """Route target 64600:1 set on both networks (b's first, a's applied last, from which time counts) to
    the first TCP answer from b's VM to a's; then removed from b's network to the first failure. 5 rounds."""
    joined, cut = [], []
    with lab("fed", TOPOLOGY, _side("a", "10.71.0.0/24", "a1", [])) as (work, fabric):
        _apply(work, _side("b", "10.72.0.0/24", "b1", []), "--cluster", "os")
        for _ in range(ROUNDS):
            _apply(work, _side("b", "10.72.0.0/24", "b1", ["64600:1"]), "--cluster", "os")
            client = _first_answer(fabric, 10)
            started = time.time()
            _apply(work, _side("a", "10.71.0.0/24", "a1", ["64600:1"]))
            answered = client.communicate(timeout=20)[0].strip()
            if not answered:
                raise RuntimeError("no answer within 10 s of the route targets matching")
            joined.append(float(answered) - started)
            started = time.monotonic()
            _apply(work, _side("b", "10.72.0.0/24", "b1", []), "--cluster", "os")
            while subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    fabric.sandbox("a", "vm"),
                    sys.executable,
                    "-c",
                    CONNECT,
                    "10.72.0.10",
                    "0.3",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip():
                pass
            cut.append(time.monotonic() - started)
            _apply(work, _side("a", "10.71.0.0/24", "a1", []))
    return {
        "connect_median_s": statistics.median(joined),
        "connect_max_s": max(joined),
        "disconnect_median_s": statistics.median(cut),
    }
