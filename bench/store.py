"""Benchmarks of the ledger backends: etcd (real members on 127.0.0.1, tests/etcdenv.py) against SQLite."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml
from tests.etcdenv import EtcdCluster

from bench.harness import Figures, Goal, benchmark
from bench.kube import NAMESPACES, PODS, cluster
from bench.labs import lab, run
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler
from isthmus.lab.control import Lab
from isthmus.lab.fabric import Fabric
from isthmus.model import lookup_kind, parse_manifests
from isthmus.store import Credentials, Ledger, SqliteLedger, open_ledger, open_store
from isthmus.store.ledger import Op
from isthmus.store.objects import kind_prefix

COMMITS, WATCHED, WARMUP = 500, 200, 20
AGENTS = 50
PREFIX = "/bench/agents/"


@contextmanager
def _etcd(size: int, fast: bool) -> Iterator[EtcdCluster]:
    """`size` members with the project's flags (election timing etcd's default unless `fast`), data in a
    temporary directory; every member stopped and the directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="isthmus-etcd-") as tmp:
        members = EtcdCluster(Path(tmp), size, fast=fast)
        try:
            yield members
        finally:
            members.stop()


def _percentile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _status(i: int) -> list[Op]:
    """An agent's status commit: its status object (~900 B), a heartbeat and an index entry (~1 KB)."""
    node = f"node-{i % AGENTS:03d}"
    status = {
        "node": node,
        "generation": i,
        "endpoints": [
            {"name": f"pod-{p:03d}", "ip": f"10.{i % 250}.{p}.7", "ready": True} for p in range(12)
        ],
    }
    return [
        (f"{PREFIX}{node}/status", json.dumps(status).encode()),
        (f"{PREFIX}{node}/heartbeat", f'{{"at": {time.time():.6f}, "generation": {i}}}'.encode()),
        (f"/bench/index/{node}", b""),
    ]


class _Writer:
    """Commits status after status, each checking that its node's status is the one it last wrote."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.count = ledger, 0
        self.revisions: dict[str, int] = {}

    def commit(self) -> int:
        ops = _status(self.count)
        self.count += 1
        key = ops[0][0]
        revision = self.ledger.commit({key: self.revisions.get(key, 0)}, ops)
        self.revisions[key] = revision
        return revision


def _commit_latencies(writer: _Writer) -> list[float]:
    for _ in range(WARMUP):
        writer.commit()
    latencies = []
    for _ in range(COMMITS):
        started = time.perf_counter()
        writer.commit()
        latencies.append(time.perf_counter() - started)
    return latencies


def _watch_latencies(writer: _Writer, reader: Ledger) -> list[float]:
    """From the commit call to the event in the hands of a watch on another ledger object, one commit at a
    time (each waits for the event of the one before, then a random 0-50 ms: no phase lock with a poll)."""
    watch = reader.watch(PREFIX, writer.ledger.revision())
    seen: dict[int, float] = {}
    arrived = threading.Condition()
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            events = watch.poll(timeout=0.2)
            now = time.perf_counter()
            if events:
                with arrived:
                    for event in events:
                        seen.setdefault(event.revision, now)
                    arrived.notify_all()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    latencies = []
    pauses = random.Random(16)
    try:
        for i in range(WARMUP + WATCHED):
            time.sleep(pauses.uniform(0, 0.05))
            started = time.perf_counter()
            revision = writer.commit()
            with arrived:
                if not arrived.wait_for(lambda revision=revision: revision in seen, timeout=10):
                    raise TimeoutError(f"the watch never saw revision {revision}")
            if i >= WARMUP:
                latencies.append(seen[revision] - started)
    finally:
        stop.set()
        follower.join()
        watch.close()
    return latencies


def _latencies(open_ledger: Callable[[], Ledger]) -> tuple[list[float], list[float]]:
    writer, reader = open_ledger(), open_ledger()
    try:
        statuses = _Writer(writer)
        return _commit_latencies(statuses), _watch_latencies(statuses, reader)
    finally:
        reader.close()
        writer.close()


def _ms(name: str, values: Sequence[float]) -> Figures:
    return {
        f"{name}_p50_ms": _percentile(values, 50) * 1000,
        f"{name}_p99_ms": _percentile(values, 99) * 1000,
    }


@benchmark(
    "store-commit",
    units={
        f"{b}_{w}_{q}_ms": "ms"
        for b in ("etcd", "sqlite")
        for w in ("commit", "watch")
        for q in ("p50", "p99")
    },
    ratios={
        f"{w}_{q}_etcd_over_sqlite": (f"etcd_{w}_{q}_ms", f"sqlite_{w}_{q}_ms")
        for w in ("commit", "watch")
        for q in ("p50", "p99")
    },
)
def store_commit() -> Figures:
    """Small commits (an agent's status: 3 keys, ~1 KB, checking the status key's revision), 500 in a row,
    on a 3-member etcd cluster (default election timing, data on this machine's disk) and on SQLite (WAL,
    synchronous=NORMAL); then 200 more, one at a time, from the commit call to the event seen by a watch on
    another ledger object (etcd: another member; SQLite: another connection, which polls every 50 ms as a
    watcher in another process must)."""
    figures: Figures = {}
    with _etcd(3, fast=False) as members:
        urls = list(members.clients.values())
        rotation = iter([urls, urls[1:] + urls[:1]])  # the watcher asks another member first
        commit, watch = _latencies(lambda: open_store("etcd://" + ",".join(next(rotation)), Credentials()))
    figures |= _ms("etcd_commit", commit) | _ms("etcd_watch", watch)
    with tempfile.TemporaryDirectory() as tmp:
        commit, watch = _latencies(lambda: SqliteLedger(Path(tmp) / "ledger.sqlite"))
    return figures | _ms("sqlite_commit", commit) | _ms("sqlite_watch", watch)


def _grpc_received(members: EtcdCluster) -> int:
    """Bytes the (only) member's gRPC server has received: what its request limits measure."""
    url = f"http://{next(iter(members.clients.values()))}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("etcd_network_client_grpc_received_bytes_total "):
                return int(float(line.split()[1]))
    raise LookupError(f"no etcd_network_client_grpc_received_bytes_total at {url}")


