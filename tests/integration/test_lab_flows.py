"""Flow records from real packets (`isthmus observe`) in a 3-node lab running the upstream NetworkPolicy
model: a connection a NetworkPolicy drops is recorded within a second naming that policy, an allowed one
names the rule that allowed it, a service without endpoints the refusal; under policy sets of the model,
the verdict and deciding rule recorded for every probed cell equal `isthmus trace`'s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isthmus.observe.flows import Filter, Observer
from isthmus.store import open_ledger
from tests.integration.labs import ASK, ask, isthmus, lab, running, until
from tests.integration.test_lab import NODES, _pod_ips, agree, model, write
from tests.unit.netpol_model import ALL_PODS, NAMESPACES, service_name, split
from tests.unit.test_netpol_matrix import CASES, Case, Probe

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap)"
)
TIMED = "import sys, time; print(time.time(), flush=True)\n" + ASK  # the time it connects, then ASK's answer
COMPARED = (
    "default-deny-ingress",
    "ports",
    "named-port-egress",
    "deny-egress-namespace",
    "stacked-policies-additive",
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("flows")
    topology = {"name": "flows", "nodes": [{"name": n} for n in NODES]}
    with running(base, topology, "--timeout", "60") as (work, _):
        lab(work, "apply", "-f", write(base / "model.yaml", model()), "--timeout", "60")
        yield work


@pytest.fixture
def observer(work: Path) -> Iterator[Observer]:
    """An observer that has read every record made so far."""
    ledger = open_ledger(str(work / "state"))
    try:
        watching = Observer(ledger)
        watching.poll()
        assert not watching.problems, watching.problems
        yield watching
    finally:
        ledger.close()


def _until_recorded(observer: Observer, chosen: Filter, seconds: float) -> tuple[dict[str, Any], float]:
    """The first record `chosen` matches, and the seconds it took to show."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        found = [r for r in observer.poll() if chosen.matches(r)]
        if found:
            return found[0], time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no record matching {chosen} within {seconds} s")


def _records(observer: Observer, seconds: float) -> list[dict[str, Any]]:
    """The records made within `seconds`."""
    found: list[dict[str, Any]] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        found += observer.poll()
        time.sleep(0.05)
    return found


def _policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": spec,
    }


def test_a_dropped_connection_names_its_policy_within_a_second_and_an_allowed_one_its_rule(
    work: Path, observer: Observer, tmp_path: Path
) -> None:
    only = _policy(
        "a-81-only", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": 81}]}]
    )
    path = write(tmp_path / "policy.yaml", [only])
    lab(work, "apply", "-f", path)
    try:
        address = _pod_ips(work, 4)["x_a"]
        until(lambda: ask(work, "y/b", address, 80), "failed: TimeoutError")  # the policy is in force
        observer.poll()
        argv = [sys.executable, "-m", "isthmus.cli.main", "lab", "--dir", str(work), "exec", "y/b", "--"]
        connecting = subprocess.Popen(
            [*argv, "python3", "-c", TIMED, address, "80"], stdout=subprocess.PIPE, text=True
        )
        assert connecting.stdout is not None
        started = float(connecting.stdout.readline())  # in the pod, as it connects
        dropped, _ = _until_recorded(observer, Filter(pod="x/a", port=80, verdict="dropped"), 2.0)
        seconds = time.time() - started
        assert dropped["rule"] == "x/a-81-only" and dropped["source"]["name"] == "b", dropped
        assert seconds <= 1.0, seconds
        assert connecting.communicate(timeout=10)[0].strip() == "failed: TimeoutError"
        assert ask(work, "y/b", address, 81) == "x/a"
        node = _nodes(work)["x/a"]  # the ingress rule allowed it there (y/b's node: nothing isolating it)
        recorded = [r for r in _records(observer, 1.0) if Filter(pod="x/a", port=81, node=node).matches(r)]
        allowed = recorded[0]  # then conntrack's events follow it
        assert (allowed["rule"], allowed["verdict"]) == ("x/a-81-only ingress[0]", "allowed"), allowed
        assert [(r["state"], r["source"], r["rule"]) for r in recorded] == [
            ("new", allowed["source"], allowed["rule"]),
            ("established", allowed["source"], allowed["rule"]),
            ("closed", allowed["source"], allowed["rule"]),
        ], recorded
        followed = [r for r in recorded if r["state"] != "new"]
        assert all(r["verdict"] == "allowed" for r in followed)  # the drop: nothing to follow
        metrics = json.loads(lab(work, "status", "-o", "json").output)["nodes"][node]["agent"]["metrics"]
        counted = f'isthmus_flows_total{{node="{node}",rule="x/a-81-only",verdict="dropped"}}'
        assert any(line.startswith(counted) and float(line.split()[-1]) >= 1 for line in metrics.splitlines())
        assert f'isthmus_agent_reconcile_seconds_bucket{{le="0.1",node="{node}"}}' in metrics
        latency = {
            line.split("{")[0].removeprefix("isthmus_agent_"): float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(
                ("isthmus_agent_network_programming_seconds_", "isthmus_agent_watch_lag_seconds_")
            )
        }  # the policy's change, from the ledger taking it to this node's watch, then to programming it
        assert latency["network_programming_seconds_count"] == latency["watch_lag_seconds_count"] >= 1
        assert latency["network_programming_seconds_sum"] < 5 * latency["network_programming_seconds_count"]
        assert latency["watch_lag_seconds_sum"] <= latency["network_programming_seconds_sum"]
        assert allowed["source"] | {"port": 0} == {
            "namespace": "y",
            "name": "b",
            "kind": "pod",
            "network": "isthmus-system/pods",  # the cluster's network: the model isolates by policy only
            "address": _pod_ips(work, 4)["y_b"],
            "port": 0,
        }
    finally:
        lab(work, "delete", "-f", path)


