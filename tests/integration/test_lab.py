"""The lab as its user drives it (`isthmus lab up/apply/delete/probe/exec/status/down`), and the acceptance
test of the dataplane: on the upstream NetworkPolicy model (x, y, z / a, b, c) spread over 3 nodes, real
connections (`lab probe`) agree cell for cell with the trace (`isthmus matrix`) under many policy sets."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.labs import isthmus, lab, lab_exec, running
from tests.unit.netpol_model import ALL_PODS, NAMESPACES, model_objects, service_name, split
from tests.unit.test_netpol_matrix import CASES, Case, Probe

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap)"
)
NODES = ("node-1", "node-2", "node-3")
PORTS, PROTOCOLS = (80, 81), ("TCP", "UDP")
CHOSEN = (
    "default-deny-ingress",
    "default-deny-all",
    "nsselector-ns-label",
    "podselector-and-nsselector",
    "ports",
    "named-port-ingress",
    "named-port-egress",
    "deny-egress-namespace",
    "egress-cidr",
    "egress-cidr-except",
    "ingress-any-port-on-protocol",
    "udp-deny-egress-namespace-replies-allowed",
    "updated-pod-label-added",
    "endport-equal-to-port",
    "policies-deleted",
    "stacked-policies-additive",
)


def write(path: Path, docs: list[dict[str, Any]]) -> str:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def model(
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """The upstream model without its stand-in nodes, its pods spread over the lab's three."""
    docs = model_objects(PORTS, PROTOCOLS, pod_labels=pod_labels, namespace_labels=namespace_labels)
    pods = [d for d in docs if d["kind"] == "Pod"]
    for index, pod in enumerate(pods):
        pod["spec"]["nodeName"] = NODES[index % len(NODES)]
    return [d for d in docs if d["kind"] != "Node"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("lab")
    topology = {"name": "t", "nodes": [{"name": n} for n in NODES]}
    with running(base, topology, "--timeout", "60") as (work, up):
        assert "node node-3: 192.168.77.12 on the underlay" in up.output
        lab(work, "apply", "-f", write(base / "model.yaml", model()), "--timeout", "60")
        yield work


def test_pods_run_on_every_node_and_answer(work: Path) -> None:
    status = json.loads(lab(work, "status", "-o", "json").output)
    assert {p["node"] for p in status["pods"]} == set(NODES)
    assert {p["phase"] for p in status["pods"]} == {"Running"}
    for node in NODES:
        agent = status["nodes"][node]["agent"]
        assert agent["problems"] == {} and len(agent["endpoints"]) == 3
        assert f'isthmus_agent_reconciles_total{{node="{node}"}}' in agent["metrics"]
    shown = isthmus(work, "get", "pods", "-n", "x").output
    assert shown.count("Running") == 3
    address = next(p["address"] for p in status["pods"] if (p["namespace"], p["name"]) == ("y", "b"))
    probe = f"import socket; s = socket.create_connection(('{address}', 81), 2); print(s.recv(64).decode())"
    answer = lab_exec(work, "x/a", "python3", "-c", probe)
    assert answer.stdout.strip() == "y/b", answer.stderr


def test_deleted_pod_loses_its_sandbox(work: Path, tmp_path: Path) -> None:
    pod = next(d for d in model() if d["kind"] == "Pod" and d["metadata"]["name"] == "c")
    extra = {**pod, "metadata": {**pod["metadata"], "name": "extra"}}
    manifest = write(tmp_path / "extra.yaml", [extra])
    lab(work, "apply", "-f", manifest)
    sandboxes = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "p-x-extra" in sandboxes
    lab(work, "delete", "-f", manifest)
    sandboxes = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "p-x-extra" not in sandboxes


def _grid(data: dict[str, Any], probe: Probe) -> dict[tuple[str, str], bool]:
    """(source pod, destination pod) -> allowed; a Service s-x-a stands for pod x/a; no cell to itself."""
    names = {f"{split(p)[0]}/{service_name(p)}" if probe.to == "services" else p: p for p in ALL_PODS}
    return {
        (source, names[target]): allowed
        for source, row in data["allowed"].items()
        for target, allowed in row.items()
        if target in names and source != names[target]
    }


def _compare(work: Path, probe: Probe, family: int) -> list[str]:
    args = ["--port", str(probe.port), "--protocol", probe.protocol, "--to", probe.to, "-o", "json"]
    args += [a for ns in NAMESPACES for a in ("-n", ns)] + ["--family", str(family)]
    real = _grid(json.loads(lab(work, "probe", *args).output), probe)
    traced = _grid(json.loads(isthmus(work, "matrix", *args).output), probe)
    assert len(real) == len(traced) == len(ALL_PODS) * (len(ALL_PODS) - 1)
    return [
        f"{probe.protocol}/{probe.port} to {probe.to}: {s} -> {d}: probe {real[s, d]}, matrix {traced[s, d]}"
        for (s, d) in sorted(real)
        if real[s, d] != traced[s, d]
    ]


def _pod_ips(work: Path, family: int) -> dict[str, str]:
    """Each pod (NAMESPACE_NAME) to its address of `family`."""
    status = json.loads(lab(work, "status", "-o", "json").output)
    return {
        f"{p['namespace']}_{p['name']}": a
        for p in status["pods"]
        for a in p["addresses"]
        if ipaddress.ip_address(a).version == family
    }


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id in CHOSEN])
def test_probe_agrees_with_matrix(work: Path, case: Case, tmp_path: Path) -> None:
    agree(work, case, tmp_path)
    assert len(CHOSEN) >= 10


def agree(
    work: Path,
    case: Case,
    tmp_path: Path,
    family: int = 4,
    model: Callable[..., list[dict[str, Any]]] = model,
    compare: Callable[[Path, Probe, int], list[str]] | None = None,
) -> None:
    """Each step of `case` applied to the lab's model (made by `model`): real connections in `family`
    (`lab probe`) equal the trace (`isthmus matrix`) cell for cell, or as `compare` says."""
    applied: list[dict[str, Any]] = []
    relabelled = False
    disagreements: list[str] = []
    try:
        for index, step in enumerate(case.steps):
            if step.pod_labels is not None or step.namespace_labels is not None:
                relabelled = True
                lab(
                    work,
                    "apply",
                    "-f",
                    write(tmp_path / f"model-{index}.yaml", model(step.pod_labels, step.namespace_labels)),
                )
            if step.policies:
                docs = [p.document(_pod_ips(work, family), family) for p in step.policies]
                applied += docs
                lab(work, "apply", "-f", write(tmp_path / f"policies-{index}.yaml", docs))
            for target in step.delete:
                namespace, name = split(target)
                lab(work, "delete", "networkpolicy", name, "-n", namespace)
            for probe in step.probes:
                found = (compare or _compare)(work, probe, family)
                disagreements += [f"step {index + 1}: {d}" for d in found]
    finally:
        if applied:
            lab(work, "delete", "--ignore-not-found", "-f", write(tmp_path / "cleanup.yaml", applied))
        if relabelled:
            lab(work, "apply", "-f", write(tmp_path / "model.yaml", model()))
    assert not disagreements, "\n".join(disagreements)
