"""The scale simulator: N simulated nodes against a real etcd, each running the agent's real slice logic,
compiler and planner (no kernel: `PlanOnly` holds the plan), while pods churn at 30 changes a second.

    python -m bench scale                       sizes from ISTHMUS_SCALE_SIZES (default 100,300,1000)
    python -m bench.scale worker URL FILE NODE...   (internal) a process of simulated agents
    python -m bench.scale probe URL NODE            (internal) one simulated agent alone, for its RSS

The cluster: N nodes, 30 pods a node, namespaces of 30 pods with namespace isolation (each its own
network, growing by per-node blocks), 3 services and a NetworkPolicy (ingress to app-0 from the namespace's
pods) each; pods placed uniformly at random. Pods are created and deleted through the Kubernetes
reconciler (admission, IPAM, channels: the real write path).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.etcdenv import EtcdCluster

from bench.harness import Figures, Goal, benchmark
from isthmus.agent.node import Agent
from isthmus.compile.source import compiled
from isthmus.dataplane.kernel.plan import Planner, Route
from isthmus.intent import Applied
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler
from isthmus.kube.view import node_name
from isthmus.model import KubeObject, Object, lookup_kind, parse_object
from isthmus.store import Credentials, Ledger, MemoryLedger, open_store

ROOT = Path(__file__).resolve().parent.parent
PODS_PER_NODE, PODS_PER_NAMESPACE, SERVICES = 30, 30, 3
RATE, CHURN_S, CUT_S = 30, 20.0, 60.0  # pod changes a second; seconds of churn; seconds of a cut's worth
WORKERS = 2
CONFIG = KubeConfig(isolation="namespace", pod_cidrs=["10.0.0.0/8"], pod_block=27)  # type: ignore[list-item]


def sizes() -> list[int]:
    return [int(s) for s in os.environ.get("ISTHMUS_SCALE_SIZES", "100,300,1000").split(",")]


class PlanOnly:
    """Stands in for the kernel driver (the simulator has no kernel): holds the plan, programs nothing."""

    def __init__(self) -> None:
        self.current: Mapping[Any, object] = {}

    def sync(self, desired: Mapping[Any, object]) -> dict[Any, str]:
        self.current = desired
        return {}

    def apply(self, desired: Mapping[Any, object], keys: object) -> dict[Any, str]:
        self.current = desired
        return {}

    def close(self) -> None:
        pass


class SimAgent(Agent):
    """The real agent, recording when each revision it received was compiled and planned."""

    def __init__(self, ledger: Ledger, node: str) -> None:
        self.applied: dict[int, float] = {}  # revision -> when the batch holding it was planned
        self.work: list[float] = []  # seconds each batch took: compile, plan
        super().__init__(ledger, node, PlanOnly())  # type: ignore[list-item]

    def changed(self, events: list[Any]) -> None:
        started = time.perf_counter()
        super().changed(events)
        done = time.time()
        self.work.append(time.perf_counter() - started)
        for revision in {e.revision for e in events}:
            self.applied.setdefault(revision, done)


# -- the cluster


def _node(i: int) -> str:
    return f"node-{i:05d}"


def _pod(namespace: str, name: str, app: str, node: str) -> KubeObject:
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "nginx", "ports": [{"containerPort": 80}]}],
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    assert isinstance(obj, KubeObject)
    return obj


def _namespace(n: int, nodes: int, rng: random.Random) -> list[Object]:
    ns = f"team-{n:05d}"
    made: list[Object] = [parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})]
    made += [
        _pod(ns, f"pod-{p:02d}", f"app-{p % SERVICES}", _node(rng.randrange(nodes)))
        for p in range(PODS_PER_NAMESPACE)
    ]
    made += [
        parse_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{s}", "namespace": ns},
                "spec": {"selector": {"app": f"app-{s}"}, "ports": [{"port": 80}]},
            }
        )
        for s in range(SERVICES)
    ]
    made.append(
        parse_object(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "app-0", "namespace": ns},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "app-0"}},
                    "ingress": [{"from": [{"podSelector": {}}]}],
                },
            }
        )
    )
    return made


def _nodes(count: int) -> list[Object]:
    return [
        parse_object(
            {
                "apiVersion": "isthmus.io/v1",
                "kind": "Node",
                "metadata": {"name": _node(i)},
                "spec": {"address": f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}"},
            }
        )
        for i in range(count)
    ]


def populate(ledger: Ledger, nodes: int, seed: int = 1) -> tuple[Reconciler, dict[str, set[str]]]:
    """The cluster, written through the reconciler a few namespaces a transaction; where each namespace's
    pods are (namespace -> nodes)."""
    reconciler = Reconciler(ledger, CONFIG)
    reconciler.apply(_nodes(nodes))
    rng = random.Random(seed)
    namespaces = nodes * PODS_PER_NODE // PODS_PER_NAMESPACE
    batch: list[Object] = []
    for n in range(namespaces):
        batch += _namespace(n, nodes, rng)
        if len(batch) > 300 or n == namespaces - 1:
            reconciler.apply(batch)
            batch = []
    where: dict[str, set[str]] = defaultdict(set)
    for ns, pods in reconciler.view.objects.get("Pod", {}).items():
        where[ns or ""] |= {node_name(pod) or "" for pod in pods.values()}
    return reconciler, where


# -- the fleet


class Fleet:
    """Worker processes of simulated agents, and one probe agent in a process of its own."""

    def __init__(self, url: str, nodes: list[str], probe: str, directory: Path) -> None:
        self.directory = directory
        env = os.environ | {"PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
        shares = [nodes[i::WORKERS] for i in range(WORKERS)]
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.scale", "worker", url, str(directory / f"w{i}.json"), *share],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i, share in enumerate(shares)
        ]
        self.probe = subprocess.Popen(
            [sys.executable, "-m", "bench.scale", "probe", url, probe],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.cold = [json.loads(self._line(w)) for w in self.workers]
        self.probe_cold = json.loads(self._line(self.probe))

    @staticmethod
    def _line(process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"a simulator process ended (exit {process.wait()})")
        return line

    def ask(self, process: subprocess.Popen[str], command: str) -> Any:
        assert process.stdin is not None
        process.stdin.write(command + "\n")
        process.stdin.flush()
        return json.loads(self._line(process))

    def report(self) -> tuple[dict[str, dict[int, float]], list[float]]:
        """When each agent planned each revision it received; the seconds each batch took."""
        applied: dict[str, dict[int, float]] = {}
        work: list[float] = []
        for i, worker in enumerate(self.workers):
            self.ask(worker, "report")
            data = json.loads((self.directory / f"w{i}.json").read_text())
            applied |= {node: {int(r): t for r, t in a["applied"].items()} for node, a in data.items()}
            work += [w for a in data.values() for w in a["work"]]
        return applied, work

    def stop(self) -> None:
        for process in [*self.workers, self.probe]:
            if process.poll() is None:
                assert process.stdin is not None
                process.stdin.close()
        for process in [*self.workers, self.probe]:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(url: str, out: str, nodes: list[str]) -> None:
    """Start the agents one by one (cold start: list, compile, plan), report, then follow the store."""
    stop = threading.Event()
    agents: list[SimAgent] = []
    cold_s: list[float] = []
    for node in nodes:
        started = time.perf_counter()
        agents.append(SimAgent(open_store(url, Credentials()), node))
        cold_s.append(time.perf_counter() - started)
    for agent in agents:
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
    print(
        json.dumps(
            {
                "agents": len(agents),
                "cold_s": cold_s,
                "cold_bytes": [a.slice.received for a in agents],
                "channels": [len(a.positions) for a in agents],
                "rss_mib": _rss_mib(os.getpid()),
            }
        ),
        flush=True,
    )
    for command in sys.stdin:
        if command.strip() == "report":
            Path(out).write_text(json.dumps({a.node: {"applied": a.applied, "work": a.work} for a in agents}))
            print(json.dumps({"rss_mib": _rss_mib(os.getpid())}), flush=True)
    stop.set()


def probe(url: str, node: str) -> None:
    """One agent alone in this process: its RSS, and its resync after a cut (`cut`, then `resume TARGET`:
    seconds until it holds revision TARGET, and whether it relisted)."""
    agent = SimAgent(open_store(url, Credentials()), node)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    print(json.dumps({"rss_mib": _rss_mib(os.getpid()), "bytes": agent.slice.received}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "cut":
            stop.set()
            thread.join()
            print(json.dumps({"revision": agent.revision}), flush=True)
        elif command == "resume":
            target, lists = int(args[0]), agent.metrics.value("lists_total")
            stop = threading.Event()
            started = time.perf_counter()
            thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
            thread.start()
            while agent.revision < target:
                time.sleep(0.005)
            seconds = time.perf_counter() - started
            relisted = agent.metrics.value("lists_total") > lists
            print(
                json.dumps({"seconds": seconds, "relisted": relisted, "rss_mib": _rss_mib(os.getpid())}),
                flush=True,
            )
    stop.set()


# -- churn and figures


def churn(
    reconciler: Reconciler, where: dict[str, set[str]], nodes: int, count: int, rate: float, seed: int
) -> list[tuple[int, float, set[str]]]:
    """`count` pod changes at `rate` a second (created, and the oldest created deleted, in turn): each
    change's revision, commit time, and the nodes it concerns (those hosting the namespace's network,
    which its NetworkPolicy's peers are, before and after the change)."""
    rng = random.Random(seed)
    made: list[tuple[str, str, str]] = []
    changes = []
    pod_kind = lookup_kind("Pod")
    started = time.time()
    for i in range(count):
        time.sleep(max(0.0, started + i / rate - time.time()))
        if i % 2 == 0 or not made:
            ns = f"team-{rng.randrange(len(where)):05d}"
            node = _node(rng.randrange(nodes))
            name = f"churn-{seed}-{i}"
            concerned = where[ns] | {node}
            done = reconciler.apply([_pod(ns, name, "app-0", node)])
            made.append((ns, name, node))
            where[ns].add(node)
        else:
            ns, name, node = made.pop(0)
            concerned = set(where[ns])
            done = reconciler.apply([], [(pod_kind, ns, name)])
        changes.append((_revision(done), time.time(), concerned))
    return changes


