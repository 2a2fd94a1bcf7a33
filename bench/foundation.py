"""Benchmarks of the foundation: ledger writes and watches, IPAM allocation, memory per endpoint."""

from __future__ import annotations

import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.harness import Figures, Goal, benchmark
from isthmus import intent, ipam
from isthmus.model import Endpoint, parse_manifests
from isthmus.store import MemoryLedger, SqliteLedger, transact
from isthmus.store.objects import decode

BATCH = 500


def _sqlite(directory: str) -> SqliteLedger:
    return SqliteLedger(Path(directory) / "ledger.sqlite")


@benchmark(
    "ledger-writes",
    units={
        "batched_writes_per_s": "writes/s",
        "single_commits_per_s": "commits/s",
        "watch_events_per_s": "events/s",
    },
    goals=(Goal("batched_writes_per_s", ">=", 5000),),
)
def ledger_writes() -> Figures:
    """SQLite ledger: 50,000 puts in commits of 500; 2,000 one-key commits; a watch replaying all of it."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = _sqlite(tmp)
        value = b'{"spec":{"network":"red","addresses":["10.0.0.1"]}}'
        started = time.perf_counter()
        for batch in range(100):
            ledger.commit({}, [(f"/bench/{batch:03d}/{i:04d}", value) for i in range(BATCH)])
        batched = 100 * BATCH / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(2000):
            ledger.commit({}, [(f"/single/{i:05d}", value)])
        single = 2000 / (time.perf_counter() - started)
        watch = ledger.watch("/", after=0)
        started = time.perf_counter()
        seen = 0
        while events := watch.poll():
            seen += len(events)
        assert seen == 100 * BATCH + 2000
        watched = seen / (time.perf_counter() - started)
        ledger.close()
    return {"batched_writes_per_s": batched, "single_commits_per_s": single, "watch_events_per_s": watched}


def _allocate_many(ledger: SqliteLedger, pool: ipam.Pool, prefix: str, count: int) -> float:
    """Seconds for `count` allocations, each in its own transaction, as a controller makes them."""
    started = time.perf_counter()
    for i in range(count):
        transact(ledger, lambda txn, i=i: ipam.allocate(txn, pool, f"{prefix}{i}"))
    return time.perf_counter() - started


def _prefill(ledger: SqliteLedger, pool: ipam.Pool, count: int) -> None:
    """Store `count` allocations exactly as the allocator would have (values 1..count, hint after them)."""
    for start in range(1, count + 1, 5000):
        ops: list[tuple[str, bytes | None]] = []
        for value in range(start, min(start + 5000, count + 1)):
            ops += [
                (pool.value_key(value), f"pre{value}".encode()),
                (pool.owner_key(f"pre{value}"), str(value).encode()),
            ]
        ledger.commit({}, ops)
    ledger.commit({}, [(f"/ipam/{pool.name}/hint", str(count + 1).encode())])


@benchmark(
    "ipam",
    units={"seconds_10k": "s", "us_per_alloc_at_1k": "µs", "us_per_alloc_at_100k": "µs"},
    ratios={"cost_100k_over_1k": ("us_per_alloc_at_100k", "us_per_alloc_at_1k")},
    goals=(Goal("seconds_10k", "<", 5.0), Goal("cost_100k_over_1k", "<=", 1.5)),
)
def ipam_allocations() -> Figures:
    """10,000 allocations through the SQLite ledger; cost of 1,000 more at 1,000 and at 100,000 allocated."""
    pool = ipam.Pool("bench", ((1, 2**20 - 2),), "a /12")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = _sqlite(tmp)
        seconds_10k = _allocate_many(ledger, pool, "o", 10_000)
        ledger.close()
    costs = {}
    for allocated in (1_000, 100_000):
        with tempfile.TemporaryDirectory() as tmp:
            ledger = _sqlite(tmp)
            _prefill(ledger, pool, allocated)
            costs[allocated] = _allocate_many(ledger, pool, "m", 1000) / 1000 * 1e6
            ledger.close()
    return {
        "seconds_10k": seconds_10k,
        "us_per_alloc_at_1k": costs[1_000],
        "us_per_alloc_at_100k": costs[100_000],
    }


NETWORK = """
apiVersion: isthmus.io/v1
kind: Tenant
metadata: {name: acme}
---
apiVersion: isthmus.io/v1
kind: VirtualNetwork
metadata: {name: red, namespace: acme}
---
apiVersion: isthmus.io/v1
kind: Subnet
metadata: {name: red-v4, namespace: acme}
spec: {network: red, cidr: 10.0.0.0/16}
"""
ENDPOINT = """
apiVersion: isthmus.io/v1
kind: Endpoint
metadata: {name: x, namespace: acme, labels: {app: web, tier: front}}
spec: {network: red}
"""


def _endpoints(count: int) -> list[Endpoint]:
    template = parse_manifests(ENDPOINT)[0]
    assert isinstance(template, Endpoint)
    return [
        template.model_copy(update={"metadata": template.metadata.model_copy(update={"name": f"pod-{i}"})})
        for i in range(count)
    ]


@benchmark("memory-per-endpoint", units={"ledger_bytes_per_endpoint": "B", "model_bytes_per_endpoint": "B"})
def memory_per_endpoint() -> Figures:
    """Bytes per stored endpoint: in the memory ledger (with its IPAM keys), and as decoded model objects."""
    count = 5000
    items = _endpoints(count)
    ledger = MemoryLedger()
    intent.apply(ledger, parse_manifests(NETWORK))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    intent.apply(ledger, items)
    ledger.compact(ledger.revision())  # count what is stored, not the change history
    gc.collect()
    stored = tracemalloc.get_traced_memory()[0] - before
    kvs, _ = ledger.list("/objects/isthmus.io/Endpoint/")
    before = tracemalloc.get_traced_memory()[0]
    models = [decode(kv) for kv in kvs]
    gc.collect()
    model_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(models) == count
    return {"ledger_bytes_per_endpoint": stored / count, "model_bytes_per_endpoint": model_bytes / count}
