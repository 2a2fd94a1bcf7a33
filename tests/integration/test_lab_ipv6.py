"""IPv6 with real packets. The NetworkPolicy acceptance test: the upstream model (x, y, z / a, b, c) over 3
nodes of an IPv6-only lab and of a dual-stack lab, where real IPv6 connections (`lab probe --family 6`) equal
the trace (`isthmus matrix --family 6`) cell for cell under the policy sets of the IPv4 test (ipBlock with
except among them). The model's Services prefer dual stack. The IPv6-only lab tunnels over the IPv4
underlay; the dual-stack lab has an IPv6 underlay beside the IPv4 one and tunnels over IPv6 (`tunnel: 6`:
IPv4 inside IPv6 VXLAN), with the router and an outside client of both families. There, Services of each
ipFamilyPolicy answer on each family they have, node ports on every node's address of each family, a
LoadBalancer's IPv6 address is on the router with one next hop per node hosting a backend and answers
from outside, pods reach the outside in IPv6 source NATed to their node or to their namespace's egress
address of that family, and a routed namespace's IPv6 blocks are announced and carry its pods' traffic
through the router."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labs import ask, isthmus, lab, lab_exec, running, until
from tests.integration.test_lab import CHOSEN, NODES, agree, write
from tests.integration.test_lab import model as model4
from tests.unit.test_netpol_matrix import CASES, Case

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap)"
)
SIX = {
    "podCidrs": ["fd00:10:32::/56"],
    "serviceCidrs": ["fd00:10:254::/112"],
    "externalPools": ["2001:db8:113::/64"],
}
DUAL = {
    "podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"],
    "serviceCidrs": ["10.254.0.0/16", "fd00:10:254::/112"],
    "externalPools": ["203.0.113.0/24", "2001:db8:113::/64"],
}
LABS: dict[str, dict[str, Any]] = {
    "ipv6-only": {"kube": SIX},
    "dual-stack": {
        "kube": DUAL,
        "underlay6": "fd00:77::/64",
        "tunnel": 6,
        "router": {"asn": 64500},
        "outside": {"address": "198.51.100.10"},
    },
}
OUTSIDE6 = "2001:db8:100::10"
UNDERLAY6 = ipaddress.ip_network("fd00:77::/64")
WHO = """
import socket
with socket.create_server(("::", 8080), family=socket.AF_INET6, dualstack_ipv6=True) as server:
    while True:
        conn, (address, *_) = server.accept()
        conn.sendall(address.removeprefix("::ffff:").encode())
        conn.close()
"""
SIX_ONLY = CHOSEN[:10]  # the IPv6-only lab runs ten of the sets, ipBlock with except among them


def model(
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """The lab's model, its Services preferring dual stack."""
    docs = model4(pod_labels, namespace_labels)
    for doc in docs:
        if doc["kind"] == "Service":
            doc["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    return docs


@pytest.fixture(scope="module", params=list(LABS))
def work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp(request.param)
    topology = {"name": "six", "nodes": [{"name": n} for n in NODES], **LABS[request.param]}
    with running(base, topology, "--timeout", "60") as (work, up):
        assert "Kubernetes pods in" in up.output and "fd00:10:32::/56" in up.output
        lab(work, "apply", "-f", write(base / "model.yaml", model()), "--timeout", "60")
        yield work


def test_pods_have_the_cluster_families_and_answer_over_ipv6(work: Path) -> None:
    status = json.loads(lab(work, "status", "-o", "json").output)
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    dual = any(":" not in p["address"] for p in pods.values())
    for pod in pods.values():
        assert [":" in a for a in pod["addresses"]] == ([False, True] if dual else [True]), pod
    address = next(a for a in pods["y/b"]["addresses"] if ":" in a)
    probe = f"import socket; s = socket.create_connection(('{address}', 81), 2); print(s.recv(64).decode())"
    answer = lab_exec(work, "x/a", "python3", "-c", probe)
    assert answer.stdout.strip() == "y/b", answer.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id in CHOSEN])
def test_ipv6_probe_agrees_with_matrix(work: Path, case: Case, tmp_path: Path) -> None:
    if "ipv6-only" in str(work) and case.id not in SIX_ONLY:
        pytest.skip("the IPv6-only lab runs ten of the sets; the dual-stack lab runs them all")
    agree(work, case, tmp_path, 6, model)


def test_the_ten_sets_include_ip_blocks_with_except() -> None:
    assert len(SIX_ONLY) == 10 and {"egress-cidr", "egress-cidr-except"} <= set(SIX_ONLY)


def _dual(work: Path) -> None:
    if "dual-stack" not in str(work):
        pytest.skip("the dual-stack lab's")


def _web(name: str, node: str, namespace: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": namespace}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "web", "ports": [{"containerPort": 80}]}],
        },
    }