def _revision(applied: list[Applied]) -> int:
    """The revision a change was committed at."""
    return max(a.object.metadata.resource_version or 0 for a in applied)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def routes_per_node(nodes: int) -> int:
    """Kernel routes on one node in the cluster-wide pod network (cluster isolation), N nodes and 30N
    pods: compiled and planned from the translation (in memory: routes do not depend on the store)."""
    rng = random.Random(2)
    reconciler = Reconciler(MemoryLedger(), KubeConfig(pod_cidrs=["10.0.0.0/8"], pod_block=26))  # type: ignore[list-item]
    kept = ("Namespace", "Pod")
    reconciler.apply(
        [*_nodes(nodes), *(o for n in range(nodes) for o in _namespace(n, nodes, rng) if o.kind in kept)]
    )
    compiler, _ = compiled(reconciler.ledger)
    plan = Planner(compiler.node_state(_node(0))).plan
    return sum(1 for k, v in plan.items() if k[0] == "route" and isinstance(v, Route))


@contextmanager
def _etcd() -> Iterator[EtcdCluster]:
    with tempfile.TemporaryDirectory(prefix="isthmus-scale-") as tmp:
        members = EtcdCluster(Path(tmp), 1)
        try:
            yield members
        finally:
            members.stop()


def measure(nodes: int, churn_s: float = CHURN_S, cut_s: float = CUT_S) -> Figures:
    """The figures of one size: `churn_s` seconds of churn at RATE, a cut of `cut_s` seconds' worth."""
    print(f"  scale: {nodes} nodes", flush=True)
    with _etcd() as etcd, tempfile.TemporaryDirectory(prefix="isthmus-fleet-") as tmp:
        ledger = etcd.ledger()
        started = time.perf_counter()
        reconciler, where = populate(ledger, nodes)
        print(f"    populated in {time.perf_counter() - started:.0f} s", flush=True)
        busiest = max(
            (_node(i) for i in range(nodes)),
            key=lambda n: sum(1 for v in where.values() if n in v),
        )
        started = time.perf_counter()
        fleet = Fleet(etcd.url, [_node(i) for i in range(nodes)], busiest, Path(tmp))
        print(f"    fleet up in {time.perf_counter() - started:.0f} s", flush=True)
        etcd_pid = next(iter(etcd.processes.values())).pid
        try:
            pids = [w.pid for w in fleet.workers]
            cpu, started = sum(map(_cpu_s, pids)), time.perf_counter()
            changes = churn(reconciler, where, nodes, int(RATE * churn_s), RATE, seed=1)
            busy = (sum(map(_cpu_s, pids)) - cpu) / (time.perf_counter() - started)
            time.sleep(3)
            applied, work = fleet.report()
            etcd_rss = _rss_mib(etcd_pid)
            worker_rss = sum(_rss_mib(w.pid) for w in fleet.workers)
            latencies, deliveries, concerned, beyond = [], [], [], 0
            for revision, committed, nodes_concerned in changes:
                got = {n for n, revs in applied.items() if revision in revs}
                deliveries.append(len(got))
                concerned.append(len(nodes_concerned))
                beyond += len(got - nodes_concerned)
                latencies += [applied[n][revision] - committed for n in got]
            # a cut: the probe stops following while a cut's worth of changes is committed, then resumes
            fleet.ask(fleet.probe, "cut")
            churn(reconciler, where, nodes, int(RATE * cut_s), 10 * RATE, seed=2)
            resumed = fleet.ask(fleet.probe, f"resume {ledger.revision()}")
            fleet.ask(fleet.probe, "cut")
            churn(reconciler, where, nodes, RATE, 10 * RATE, seed=3)
            ledger.compact(ledger.revision())
            relisted = fleet.ask(fleet.probe, f"resume {ledger.revision()}")
        finally:
            fleet.stop()
        cold_bytes = [b for w in fleet.cold for b in w["cold_bytes"]]
        return {
            f"fanout_p99_s_{nodes}": _percentile(latencies, 0.99),
            f"fanout_p50_s_{nodes}": _percentile(latencies, 0.5),
            f"agent_work_p99_s_{nodes}": _percentile(work, 0.99),
            f"agent_work_mean_s_{nodes}": statistics.mean(work),
            f"simulator_cores_busy_{nodes}": busy,
            f"deliveries_per_change_{nodes}": statistics.mean(deliveries),
            f"concerned_nodes_per_change_{nodes}": statistics.mean(concerned),
            f"deliveries_beyond_concerned_{nodes}": beyond,
            f"agent_rss_mib_{nodes}": max(
                fleet.probe_cold["rss_mib"], resumed["rss_mib"], relisted["rss_mib"]
            ),
            f"fleet_rss_mib_per_agent_{nodes}": worker_rss / nodes,
            f"cold_start_bytes_{nodes}": max(cold_bytes),
            f"cold_start_s_p99_{nodes}": _percentile([s for w in fleet.cold for s in w["cold_s"]], 0.99),
            f"channels_per_agent_{nodes}": statistics.mean(c for w in fleet.cold for c in w["channels"]),
            f"routes_per_node_{nodes}": routes_per_node(nodes),
            f"resync_s_{nodes}": resumed["seconds"],
            f"resync_relisted_{nodes}": float(resumed["relisted"]),
            f"resync_after_compaction_s_{nodes}": relisted["seconds"],
            f"etcd_rss_mib_{nodes}": etcd_rss,
            f"watch_streams_{nodes}": nodes + 1,
        }


