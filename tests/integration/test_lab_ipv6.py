"""The NetworkPolicy acceptance test in IPv6: the upstream model (x, y, z / a, b, c) over 3 nodes of an
IPv6-only lab and of a dual-stack lab, where real IPv6 connections (`lab probe --family 6`) equal the trace
(`isthmus matrix --family 6`) cell for cell under the policy sets of the IPv4 test (ipBlock with except
in /128 and /64). The model's Services prefer dual stack, so each answers on each family it has."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labs import lab, lab_exec, running
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
LABS = {"ipv6-only": SIX, "dual-stack": DUAL}
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
    topology = {"name": "six", "nodes": [{"name": n} for n in NODES], "kube": LABS[request.param]}
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
