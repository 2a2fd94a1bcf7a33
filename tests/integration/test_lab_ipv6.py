"""IPv6 with real packets. The NetworkPolicy acceptance test: the upstream model (x, y, z / a, b, c) over 3
nodes of an IPv6-only lab and of a dual-stack lab, where real IPv6 connections (`lab probe --family 6`) equal
the trace (`isthmus matrix --family 6`) cell for cell under the policy sets of the IPv4 test (ipBlock with
except among them). The model's Services prefer dual stack. In the dual-stack lab (an IPv6 underlay beside
the IPv4 one, the router and an outside client of both families): Services of each ipFamilyPolicy answer
on each family they have, a LoadBalancer's IPv6 address is on the router with one next hop per node
hosting a backend and answers from outside, and pods reach the outside in IPv6, source NATed."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
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
        "router": {"asn": 64500},
        "outside": {"address": "198.51.100.10"},
    },
}
OUTSIDE6 = "2001:db8:100::10"
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


def _web(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "web", "labels": {"app": "web"}},
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
    status = json.loads(lab(work, "status", "-o", "json").output)
    addresses = {n: ipaddress.ip_address(a["address"]) for n, a in status["nodes"].items()}
    hosting = {
        str(ipaddress.ip_network("fd00:77::/64")[int(addresses[n]) & 0xFF]) for n in ("node-1", "node-2")
    }

    def hops() -> set[str]:
        kernel = lab(work, "router", "routes", f"{six}/128").output.split("Kernel routes", 1)[1]
        return set(re.findall(r"via (fd00:77::[0-9a-f]+)", kernel))

    until(hops, hosting, 30)
    answers = {ask(work, "outside", six, 80) for _ in range(12)}
    assert answers <= {"web/web-1", "web/web-2"} and answers, answers


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
