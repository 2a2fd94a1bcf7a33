"""Benchmarks of the Kubernetes translation: a large cluster from manifests, cold, then one pod more."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.harness import Figures, Goal, benchmark
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler
from isthmus.model import KubeObject, lookup_kind, parse_manifests
from isthmus.store import SqliteLedger

NAMESPACES, PODS, SERVICES, POLICIES = 100, 100, 10, 10  # per namespace: 10,000 pods, 1,000 services...


def _pod(namespace: str, name: str, app: str, nodes: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app, "uses": "svc-0"}},
        "spec": {
            "nodeName": f"node-{hash(name) % nodes}",
            "containers": [
                {"name": "main", "image": "nginx", "ports": [{"name": "http", "containerPort": 80}]}
            ],
        },
    }


def cluster(nodes: int = 10) -> str:
    """Manifests of 100 namespaces, each with 100 pods, 10 services and 10 NetworkPolicies, on `nodes`."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "isthmus.io/v1",
            "kind": "Node",
            "metadata": {"name": f"node-{i}"},
            "spec": {"address": f"192.0.2.{i + 10}"},
        }
        for i in range(nodes)
    ]
    for n in range(NAMESPACES):
        ns = f"team-{n:03d}"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        docs += [_pod(ns, f"pod-{p:03d}", f"app-{p % SERVICES}", nodes) for p in range(PODS)]
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{s}", "namespace": ns},
                "spec": {
                    "type": "LoadBalancer" if s == 0 else "ClusterIP",
                    "selector": {"app": f"app-{s}"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            }
            for s in range(SERVICES)
        ]
        docs += [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"allow-{s}", "namespace": ns},
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"app-{s}"}},
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {"uses": "svc-0"}}}],
                            "ports": [{"port": "http"}],
                        }
                    ],
                },
            }
            for s in range(POLICIES)
        ]
    return yaml.safe_dump_all(docs)


@benchmark(
    "kube-translate",
    units={"cold_s": "s", "added_pod_ms": "ms", "removed_pod_ms": "ms", "added_vs_cold_ratio": "ratio"},
    goals=(Goal("cold_s", "<", 20), Goal("added_pod_ms", "<", 20)),
)
def kube_translate() -> Figures:
    """10,000 pods, 1,000 services (100 LoadBalancer), 1,000 NetworkPolicies from manifests into a SQLite
    ledger, cold (parse, translate, admit, commit, statuses); then one pod added and removed at that size
    (median of 50), each from the change to its ledger commit, statuses included."""
    text = cluster()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = SqliteLedger(Path(tmp) / "ledger.sqlite")
        started = time.perf_counter()
        reconciler = Reconciler(ledger, KubeConfig())
        done = reconciler.apply(parse_manifests(text))
        cold = time.perf_counter() - started
        assert sum(a.object.kind == "Endpoint" for a in done) == NAMESPACES * PODS
        added, removed = [], []
        for i in range(50):
            pod = KubeObject.model_validate(_pod("team-050", f"extra-{i}", "app-3"))
            started = time.perf_counter()
            reconciler.apply([pod])
            added.append(time.perf_counter() - started)
            started = time.perf_counter()
            reconciler.apply(removed=[(lookup_kind("Pod"), "team-050", f"extra-{i}")])
            removed.append(time.perf_counter() - started)
        ledger.close()
    one = statistics.median(added)
    return {
        "cold_s": cold,
        "added_pod_ms": one * 1000,
        "removed_pod_ms": statistics.median(removed) * 1000,
        "added_vs_cold_ratio": one / cold,
    }
