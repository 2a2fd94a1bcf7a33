"""Leader election on the ledger, with real processes: a leader SIGKILLed, SIGSTOPped past its lease then
continued (its writes refused), or stopping cleanly (handing over at once); on SQLite and on real etcd."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isthmus.store import Credentials, Ledger, open_store
from isthmus.store.election import controllers
from tests.etcdenv import EtcdCluster
from tests.replicas import Replica

TTL = 2.0  # a takeover by expiry needs at least 2/3 of it after the last heartbeat: 1.33 s


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.sqlite")
        return
    cluster = EtcdCluster(tmp_path)
    yield cluster.url
    cluster.stop()


@pytest.fixture
def pair(store: str) -> Iterator[tuple[str, Replica, Replica]]:
    """Replica `a`, leading, and `b`, which has watched it renew for a whole lease; both stopped after."""
    first = Replica(store, "a", TTL)
    second: Replica | None = None
    try:
        first.says("leading", 10)
        second = Replica(store, "b", TTL)
        time.sleep(TTL)
        yield store, first, second
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop()


def _ledger(store: str) -> Ledger:
    return open_store(store, Credentials())


def test_a_killed_leader_is_replaced_within_its_lease(pair: tuple[str, Replica, Replica]) -> None:
    store, first, second = pair
    time.sleep(TTL)
    assert "leading" not in second.said  # a standby while the leader renews
    shown = controllers(_ledger(store))
    assert [(c.name, c.leader, c.standbys) for c in shown] == [("ctl", "a", ["b"])]
    first.process.send_signal(signal.SIGKILL)
    took = second.says("leading", 10)
    assert took < TTL + 2, took


def test_a_paused_leader_is_deposed_and_its_writes_refused(pair: tuple[str, Replica, Replica]) -> None:
    store, first, second = pair
    if not store.startswith("etcd://"):
        pytest.skip("a process paused inside a SQLite write keeps the file locked: one file is no HA store")
    first.process.send_signal(signal.SIGSTOP)
    second.says("leading", 10)
    ledger = _ledger(store)
    term = ledger.get("/controllers/ctl/leader")
    assert term is not None and b'"b"' in term.value
    first.process.send_signal(signal.SIGCONT)
    first.says("deposed", 10)
    assert first.process.wait(10) == 3
    written = ledger.get("/w/a")
    assert written is not None and written.mod_revision < term.mod_revision  # nothing after b took over


def test_a_clean_stop_hands_over_at_once(pair: tuple[str, Replica, Replica]) -> None:
    _, first, second = pair
    started = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    second.says("leading", 10)
    assert time.monotonic() - started < 1.0  # no expiry: the key was deleted
    assert first.process.wait(10) == 0
