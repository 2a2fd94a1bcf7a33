"""The seeds' LoadBalancer in a 3-node lab with a gateway router: each node's agent announces the floating
IP by BGP while it hosts a ready nginx pod, the router spreads flows over them by ECMP, scaling down and
stopping an agent withdraw routes; pods reach the outside through source NAT (to their node, or to their
namespace's egress address through its owner), the outside never reaches a pod's private address; a
routed network's blocks are announced and its pods talk through the router, with no VXLAN."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.lab.fabric import Fabric
from tests.integration.labs import STREAM, isthmus, lab, lab_exec, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("bird"),
    reason="needs root, nftables and BIRD 2 (scripts/bootstrap)",
)
NODES = ("node-1", "node-2", "node-3")
TOPOLOGY = {
    "name": "bgp",
    "router": {"asn": 64500},
    "outside": {"address": "198.51.100.10"},
    "nodes": [{"name": n} for n in NODES],
}
CONNECT = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    try:
        with socket.create_connection((sys.argv[1], 80), 1) as conn:
            conn.sendall(b"?")  # the lab's server answers at once when asked
            seen[conn.recv(64).decode()] += 1
    except OSError as exc:
        seen["failed: " + type(exc).__name__] += 1
print(json.dumps(seen))
"""
WHO = """
import socket
with socket.create_server(("0.0.0.0", 8080)) as server:
    while True:
        conn, (address, _) = server.accept()
        conn.sendall(address.encode())
        conn.close()
"""


def _nginx(nodes: tuple[str, ...]) -> list[dict[str, Any]]:
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"nginx-{node[-1]}", "labels": {"app": "nginx"}},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "name": "nginx",
                        "image": "nginx",
                        "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP"}],
                    }
                ],
            },
        }
        for node in nodes
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "nginx"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "nginx"},
            "ports": [{"name": "http", "port": 80}, {"name": "udp", "port": 80, "protocol": "UDP"}],
        },
    }
    return [*pods, service]


