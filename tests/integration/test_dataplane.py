"""Real packets: two node namespaces on a switch, the real agent in each, pods attached through the real
CNI plugin, traffic over VXLAN, service DNAT and NetworkPolicy in nftables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.lab.fabric import Fabric, netns_exec
from tests.conftest import manifest
from tests.integration.labs import STREAM

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap lab)"
)
PROBE = """
import socket, sys
host, port, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
with socket.socket(socket.AF_INET, kind) as s:
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        if protocol == "UDP":
            s.send(b"?")
        print(s.recv(100).decode())
    except OSError as exc:
        print("failed:", type(exc).__name__)
"""


def _pod(name: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "web", "labels": {"app": app, "pod": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _apply(state: Path, tmp: Path, *docs: dict[str, Any]) -> None:
    path = tmp / f"{uuid.uuid4().hex}.yaml"
    path.write_text(manifest(*docs))
    result = CliRunner().invoke(cli, ["--state", str(state), "apply", "-f", str(path)])
    assert result.exit_code == 0, result.output


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Fabric, dict[str, str]]]:
    state = tmp_path / "state"
    fabric = Fabric(f"ist{uuid.uuid4().hex[:6]}-", state, tmp_path / "lab")
    nodes = {"node-1": "192.168.77.10", "node-2": "192.168.77.11"}
    docs = [
        {"apiVersion": "isthmus.io/v1", "kind": "Node", "metadata": {"name": n}, "spec": {"address": a}}
        for n, a in nodes.items()
    ]
    docs += [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}},
        _pod("a", "node-1", "web"),
        _pod("b", "node-2", "web"),
        _pod("c", "node-1", "client"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": 80}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sticky", "namespace": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"port": 8080, "targetPort": 80}],
                "sessionAffinity": "ClientIP",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": "web"},
            "spec": {
                "selector": {"app": "none"},
                "ports": [{"name": "tcp", "port": 80}, {"name": "udp", "port": 53, "protocol": "UDP"}],
            },
        },
    ]
    _apply(state, tmp_path, *docs)
    try:
        fabric.build(list(nodes))
        for node in nodes:
            fabric.start_agent(node)
        pods = {
            name: fabric.pod(node, "web", name, ["80/TCP", "80/UDP"])
            for name, node in (("a", "node-1"), ("b", "node-2"), ("c", "node-1"))
        }
        yield fabric, pods
    finally:
        fabric.destroy()
        for node in nodes:
            log = tmp_path / "lab" / f"{node}.agent.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-3000:])


def _address(state: Path, name: str) -> str:
    result = CliRunner().invoke(
        cli, ["--state", str(state), "get", "endpoint", name, "-n", "web", "-o", "json"]
    )
    return str(json.loads(result.output)["spec"]["addresses"][0])


def _vip(state: Path, name: str) -> str:
    result = CliRunner().invoke(
        cli, ["--state", str(state), "get", "servicevip", name, "-n", "web", "-o", "json"]
    )
    return str(json.loads(result.output)["spec"]["vip"])


def _probe(sandbox: str, host: str, port: int = 80, protocol: str = "TCP") -> str:
    done = netns_exec(sandbox, sys.executable, "-c", PROBE, host, str(port), protocol, timeout=10)
    return done.stdout.strip()


def test_pods_talk_across_nodes_through_services_and_policy(
    lab: tuple[Fabric, dict[str, str]], tmp_path: Path
) -> None:
    fabric, pods = lab
    state = fabric.state
    a, b = _address(state, "a"), _address(state, "b")
    assert _probe(pods["c"], a) == "web/a"  # same node
    assert _probe(pods["c"], b) == "web/b"  # across nodes, VXLAN
    assert _probe(pods["c"], b, protocol="UDP") == "web/b"
    seen = {_probe(pods["c"], _vip(state, "web"), 8080) for _ in range(30)}
    assert seen == {"web/a", "web/b"}  # DNAT spreads over backends on both nodes
    hairpin = {_probe(pods["a"], _vip(state, "web"), 8080) for _ in range(30)}
    assert hairpin == {"web/a", "web/b"}  # a backend reaches its own service, itself included
    for client in ("a", "c"):  # ClientIP affinity: each client always reaches the same backend
        assert len({_probe(pods[client], _vip(state, "sticky"), 8080) for _ in range(15)}) == 1
    nobody = _vip(state, "nobody")
    assert _probe(pods["c"], nobody) == "failed: ConnectionRefusedError"  # no endpoints: refused
    assert _probe(pods["c"], nobody, 53, "UDP") == "failed: ConnectionRefusedError"
    assert _probe(pods["c"], nobody, 81) == "failed: OSError"  # not a port of the service: unreachable
    for client in ("c", "b"):  # pods reach node addresses, their own node's and another's (nothing listens)
        assert _probe(pods[client], fabric.nodes["node-1"]) == "failed: ConnectionRefusedError"
        assert _probe(pods[client], fabric.nodes["node-1"], 179) == "failed: TimeoutError"  # BGP: dropped
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-web", "namespace": "web"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    }
    _apply(state, tmp_path, deny)
    deadline = time.monotonic() + 5
    while _probe(pods["c"], b) == "web/b" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _probe(pods["c"], b) == "failed: TimeoutError"  # c is not app=web
    assert _probe(pods["a"], b) == "web/b"  # a is
    assert _probe(pods["c"], a) == "web/a"  # a is not isolated


def _tenant(name: str, pods: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A tenant with one network on 10.100.0.0/24 and pods NAME -> (node, address)."""
    meta = {"namespace": name}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "isthmus.io/v1", "kind": "Tenant", "metadata": {"name": name}},
        {"apiVersion": "isthmus.io/v1", "kind": "VirtualNetwork", "metadata": {"name": "net", **meta}},
        {
            "apiVersion": "isthmus.io/v1",
            "kind": "Subnet",
            "metadata": {"name": "net-v4", **meta},
            "spec": {"network": "net", "cidr": "10.100.0.0/24"},
        },
    ]
    docs += [
        {
            "apiVersion": "isthmus.io/v1",
            "kind": "Endpoint",
            "metadata": {"name": pod, **meta},
            "spec": {"kind": "pod", "network": "net", "node": node, "addresses": [address]},
        }
        for pod, (node, address) in pods.items()
    ]
    return docs


