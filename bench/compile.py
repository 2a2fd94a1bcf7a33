"""Benchmarks of the compiler and the trace driver at 10,000 pods, 1,000 services, 1,000 policies."""

from __future__ import annotations

import copy
import gc
import statistics
import time
import tracemalloc

from bench.harness import Figures, Goal, benchmark
from bench.kube import NAMESPACES, PODS, _pod, cluster
from isthmus.compile import Compiler
from isthmus.dataplane.trace import Tracer
from isthmus.dataplane.trace.matrix import matrix
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler
from isthmus.model import KubeObject, Object, lookup_kind, parse_manifests
from isthmus.store import MemoryLedger, objects

NODES = 50


def _intent() -> tuple[Reconciler, list[Object]]:
    """The bench cluster translated into a ledger (not measured), and what the compiler reads of it."""
    reconciler = Reconciler(MemoryLedger(), KubeConfig())
    reconciler.apply(parse_manifests(cluster(NODES)))
    found: list[Object] = []
    for kind in Compiler.KINDS:
        found += objects.list_objects(reconciler.ledger, lookup_kind(kind))[0]
    return reconciler, found


def _node_bytes(compiler: Compiler) -> int:
    """Memory of one node's compiled state, copied into plain tables as an agent would hold it."""
    state = compiler.node_state(compiler.nodes()[0])
    gc.collect()
    tracemalloc.start()
    held = copy.deepcopy(dict(state.items()))
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held) == len(state)
    return size


@benchmark(
    "compile",
    units={
        "full_compile_s": "s",
        "added_pod_ms": "ms",
        "policy_changed_ms": "ms",
        "matrix_1000x1000_s": "s",
        "node_bytes_per_pod": "B",
        "compiler_bytes_per_pod": "B",
        "added_vs_full_ratio": "ratio",
    },
    goals=(
        Goal("full_compile_s", "<", 10),
        Goal("added_pod_ms", "<", 50),
        Goal("policy_changed_ms", "<", 50),
        Goal("matrix_1000x1000_s", "<", 10),
        Goal("node_bytes_per_pod", "<", 2048),
    ),
)
def compile_and_trace() -> Figures:
    """10,000 pods, 1,000 services, 1,000 NetworkPolicies on 50 nodes, as the Kubernetes translation
    stores them: a full compile; one pod added (its endpoint and the VIP whose backends it joins, as the
    ledger changes) and one policy changed, each to its delta (median of 20); the 1,000 x 1,000 matrix of
    10 namespaces' pods; memory per pod of one node's compiled state (what its agent holds: entries,
    keys, tables; nearly all for remote pods), and of the whole compiler (every node's state and the
    bookkeeping of its units)."""
    reconciler, found = _intent()
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    compiler = Compiler(found)
    full = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    added, changed = [], []
    for i in range(20):
        done = reconciler.apply([KubeObject.model_validate(_pod("team-050", f"extra-{i}", "app-3", NODES))])
        started = time.perf_counter()
        compiler.change([a.object for a in done if a.action != "unchanged"])
        added.append(time.perf_counter() - started)
        policy = KubeObject.model_validate(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "allow-1", "namespace": "team-020"},
                "spec": {"podSelector": {"matchLabels": {"app": f"app-{1 + i % 2}"}}, "ingress": [{}]},
            }
        )
        started = time.perf_counter()
        compiler.change([policy])
        changed.append(time.perf_counter() - started)
    started = time.perf_counter()
    result = matrix(Tracer(compiler), 80, "TCP", "pods", [f"team-{n:03d}" for n in range(10)])
    grid = time.perf_counter() - started
    assert len(result["sources"]) == len(result["destinations"]) == 1000
    one = statistics.median(added)
    return {
        "full_compile_s": full,
        "added_pod_ms": one * 1000,
        "policy_changed_ms": statistics.median(changed) * 1000,
        "matrix_1000x1000_s": grid,
        "node_bytes_per_pod": _node_bytes(compiler) / (NAMESPACES * PODS),
        "compiler_bytes_per_pod": held / (NAMESPACES * PODS),
        "added_vs_full_ratio": one / full,
    }
