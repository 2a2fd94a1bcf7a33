"""Benchmark of the node agent against a real node network namespace: one pod added with 10,000 pods
programmed (and with 100), from the ledger's change to the kernel; the initial reconcile; a restart.

The agent runs as `isthmus agent run` does: in the node's namespace (`ip netns exec`, here a worker
process: python -m bench.agent SCENARIO), with its driver on the kernel of that namespace. Everything
made is named with a unique prefix (isb<hex>-) and removed at the end, also on failure."""

from __future__ import annotations

import functools
import json
import pickle
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.compile import NODES
from bench.harness import Figures, Goal, benchmark
from bench.kube import NAMESPACES, _pod, cluster
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler
from isthmus.model import Endpoint, lookup_kind, parse_object
from isthmus.store import MemoryLedger, objects
from isthmus.store.ledger import Op

NODE, ADDRESS = "node-0", "192.0.2.10/24"  # the agent's node, as bench.kube.cluster declares it
ADDS = 20  # pods added one at a time, on the agent's node; the figures are medians
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scenario:
    """A ledger to start from, and the changes each added pod makes to it, for the worker to replay."""

    initial: list[Op]
    steps: list[list[Op]]
    local: list[str]  # endpoints on the agent's node: their veths are made before it starts
    added: list[tuple[str, str]]  # namespace, name of each added pod
    sandboxes: list[str]  # one network namespace per added pod, for its CNI ADD


@functools.cache
def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(cluster(NODES), Loader=yaml.CSafeLoader) if d]


def _scenario(namespaces: int, prefix: str) -> Scenario:
    """The bench cluster's first `namespaces` namespaces (100 pods, 10 services, 10 NetworkPolicies
    each) on 50 nodes, translated into a ledger (not measured); then ADDS pods of the first namespace
    placed on the agent's node, each joining a service and selected by a NetworkPolicy."""
    kept = {f"team-{n:03d}" for n in range(namespaces)}
    chosen = [
        parse_object(d)
        for d in _documents()
        if d["kind"] == "Node" or d["metadata"].get("namespace", d["metadata"]["name"]) in kept
    ]
    reconciler = Reconciler(MemoryLedger(), KubeConfig())
    reconciler.apply(chosen)
    ledger = reconciler.ledger
    found, revision = ledger.list("/")  # objects, their channels' copies, allocations
    endpoints = objects.list_objects(ledger, lookup_kind("Endpoint"))[0]
    local = [
        f"{e.metadata.namespace}/{e.metadata.name}"
        for e in endpoints
        if isinstance(e, Endpoint) and e.spec.node == NODE
    ]
    steps, added = [], []
    watch = ledger.watch("/", revision)
    for i in range(ADDS):
        pod = _pod("team-000", f"added-{i}", "app-3")
        pod["spec"]["nodeName"] = NODE
        reconciler.apply([parse_object(pod)])
        steps.append([(e.key, e.value or None) for e in watch.poll()])
        added.append(("team-000", f"added-{i}"))
    sandboxes = [f"{prefix}p{namespaces}-{i}" for i in range(ADDS)]
    return Scenario([(kv.key, kv.value) for kv in found], steps, local, added, sandboxes)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _measure(namespaces: int, prefix: str) -> dict[str, float]:
    """The worker's figures for one cluster size, in a node namespace of its own."""
    scenario = _scenario(namespaces, prefix)
    node = f"{prefix}node{namespaces}"
    _ip("netns", "add", node)
    _ip("-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "underlay")  # both ends inside
    _ip("-n", node, "addr", "add", ADDRESS, "dev", "eth0")
    for device in ("eth0", "underlay", "lo"):
        _ip("-n", node, "link", "set", device, "up")
    for sandbox in scenario.sandboxes:
        _ip("netns", "add", sandbox)
    with tempfile.NamedTemporaryFile(suffix=".pickle") as file:
        file.write(pickle.dumps(scenario))
        file.flush()
        argv = ["ip", "netns", "exec", node, sys.executable, "-m", "bench.agent", file.name]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the agent's worker failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def _remove(prefix: str) -> None:
    """Every namespace named with the prefix (their veths and routes go with them)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        name = line.split(" ")[0]
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@benchmark(
    "agent",
    units={
        f"{figure}_{size}": unit
        for size in ("10k", "100")
        for figure, unit in (
            ("added_pod_ms", "ms"),
            ("added_pod_kernel_ms", "ms"),
            ("cni_attach_ms", "ms"),
            ("cni_reconcile_ms", "ms"),
            ("initial_s", "s"),
            ("initial_kernel_s", "s"),
            ("restart_s", "s"),
            ("restart_kernel_s", "s"),
            ("objects", "objects"),
        )
    },
    ratios={
        "added_pod_10k_vs_100": ("added_pod_ms_10k", "added_pod_ms_100"),
        "initial_10k_vs_100": ("initial_s_10k", "initial_s_100"),
    },
    goals=(Goal("added_pod_ms_10k", "<", 50),),
)
def agent() -> Figures:
    """The node agent in a node namespace of its own, on the bench cluster (50 nodes) with 10,000 pods,
    1,000 services, 1,000 NetworkPolicies, and on its first namespace alone (100 pods): a pod added on the
    agent's node (the ledger's events to the kernel: compiler delta, plan update, the driver's apply;
    median of 20) and the kernel part of it; that pod's CNI ADD: the attach (veth pair into its sandbox)
    and the reconcile after it (the veth and the route that waited for it);
    the initial reconcile (list, compile, plan, and the kernel: one nftables transaction, links and
    routes one by one) and its kernel part; a restart (a new driver reads the kernel, a new agent lists,
    compiles, plans and compares: nothing left to apply) and its kernel part; the objects programmed.
    The local pods' veths exist before the agent starts."""
    prefix = f"isb{secrets.token_hex(3)}-"
    try:
        return {
            f"{figure}_{size}": value
            for size, namespaces in (("100", 1), ("10k", NAMESPACES))
            for figure, value in _measure(namespaces, prefix).items()
        }
    finally:
        _remove(prefix)