def _service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec},
    }


@pytest.fixture(scope="module")
def web(work: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Namespace web: pods on node-1 and node-2, Services of each ipFamilyPolicy, a LoadBalancer."""
    _dual(work)
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}},
        _web("web-1", "node-1"),
        _web("web-2", "node-2"),
        _service("single"),
        _service("single6", ipFamilies=["IPv6"]),
        _service("prefer", ipFamilyPolicy="PreferDualStack"),
        _service("require", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"]),
        _service("lb", type="LoadBalancer", ipFamilyPolicy="PreferDualStack"),
        _service("empty", selector={"app": "none"}, ipFamilyPolicy="PreferDualStack"),
        _service("port", type="NodePort", ipFamilyPolicy="PreferDualStack"),
    ]
    path = write(tmp_path_factory.mktemp("web") / "web.yaml", docs)
    lab(work, "apply", "-f", path, "--timeout", "60")
    services = json.loads(isthmus(work, "get", "services", "-n", "web", "-o", "json").output)
    yield {s["metadata"]["name"]: s for s in services["items"]}
    lab(work, "delete", "-f", path)


@pytest.mark.parametrize(
    ("name", "families"),
    [("single", [4]), ("single6", [6]), ("prefer", [4, 6]), ("require", [6, 4]), ("lb", [4, 6])],
)
def test_services_of_each_ip_family_policy_answer_on_each_family_they_have(
    work: Path, web: dict[str, Any], name: str, families: list[int]
) -> None:
    spec = web[name]["spec"]
    assert [ipaddress.ip_address(ip).version for ip in spec["clusterIPs"]] == families
    assert spec["ipFamilies"] == [f"IPv{f}" for f in families]
    for address in spec["clusterIPs"]:
        assert ask(work, "x/a", address, 80) in ("web/web-1", "web/web-2"), address


def test_a_load_balancer_ipv6_address_has_a_next_hop_per_backend_node_and_answers_from_outside(
    work: Path, web: dict[str, Any]
) -> None:
    ingress = [i["ip"] for i in web["lb"]["status"]["loadBalancer"]["ingress"]]
    six = next(a for a in ingress if ":" in a)
    assert ipaddress.ip_address(six) in ipaddress.ip_network("2001:db8:113::/64")
    hosting = {_underlay(work)[n][1] for n in ("node-1", "node-2")}

    until(lambda: _hops6(work, f"{six}/128"), hosting, 30)
    answers = {ask(work, "outside", six, 80) for _ in range(12)}
    assert answers <= {"web/web-1", "web/web-2"} and answers, answers


def _hops6(work: Path, prefix: str) -> set[str]:
    """The router's kernel next hops to `prefix`."""
    kernel = lab(work, "router", "routes", prefix).output.split("Kernel routes", 1)[1]
    return set(re.findall(r"via (fd00:77::[0-9a-f]+)", kernel))


def _underlay(work: Path) -> dict[str, tuple[str, str]]:
    """Each node's underlay addresses: IPv4, IPv6 (of the same host number)."""
    nodes = json.loads((work / "fabric.json").read_text())["nodes"]
    return {n: (a, str(UNDERLAY6[int(ipaddress.ip_address(a)) & 0xFF])) for n, a in nodes.items()}


def test_vxlan_runs_over_the_ipv6_underlay_and_carries_both_families(work: Path) -> None:
    _dual(work)
    prefix = json.loads((work / "fabric.json").read_text())["prefix"]
    for node, (_, six) in _underlay(work).items():
        shown = subprocess.run(
            ["ip", "-n", f"{prefix}{node}", "-d", "-j", "link", "show", "type", "vxlan"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        devices = [d["linkinfo"]["info_data"] for d in json.loads(shown)]
        assert devices and {d.get("local6") for d in devices} == {six}, devices
        assert {d["port"] for d in devices} == {4789}
    status = json.loads(lab(work, "status", "-o", "json").output)
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    remote = next(p for p in pods.values() if p["node"] != pods["x/a"]["node"] and p["namespace"] in "xyz")
    for address in remote["addresses"]:  # IPv4 and IPv6, from another node
        assert ask(work, "x/a", address, 81) == f"{remote['namespace']}/{remote['name']}", address


def test_node_ports_answer_from_outside_on_every_node_address_of_each_family(
    work: Path, web: dict[str, Any]
) -> None:
    """node-3 hosts no backend: its flows go over VXLAN to node-1 or node-2, source NATed to node-3's
    address of their family so that replies come back through it."""
    port = web["port"]["spec"]["ports"][0]["nodePort"]
    for node, addresses in _underlay(work).items():
        for address in addresses:
            answers = {ask(work, "outside", address, port) for _ in range(6)}
            assert answers <= {"web/web-1", "web/web-2"} and answers, (node, address, answers)


@contextmanager
def _who(work: Path) -> Iterator[None]:
    """The outside client serves its peers' addresses on port 8080 of both families."""
    outside = json.loads((work / "fabric.json").read_text())["prefix"] + "outside"
    server = subprocess.Popen(["ip", "netns", "exec", outside, sys.executable, "-c", WHO])
    try:
        until(lambda: ask(work, "outside", "::1", 8080), "::1")
        yield
    finally:
        server.terminate()
        server.wait(5)


def test_a_namespace_egresses_from_its_address_of_each_family(work: Path, tmp_path: Path) -> None:
    _dual(work)
    egress = {4: "203.0.113.99", 6: "2001:db8:113::99"}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/egress-ip": f"{egress[4]},{egress[6]}"}},
    }
    path = write(tmp_path / "shop.yaml", [namespace, *(_web(f"shop-{n[-1]}", n, "shop") for n in NODES)])
    lab(work, "apply", "-f", path, "--timeout", "60")
    try:
        shown = json.loads(isthmus(work, "get", "bgp", "-o", "json").output)
        owners = {
            n
            for n in NODES
            for a in egress.values()
            if f"{a}/{ipaddress.ip_address(a).max_prefixlen}" in shown[n]["announced"]
        }
        assert len(owners) == 1, shown
        with _who(work):
            for node in NODES:
                seen = {
                    v: ask(work, f"shop/shop-{node[-1]}", o, 8080)
                    for v, o in ((4, "198.51.100.10"), (6, OUTSIDE6))
                }
                assert seen == egress, (node, seen)
            status = json.loads(lab(work, "status", "-o", "json").output)
            node = next(p["node"] for p in status["pods"] if p["namespace"] == "x" and p["name"] == "a")
            assert (
                ask(work, "x/a", OUTSIDE6, 8080) == _underlay(work)[node][1]
            )  # other namespaces: their node
    finally:
        lab(work, "delete", "-f", path)


def test_a_routed_namespace_announces_its_ipv6_blocks_and_talks_through_the_router(
    work: Path, tmp_path: Path
) -> None:
    _dual(work)
    annotations = {"isthmus.io/network-mode": "routed", "isthmus.io/isolation": "namespace"}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "flat", "annotations": annotations},
    }
    path = write(tmp_path / "flat.yaml", [namespace, *(_web(f"flat-{n[-1]}", n, "flat") for n in NODES[:2])])
    lab(work, "apply", "-f", path, "--timeout", "60")
    try:
        status = json.loads(lab(work, "status", "-o", "json").output)
        two = next(p for p in status["pods"] if p["name"] == "flat-2")
        six = next(a for a in two["addresses"] if ":" in a)
        block = str(ipaddress.ip_network(f"{six}/64", strict=False))
        until(lambda: _hops6(work, block), {_underlay(work)["node-2"][1]}, 30)
        before = _forwarded6(work)
        assert ask(work, "flat/flat-1", six, 80) == "flat/flat-2"
        assert _forwarded6(work) > before  # no VXLAN: through the router
    finally:
        lab(work, "delete", "-f", path)