def _hops(fabric: Fabric, address: str) -> list[str]:
    """The router's kernel next hops to `address` (one for a plain route, several for multipath)."""
    shown = subprocess.run(
        ["ip", "-n", f"{fabric.prefix}router", "-j", "route", "show", address],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    routes = json.loads(shown or "[]")
    return sorted(h.get("gateway", "") for r in routes for h in (r.get("nexthops") or [r]))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("bgp")
    with running(base, TOPOLOGY, "--timeout", "60") as (work, _):
        (base / "nginx.yaml").write_text(yaml.safe_dump_all(_nginx(NODES)))
        lab(work, "apply", "-f", str(base / "nginx.yaml"))
        yield work


def _fip(work: Path) -> str:
    service = json.loads(isthmus(work, "get", "service", "nginx", "-o", "json").output)
    return str(service["status"]["loadBalancer"]["ingress"][0]["ip"])


def test_the_router_spreads_the_floating_ip_over_every_node_with_nginx(work: Path) -> None:
    fabric, fip = Fabric.load(work), _fip(work)
    until(lambda: _hops(fabric, fip), sorted(fabric.nodes.values()), 10)
    shown = json.loads(isthmus(work, "get", "bgp", "-o", "json").output)
    status = json.loads(lab(work, "status", "-o", "json").output)
    for node in NODES:
        assert [p["state"] for p in shown[node]["peers"]] == ["Established"]
        assert shown[node]["announced"] == [f"{fip}/32"]
        metrics = status["nodes"][node]["agent"]["metrics"]
        assert f'isthmus_bgp_session_established{{node="{node}",peer="192.168.77.1"}} 1' in metrics
        assert f'isthmus_bgp_announced_prefixes{{node="{node}"}} 1' in metrics
    bgp, kernel = lab(work, "router", "routes", fip).output.split("Kernel routes (ip route):\n", 1)
    assert bgp.count(f"{fip}/32") == 1 and bgp.count("unicast [") == len(NODES)  # one path per node
    assert kernel.count("nexthop via") == len(NODES)  # merged into one multipath route
    done = lab_exec(work, "outside", "python3", "-c", CONNECT, fip, "1000")
    seen = json.loads(done.stdout)
    assert set(seen) == {"default/nginx-1", "default/nginx-2", "default/nginx-3"}, seen
    assert min(seen.values()) >= 200, seen  # each pod at least 20 % of 1,000 connections


@contextmanager
def _outside_server(fabric: Fabric) -> Iterator[None]:
    """The outside client serves its peers' addresses on 198.51.100.10:8080."""
    server = subprocess.Popen(["ip", "netns", "exec", f"{fabric.prefix}outside", "python3", "-c", WHO])
    try:
        time.sleep(0.5)
        yield
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()


def _seen_outside(work: Path, pod: str) -> str:
    """The source address the outside client sees when `pod` connects to it."""
    probe = "import socket; print(socket.create_connection(('198.51.100.10', 8080), 2).recv(64).decode())"
    seen = lab_exec(work, pod, "python3", "-c", probe)
    return seen.stdout.strip() or seen.stderr.strip()


def test_pods_reach_the_outside_through_source_nat_and_not_the_other_way(work: Path) -> None:
    fabric = Fabric.load(work)
    with _outside_server(fabric):
        assert _seen_outside(work, "nginx-1") == fabric.nodes["node-1"]  # the node's address, not the pod's
    pod = json.loads(isthmus(work, "get", "pod", "nginx-2", "-o", "json").output)["status"]["podIP"]
    blocked = lab_exec(work, "outside", "python3", "-c", CONNECT, pod, "1")
    assert list(json.loads(blocked.stdout)) == ["failed: OSError"], blocked.stdout  # no route to it


def _shop(egress: str) -> list[dict[str, Any]]:
    """Namespace shop, with an egress address, and a pod of it on every node."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/egress-ip": egress}},
    }
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"shop-{node[-1]}", "namespace": "shop"},
            "spec": {"nodeName": node, "containers": [{"name": "shop", "image": "shop"}]},
        }
        for node in NODES
    ]
    return [namespace, *pods]


def test_a_namespace_egress_address_is_announced_by_its_owner_and_seen_outside(
    work: Path, tmp_path: Path
) -> None:
    fabric, manifests = Fabric.load(work), tmp_path / "shop.yaml"
    manifests.write_text(yaml.safe_dump_all(_shop("198.51.100.77")))  # outside the floating-IP pool
    refused = CliRunner().invoke(cli, ["lab", "--dir", str(work), "apply", "-f", str(manifests)])
    assert refused.exit_code != 0
    assert "198.51.100.77 is in no subnet of network isthmus-system/public" in refused.output
    assert "shop" not in isthmus(work, "get", "tenants").output  # nothing of it was stored
    manifests.write_text(yaml.safe_dump_all(_shop("203.0.113.200")))
    lab(work, "apply", "-f", str(manifests))
    shown = json.loads(isthmus(work, "get", "bgp", "-o", "json").output)
    owners = [n for n in NODES if "203.0.113.200/32" in shown[n]["announced"]]
    assert len(owners) == 1, shown
    until(lambda: _hops(fabric, "203.0.113.200"), [fabric.nodes[owners[0]]], 10)
    with _outside_server(fabric):
        seen = {pod: _seen_outside(work, f"shop/{pod}") for pod in ("shop-1", "shop-2", "shop-3")}
        assert set(seen.values()) == {"203.0.113.200"}, seen  # from the owner and from the other nodes
        assert _seen_outside(work, "nginx-1") == fabric.nodes["node-1"]  # other namespaces: their node
    elsewhere = next(f"shop/shop-{n[-1]}" for n in NODES if n != owners[0])
    trace = isthmus(work, "trace", elsewhere, "198.51.100.10", "--port", "8080").output
    assert f"to {owners[0]}" in trace and "-> 203.0.113.200" in trace, trace
    refused = lab_exec(work, "outside", "python3", "-c", CONNECT, "203.0.113.200", "1")
    assert list(json.loads(refused.stdout)) == ["failed: ConnectionRefusedError"], refused.stdout
    lab(work, "delete", "-f", str(manifests))
    until(lambda: _hops(fabric, "203.0.113.200"), [], 10)


def _flat() -> list[dict[str, Any]]:
    """Namespace flat with its own routed network: a client, a server behind a service and a
    NetworkPolicy that admits only the client, and another pod, on nodes 1, 2 and 3."""
    annotations = {"isthmus.io/isolation": "namespace", "isthmus.io/network-mode": "routed"}
    made: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flat", "annotations": annotations}}
    ]
    made += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": app, "namespace": "flat", "labels": {"app": app}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": app, "image": app, "ports": [{"containerPort": 80}]}],
            },
        }
        for app, node in zip(("client", "server", "other"), NODES, strict=True)
    ]
    made.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server", "namespace": "flat"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80}]},
        }
    )
    made.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "server", "namespace": "flat"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
            },
        }
    )
    return made


def _forwarded(fabric: Fabric) -> int:
    """Packets the router has forwarded (Ip: ForwDatagrams)."""
    snmp = subprocess.run(
        ["ip", "netns", "exec", f"{fabric.prefix}router", "cat", "/proc/net/snmp"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    names, values = (line.split() for line in snmp if line.startswith("Ip:"))
    return int(dict(zip(names, values, strict=True))["ForwDatagrams"])


def test_a_routed_network_goes_through_the_router_with_no_vxlan_and_policy_enforced(
    work: Path, tmp_path: Path
) -> None:
    fabric, manifests = Fabric.load(work), tmp_path / "flat.yaml"
    manifests.write_text(yaml.safe_dump_all(_flat()))
    lab(work, "apply", "-f", str(manifests))
    blocks = json.loads(isthmus(work, "get", "subnets", "-n", "flat", "-o", "json").output)["items"]
    owner = {b["spec"]["cidr"]: b["spec"]["node"] for b in blocks}
    assert sorted(owner.values()) == list(NODES), owner  # one block per node
    for block, node in owner.items():
        until(lambda b=block: _hops(fabric, b), [fabric.nodes[node]], 10)  # announced by its node
    pods = json.loads(isthmus(work, "get", "pods", "-n", "flat", "-o", "json").output)["items"]
    address = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    for pod in pods:
        block = next(
            b for b in owner if ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(b)
        )
        assert owner[block] == pod["spec"]["nodeName"]  # addressed from its node's block
    vni = json.loads(isthmus(work, "get", "vn", "pods", "-n", "flat", "-o", "json").output)["spec"]["vni"]
    for node in NODES:
        links = subprocess.run(
            ["ip", "-n", f"{fabric.prefix}{node}", "-o", "link"], capture_output=True, text=True, check=True
        )
        assert f"isx{vni}" not in links.stdout  # no VXLAN device for the routed network
    before = _forwarded(fabric)
    direct = json.loads(
        lab_exec(work, "flat/client", "python3", "-c", CONNECT, address["server"], "50").stdout
    )
    assert direct == {"flat/server": 50}
    assert _forwarded(fabric) - before >= 2 * 50 * 2  # each connection's packets, both ways, via the router
    service = json.loads(isthmus(work, "get", "service", "server", "-n", "flat", "-o", "json").output)
    vip = service["spec"]["clusterIP"]
    assert json.loads(lab_exec(work, "flat/client", "python3", "-c", CONNECT, vip, "20").stdout) == {
        "flat/server": 20
    }
    denied = json.loads(lab_exec(work, "flat/other", "python3", "-c", CONNECT, address["server"], "1").stdout)
    assert list(denied) == ["failed: TimeoutError"], denied  # the NetworkPolicy drops it
    assert json.loads(
        lab_exec(work, "flat/server", "python3", "-c", CONNECT, address["other"], "5").stdout
    ) == {"flat/other": 5}
    trace = isthmus(work, "trace", "flat/client", address["server"], "--port", "80").output
    assert "through the underlay to node-2" in trace, trace
    lab(work, "delete", "-f", str(manifests))
    for block in owner:
        until(lambda b=block: _hops(fabric, b), [], 10)


def test_an_unreachable_peer_is_reported_and_the_rest_keeps_working(work: Path, tmp_path: Path) -> None:
    fabric, fip = Fabric.load(work), _fip(work)
    peers = [{"address": "192.168.77.1", "asn": 64500}, {"address": "192.168.77.250", "asn": 64501}]
    node = {"apiVersion": "isthmus.io/v1", "kind": "Node", "metadata": {"name": "node-3"}}
    changed = tmp_path / "node.yaml"
    changed.write_text(
        yaml.safe_dump(
            {**node, "spec": {"address": fabric.nodes["node-3"], "bgp": {"asn": 64512, "peers": peers}}}
        )
    )
    isthmus(work, "apply", "-f", str(changed))

    def states() -> dict[str, str]:
        shown = json.loads(isthmus(work, "get", "bgp", "node-3", "-o", "json").output)["node-3"]
        return {p["address"]: p["state"] for p in shown.get("peers", [])}

    until(lambda: states().get("192.168.77.250", "Established") != "Established", True, 10)
    assert states()["192.168.77.1"] == "Established"  # the router's session never dropped
    assert _hops(fabric, fip) == sorted(fabric.nodes.values())
    shown = isthmus(work, "get", "bgp").output
    assert "192.168.77.250" in shown and shown.count("Established") == 3
    changed.write_text(
        yaml.safe_dump(
            {**node, "spec": {"address": fabric.nodes["node-3"], "bgp": {"asn": 64512, "peers": peers[:1]}}}
        )
    )
    isthmus(work, "apply", "-f", str(changed))
    until(lambda: list(states()), ["192.168.77.1"], 10)


def test_agents_killed_and_restarted_lose_no_packet_from_outside(work: Path) -> None:
    """SIGKILL leaves each node's BIRD announcing and its kernel forwarding; restarted agents adopt both."""
    fabric, fip = Fabric.load(work), _fip(work)
    stream = subprocess.Popen(
        ["ip", "netns", "exec", f"{fabric.prefix}outside", "python3", "-c", STREAM, fip, "400"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    for node in NODES:
        fabric.stop(f"agent/{node}", signal.SIGKILL)
    time.sleep(0.5)
    for node in NODES:
        fabric.start_agent(node)
    out, _ = stream.communicate(timeout=60)
    assert json.loads(out) == {"sent": 400, "answered": 400}
    assert _hops(fabric, fip) == sorted(fabric.nodes.values())


def test_scaling_down_and_stopping_agents_withdraw_routes(work: Path, tmp_path: Path) -> None:
    fabric, fip = Fabric.load(work), _fip(work)
    until(lambda: _hops(fabric, fip), sorted(fabric.nodes.values()), 10)
    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump_all(_nginx(("node-2", "node-3"))[:2]))
    isthmus(work, "delete", "-f", str(gone))
    seconds = until(lambda: _hops(fabric, fip), [fabric.nodes["node-1"]], 3)
    print(f"scaled to one pod: one next hop after {seconds:.2f} s")
    done = lab_exec(work, "outside", "python3", "-c", CONNECT, fip, "200")
    assert json.loads(done.stdout) == {"default/nginx-1": 200}  # none fails to the remaining pod
    fabric.stop("agent/node-1")  # a clean stop withdraws
    seconds = until(lambda: _hops(fabric, fip), [], 2)
    print(f"agent stopped: route withdrawn after {seconds:.2f} s")
    fabric.start_agent("node-1")
    until(lambda: _hops(fabric, fip), [fabric.nodes["node-1"]], 10)


def test_a_node_with_no_local_backend_forwards_to_another_unless_policy_is_local(
    work: Path, tmp_path: Path
) -> None:
    """Flows reaching a node without a backend (a route not yet withdrawn, a static route) go to a backend
    elsewhere, source NATed so that replies return through that node; with externalTrafficPolicy Local
    they are refused there."""
    fabric, fip = Fabric.load(work), _fip(work)
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump(_nginx(("node-1",))[-1]))
    lab(work, "apply", "-f", str(service))
    isthmus(work, "delete", "pod", "nginx-2", "nginx-3", "--ignore-not-found")  # nginx-1 on node-1 only
    until(lambda: _hops(fabric, fip), [fabric.nodes["node-1"]], 10)
    router = ["ip", "-n", f"{fabric.prefix}router", "route"]
    static = [f"{fip}/32", "via", fabric.nodes["node-3"], "metric", "0"]  # preferred to BIRD's
    subprocess.run([*router, "add", *static], check=True)
    try:
        done = lab_exec(work, "outside", "python3", "-c", CONNECT, fip, "100")
        assert json.loads(done.stdout) == {"default/nginx-1": 100}  # node-3 -> VXLAN -> node-1 and back
        local = _nginx(("node-1",))[-1]
        local["spec"]["externalTrafficPolicy"] = "Local"
        service.write_text(yaml.safe_dump(local))
        lab(work, "apply", "-f", str(service))
        refused = lab_exec(work, "outside", "python3", "-c", CONNECT, fip, "5")
        assert json.loads(refused.stdout) == {"failed: ConnectionRefusedError": 5}, refused.stdout
    finally:
        subprocess.run([*router, "del", *static], check=True)
    done = lab_exec(work, "outside", "python3", "-c", CONNECT, fip, "20")
    assert json.loads(done.stdout) == {"default/nginx-1": 20}  # through node-1 itself, client kept