def _worker(path: str) -> dict[str, float]:
    """Inside the node's namespace: the agent on a ledger holding the scenario, measured."""
    from isthmus.agent.node import Agent
    from isthmus.dataplane.kernel import netlink
    from isthmus.dataplane.kernel.driver import Driver
    from isthmus.dataplane.kernel.plan import veth_name

    scenario: Scenario = pickle.loads(Path(path).read_bytes())
    ledger = MemoryLedger()
    ledger.commit({}, scenario.initial)
    ipr = netlink.connect()
    for endpoint in scenario.local:  # attached pods: their veths, the peer end left on the node
        host = veth_name(endpoint)
        ipr.link("add", ifname=host, kind="veth", peer=f"p{host[len('isv') :]}")
        ipr.link("set", index=ipr.link_lookup(ifname=host)[0], state="up")
    started = time.perf_counter()
    agent = Agent(ledger, NODE, Driver())
    initial, initial_kernel = time.perf_counter() - started, agent.metrics.value("kernel_seconds_sum")
    assert not agent.problems, agent.problems
    watch = ledger.follow(agent.positions)
    added, kernel, attach, cni = [], [], [], []
    for step, (namespace, name), sandbox in zip(
        scenario.steps, scenario.added, scenario.sandboxes, strict=True
    ):
        ledger.commit({}, step)
        events = watch.poll()
        started, programming = time.perf_counter(), agent.metrics.value("kernel_seconds_sum")
        agent.changed(events)
        added.append(time.perf_counter() - started)
        kernel.append(agent.metrics.value("kernel_seconds_sum") - programming)
        veth = agent.endpoint(namespace, name)
        assert veth is not None and agent.problems  # its route waits for its veth
        started = time.perf_counter()
        with agent.lock:
            agent.driver.attach(veth, veth_name(veth.endpoint), f"/run/netns/{sandbox}", "eth0")
            attached = time.perf_counter()
            agent.reconcile()
        attach.append(attached - started)
        cni.append(time.perf_counter() - attached)
        assert not agent.problems, agent.problems
    objects_programmed = len(agent.driver.current)
    agent.driver.close()
    started = time.perf_counter()
    restarted = Agent(ledger, NODE, Driver())
    restart = time.perf_counter() - started
    assert not restarted.problems, restarted.problems
    return {
        "added_pod_ms": statistics.median(added) * 1000,
        "added_pod_kernel_ms": statistics.median(kernel) * 1000,
        "cni_attach_ms": statistics.median(attach) * 1000,
        "cni_reconcile_ms": statistics.median(cni) * 1000,
        "initial_s": initial,
        "initial_kernel_s": initial_kernel,
        "restart_s": restart,
        "restart_kernel_s": restarted.metrics.value("kernel_seconds_sum"),
        "objects": objects_programmed,
    }


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1])))