def _forwarded6(work: Path) -> int:
    """IPv6 packets the router has forwarded (Ip6OutForwDatagrams)."""
    router = json.loads((work / "fabric.json").read_text())["prefix"] + "router"
    shown = subprocess.run(
        ["ip", "netns", "exec", router, "cat", "/proc/net/snmp6"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"Ip6OutForwDatagrams\s+(\d+)", shown)[1])  # type: ignore[index]


def test_pods_reach_the_outside_in_ipv6_through_source_nat(work: Path, web: dict[str, Any]) -> None:
    """The outside client has no route to pod addresses: its answer comes back only to the node address
    the flow was source NATed to."""
    outside = json.loads((work / "fabric.json").read_text())["prefix"] + "outside"
    argv = ["ip", "netns", "exec", outside, sys.executable, "-m", "isthmus.lab.server", "outside", "9000/TCP"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: ask(work, "web/web-1", OUTSIDE6, 9000), "outside")
        assert ask(work, "web/web-2", OUTSIDE6, 9000) == "outside"  # from node-2 too
    finally:
        server.terminate()
        server.wait(5)


def test_ipv6_refuses_a_service_without_endpoints_and_hairpins_a_pod_to_itself(
    work: Path, web: dict[str, Any]
) -> None:
    empty = next(ip for ip in web["empty"]["spec"]["clusterIPs"] if ":" in ip)
    assert ask(work, "x/a", empty, 80) == "failed: ConnectionRefusedError"  # a TCP reset, at once
    prefer = next(ip for ip in web["prefer"]["spec"]["clusterIPs"] if ":" in ip)
    until(lambda: ask(work, "web/web-1", prefer, 80), "web/web-1")  # DNAT back to itself, source NATed