def _units() -> dict[str, str]:
    units = {
        "fanout_p99_s": "s",
        "fanout_p50_s": "s",
        "agent_work_p99_s": "s",
        "agent_work_mean_s": "s",
        "simulator_cores_busy": "cores",
        "deliveries_per_change": "nodes",
        "concerned_nodes_per_change": "nodes",
        "deliveries_beyond_concerned": "deliveries",
        "agent_rss_mib": "MiB",
        "fleet_rss_mib_per_agent": "MiB",
        "cold_start_bytes": "bytes",
        "cold_start_s_p99": "s",
        "channels_per_agent": "channels",
        "routes_per_node": "routes",
        "resync_s": "s",
        "resync_relisted": "bool",
        "resync_after_compaction_s": "s",
        "etcd_rss_mib": "MiB",
        "watch_streams": "streams",
    }
    return {f"{name}_{size}": unit for size in sizes() for name, unit in units.items()}


def _goals() -> tuple[Goal, ...]:
    largest = max(sizes())
    goals = [
        Goal(f"agent_rss_mib_{largest}", "<", 100),
        Goal(f"cold_start_bytes_{largest}", "<", 5e6),
        Goal(f"routes_per_node_{largest}", "<", 6000),
        Goal(f"resync_s_{largest}", "<", 1),
        Goal(f"resync_after_compaction_s_{largest}", "<", 2),
        Goal(f"etcd_rss_mib_{largest}", "<", 2048),
        Goal(f"deliveries_beyond_concerned_{largest}", "<=", 0),
    ]
    for size in sizes():
        goals.append(Goal(f"fanout_p99_s_{size}", "<", 1.0 if size <= 1000 else 2.0))
    return tuple(goals)


@benchmark("scale", units=_units(), goals=_goals())
def scale() -> Figures:
    """N simulated nodes (ISTHMUS_SCALE_SIZES) against one real etcd member: per size, fan-out of 600 pod
    changes at 30 a second (commit to every receiving agent's plan updated, p99 and p50; deliveries per
    change against the nodes it concerns, and deliveries beyond them), the agents' work per batch (p99 and
    mean) and the simulator's busy cores during the churn (at 2 it is saturated: latency then measures the
    simulator's backlog, not the control plane), one agent's RSS in a process of its
    own (the node with the most namespaces), the fleet's RSS per agent, the largest cold start in bytes
    and its p99 seconds, channels per agent, kernel routes on a node of the cluster-wide network, the
    probe agent's resync after a cut of 1,800 changes (no relist) and after a compaction, etcd's RSS."""
    figures: Figures = {}
    for nodes in sizes():
        measured = measure(nodes)
        print("    " + ", ".join(f"{k} {v:.4g}" for k, v in measured.items()), flush=True)
        figures |= measured
    return figures


if __name__ == "__main__":
    role, url, *rest = sys.argv[1:]
    if role == "worker":
        worker(url, rest[0], rest[1:])
    else:
        probe(url, rest[0])
