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

TTL = 1.0


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.sqlite")
        return
    cluster = EtcdCluster(tmp_path)
    yield cluster.url
    cluster.stop()


@pytest.fixture
def replicas(store: str) -> Iterator[tuple[str, list[Replica]]]:
    made: list[Replica] = []
    yield store, made
    for replica in made:
        replica.stop()


def _ledger(store: str) -> Ledger:
    return open_store(store, Credentials())


def test_a_killed_leader_is_replaced_within_its_lease(replicas: tuple[str, list[Replica]]) -> None:
    store, made = replicas
    made.append(first := Replica(store, "a", TTL))
    first.says("leading", 10)
    made.append(second := Replica(store, "b", TTL))
    time.sleep(2 * TTL)
    assert "leading" not in second.said  # a standby while the leader renews
    shown = controllers(_ledger(store))
    assert [(c.name, c.leader, c.standbys) for c in shown] == [("ctl", "a", ["b"])]
    first.process.send_signal(signal.SIGKILL)
    took = second.says("leading", 10)
    assert took < TTL + 1.5, took


def test_a_paused_leader_is_deposed_and_its_writes_refused(replicas: tuple[str, list[Replica]]) -> None:
    store, made = replicas
    made.append(first := Replica(store, "a", TTL))
    first.says("leading", 10)
    made.append(second := Replica(store, "b", TTL))
    time.sleep(TTL)
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


def test_a_clean_stop_hands_over_at_once(replicas: tuple[str, list[Replica]]) -> None:
    store, made = replicas
    made.append(first := Replica(store, "a", TTL))
    first.says("leading", 10)
    made.append(second := Replica(store, "b", TTL))
    time.sleep(TTL)
    started = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    second.says("leading", 10)
    assert time.monotonic() - started < TTL / 2 + 0.5
    assert first.process.wait(10) == 0
