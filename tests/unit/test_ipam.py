"""IPAM: owner idempotency, release, exhaustion, requested values, and no duplicates under concurrency."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from isthmus import ipam
from isthmus.store import Ledger, SqliteLedger, transact

POOL = ipam.Pool("test", ((10, 13), (20, 21)), "the test pool")


def alloc(ledger: Ledger, owner: str, requested: int | None = None, pool: ipam.Pool = POOL) -> int:
    return transact(ledger, lambda txn: ipam.allocate(txn, pool, owner, requested))[0]


def free(ledger: Ledger, owner: str) -> int | None:
    return transact(ledger, lambda txn: ipam.release(txn, POOL, owner))[0]


def test_same_owner_gets_the_same_value(ledger: Ledger) -> None:
    first = alloc(ledger, "a")
    revision = ledger.revision()
    assert alloc(ledger, "a") == first == 10
    assert ledger.revision() == revision  # asking again writes nothing


def test_values_follow_the_ranges_and_exhaustion_is_clear(ledger: Ledger) -> None:
    got = [alloc(ledger, f"o{i}") for i in range(6)]
    assert got == [10, 11, 12, 13, 20, 21]
    with pytest.raises(ipam.Exhausted, match="the test pool is exhausted: nothing left for o6"):
        alloc(ledger, "o6")


def test_released_values_are_reused_last(ledger: Ledger) -> None:
    for i in range(3):
        alloc(ledger, f"o{i}")
    assert free(ledger, "o0") == 10
    assert free(ledger, "o0") is None
    assert alloc(ledger, "n1") == 13  # next-fit: not the just-released 10
    assert alloc(ledger, "n2") == 20
    assert alloc(ledger, "n3") == 21
    assert alloc(ledger, "n4") == 10  # wraps around to the freed value


def test_requested_values(ledger: Ledger) -> None:
    assert alloc(ledger, "a", 12) == 12
    with pytest.raises(ipam.Taken, match="12 in the test pool is already held by a"):
        alloc(ledger, "b", 12)
    with pytest.raises(ipam.IpamError, match="15 is outside the test pool"):
        alloc(ledger, "b", 15)
    assert alloc(ledger, "a", 20) == 20  # moving releases the old value
    assert alloc(ledger, "b", 12) == 12


def test_hint_scan_skips_long_runs(ledger: Ledger) -> None:
    pool = ipam.Pool("big", ((0, 9999),), "big")
    transact(ledger, lambda txn: [ipam.allocate(txn, pool, f"o{i}", i) for i in range(600)])
    assert alloc(ledger, "first-auto", pool=pool) == 600


def _worker(path: str, prefix: str, count: int) -> None:
    ledger = SqliteLedger(path)
    pool = ipam.Pool("shared", ((0, 65535),), "shared")
    for i in range(count):
        transact(ledger, lambda txn, i=i: ipam.allocate(txn, pool, f"{prefix}{i}"))
    ledger.close()


def test_two_processes_never_get_the_same_value(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    SqliteLedger(path).close()
    count = 2000
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_worker, args=(path, p, count)) for p in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    ledger = SqliteLedger(path)
    held, _ = ledger.list("/ipam/shared/a/")
    owners, _ = ledger.list("/ipam/shared/o/")
    values = [int(kv.key.rsplit("/", 1)[1], 16) for kv in held]
    assert len(values) == len(set(values)) == 2 * count
    assert len(owners) == 2 * count
    assert {kv.value.decode() for kv in held} == {f"{p}{i}" for p in "ab" for i in range(count)}
    ledger.close()