def test_a_service_without_endpoints_shows_the_refusal(
    work: Path, observer: Observer, tmp_path: Path
) -> None:
    empty = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "empty", "namespace": "x"},
        "spec": {"selector": {"pod": "nobody"}, "ports": [{"port": 80}]},
    }
    path = write(tmp_path / "empty.yaml", [empty])
    lab(work, "apply", "-f", path)
    try:
        vip = json.loads(isthmus(work, "get", "service", "empty", "-n", "x", "-o", "json").output)["spec"][
            "clusterIP"
        ]
        assert ask(work, "y/c", vip, 80) == "failed: ConnectionRefusedError"
        refused, _ = _until_recorded(observer, Filter(service="x/empty"), 1.0)
        assert (refused["verdict"], refused["rule"]) == ("dropped", "ServiceVIP x/empty"), refused
        assert refused["destination"]["address"] == vip
    finally:
        lab(work, "delete", "-f", path)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id in COMPARED])
def test_recorded_verdicts_and_rules_equal_the_trace_cell_for_cell(
    work: Path, observer: Observer, case: Case, tmp_path: Path
) -> None:
    agree(work, case, tmp_path, compare=lambda w, probe, _: _compare(w, observer, probe))


def _compare(work: Path, observer: Observer, probe: Probe) -> list[str]:
    """Probe every cell with real packets, then compare each cell's records with its trace."""
    observer.poll()
    args = ["--port", str(probe.port), "--protocol", probe.protocol, "--to", probe.to, "-o", "json"]
    lab(work, "probe", *args, *(a for ns in NAMESPACES for a in ("-n", ns)))
    time.sleep(0.5)
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in observer.poll():
        if record["protocol"] == probe.protocol and record["destination"]["port"] == probe.port:
            cells[(record["source"]["address"], record["destination"]["address"])].append(record)
    ips = _pod_ips(work, 4)
    nodes = _nodes(work)
    found = []
    for source in ALL_PODS:
        for target in ALL_PODS:
            if source == target:
                continue
            to = f"svc/{split(target)[0]}/{service_name(target)}" if probe.to == "services" else target
            traced = json.loads(
                isthmus(
                    work,
                    "trace",
                    source,
                    to,
                    "--port",
                    str(probe.port),
                    "--protocol",
                    probe.protocol,
                    "-o",
                    "json",
                ).output
            )
            want = ("allowed" if traced["verdict"] == "allow" else "dropped", traced["rule"])
            records = cells[(ips[source.replace("/", "_")], ips[target.replace("/", "_")])]
            got = _decided(records, nodes[target])
            if got != want:
                found.append(f"{probe.protocol}/{probe.port} {source} -> {to}: recorded {got}, traced {want}")
    return found


def _nodes(work: Path) -> dict[str, str]:
    """Each pod's node."""
    pods = json.loads(lab(work, "status", "-o", "json").output)["pods"]
    return {f"{p['namespace']}/{p['name']}": p["node"] for p in pods}


def _decided(records: list[dict[str, Any]], destination_node: str) -> tuple[str, str]:
    """A cell's verdict and deciding rule from its records: dropped where any node dropped it; allowed,
    the rule of the destination's node, else of the source's, else none."""
    if not records:
        return ("no record", "")
    dropped = [r for r in records if r["verdict"] == "dropped"]
    if dropped:
        return ("dropped", dropped[0]["rule"])
    ruled = sorted((r for r in records if r["rule"]), key=lambda r: r["node"] != destination_node)
    return ("allowed", ruled[0]["rule"] if ruled else "")