def _cold(ledger: Ledger, text: str) -> float:
    started = time.perf_counter()
    done = Reconciler(ledger, KubeConfig()).apply(parse_manifests(text))
    seconds = time.perf_counter() - started
    assert sum(a.object.kind == "Endpoint" for a in done) == NAMESPACES * PODS
    return seconds


@benchmark(
    "store-cold",
    units={
        "sqlite_cold_s": "s",
        "etcd_cold_s": "s",
        "commit_compares": "compares",
        "commit_ops": "ops",
        "commit_request_mib": "MiB",
    },
    ratios={"cold_etcd_over_sqlite": ("etcd_cold_s", "sqlite_cold_s")},
    goals=(Goal("cold_etcd_over_sqlite", "<=", 1.5),),
)
def store_cold() -> Figures:
    """The cold translation of bench/kube.py's cluster (10,000 pods, 1,000 services, 1,000 NetworkPolicies)
    into an empty ledger, as kube-translate does: SQLite, then one etcd member with the project's flags
    (store/etcd_member.py). The cold commit's size as etcd counts it: compares, operations (puts and deletes;
    --max-txn-ops bounds each list) and the gRPC request the member received (--max-request-bytes)."""
    text = cluster()
    with tempfile.TemporaryDirectory() as tmp:
        ledger: Ledger = SqliteLedger(Path(tmp) / "ledger.sqlite")
        sqlite_s = _cold(ledger, text)
        ledger.close()
    commits: list[tuple[int, int, int]] = []
    with _etcd(1, fast=False) as members:
        ledger = members.ledger()
        commit = ledger.commit

        def measured(checks: dict[str, int], ops: Sequence[Op]) -> int:
            before = _grpc_received(members)
            revision = commit(checks, ops)
            commits.append((len(checks), len(ops), _grpc_received(members) - before))
            return revision

        ledger.commit = measured  # type: ignore[method-assign]
        try:
            etcd_s = _cold(ledger, text)
        finally:
            ledger.close()
    compares, ops, request = max(commits, key=lambda c: c[2])
    return {
        "sqlite_cold_s": sqlite_s,
        "etcd_cold_s": etcd_s,
        "commit_compares": compares,
        "commit_ops": ops,
        "commit_request_mib": request / 2**20,
    }


def _cut(work: Path, fabric: Fabric, node: str, other: str, round_: str, compact: bool) -> float:
    """Cut `node` from every member for CUT_S seconds while PODS_DURING_CUT pods come to `other` (the store
    compacting meanwhile when `compact`); the seconds from the cut's end until its agent has programmed the
    pods' commit and reports no problem. (Not the store's latest revision: the agents' status writes move
    it, and a watch of the objects learns of those only from etcd's progress notifications.)"""
    members = ", ".join(fabric.stores[""].values())
    netns = fabric.node_netns(node)
    rules = f"""table ip cut {{
        chain out {{ type filter hook output priority 0; ip daddr {{ {members} }} drop; }}
        chain in {{ type filter hook input priority 0; ip saddr {{ {members} }} drop; }}
    }}"""
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"cut-{round_}-{i}", "namespace": "default"},
            "spec": {"nodeName": other, "containers": [{"name": "main", "image": "busybox"}]},
        }
        for i in range(PODS_DURING_CUT)
    ]
    (work / f"cut-{round_}.yaml").write_text(yaml.safe_dump_all(pods))
    ledger = open_ledger(work / "state")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=rules, text=True, check=True)
    ended = time.monotonic() + CUT_S
    try:
        run("--state", str(work / "state"), "apply", "-f", str(work / f"cut-{round_}.yaml"))
        if compact:
            ledger.compact(ledger.revision())
        time.sleep(max(0.0, ended - time.monotonic()))
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "ip", "cut"], check=True)
    started = time.monotonic()
    prefix = kind_prefix(lookup_kind("Endpoint"), "default") + f"cut-{round_}-"
    revision = max(kv.mod_revision for kv in ledger.list(prefix)[0])  # the pods' one commit
    ledger.close()
    lab_ = Lab(fabric)
    while True:
        agent = lab_.agent(node)
        if int(agent.get("revision", 0)) >= revision and not agent.get("problems"):
            return time.monotonic() - started
        if time.monotonic() - started > 60:
            raise RuntimeError(f"{node} did not converge in 60 s: {agent}")
        time.sleep(0.02)


CUT_S, PODS_DURING_CUT = 15, 20


@benchmark(
    "store-cut",
    units={"resumed_s": "s", "relisted_s": "s"},
    goals=(Goal("resumed_s", "<", 2), Goal("relisted_s", "<", 2)),
)
def store_cut() -> Figures:
    """A 2-node lab on a 3-member etcd (TLS, roles); one node cut from every member for 15 s while 20 pods
    come to the other: the seconds from the cut's end until the cut node's agent has programmed the store's
    revision, when it resumes its watch, and when the store compacted during the cut so that it relists."""
    topology = {"store": {"etcd": 3}, "nodes": [{"name": "n1"}, {"name": "n2"}]}
    with lab("cut", topology, []) as (work, fabric):
        resumed = _cut(work, fabric, "n2", "n1", "a", compact=False)
        relisted = _cut(work, fabric, "n2", "n1", "b", compact=True)
    return {"resumed_s": resumed, "relisted_s": relisted}