def test_tenants_with_overlapping_addresses_stay_apart(
    lab: tuple[Fabric, dict[str, str]], tmp_path: Path
) -> None:
    fabric, _ = lab
    red = {"r1": ("node-1", "10.100.0.11"), "r2": ("node-2", "10.100.0.12")}
    blue = {"b1": ("node-1", "10.100.0.12"), "b2": ("node-2", "10.100.0.11"), "b3": ("node-1", "10.100.0.13")}
    _apply(fabric.state, tmp_path, *_tenant("red", red), *_tenant("blue", blue))
    sandboxes = {
        f"{tenant}/{pod}": fabric.pod(node, tenant, pod, ["80/TCP", "80/UDP"])
        for tenant, pods in (("red", red), ("blue", blue))
        for pod, (node, _) in pods.items()
    }
    assert _probe(sandboxes["red/r1"], "10.100.0.12") == "red/r2"  # across nodes, in red's VNI
    assert _probe(sandboxes["blue/b2"], "10.100.0.12") == "blue/b1"  # the same address, blue's pod
    assert _probe(sandboxes["blue/b1"], "10.100.0.11") == "blue/b2"
    assert _probe(sandboxes["red/r2"], "10.100.0.11", protocol="UDP") == "red/r1"
    assert _probe(sandboxes["red/r1"], "10.100.0.13").startswith("failed")  # blue's b3: not in red
    assert _probe(sandboxes["red/r2"], "10.100.0.13").startswith("failed")


def test_agent_killed_and_restarted_loses_no_packet(lab: tuple[Fabric, dict[str, str]]) -> None:
    fabric, pods = lab
    b = _address(fabric.state, "b")
    stream = subprocess.Popen(
        ["ip", "netns", "exec", pods["c"], sys.executable, "-c", STREAM, b, "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    fabric.stop("agent/node-1", signal.SIGKILL)  # c's node
    connections = [_probe(pods["c"], b) for _ in range(3)]  # new connections while no agent runs
    fabric.start_agent("node-1")
    connections += [_probe(pods["a"], b) for _ in range(3)]
    out, _ = stream.communicate(timeout=60)
    assert json.loads(out) == {"sent": 600, "answered": 600}
    assert connections == ["web/b"] * 6
