"""Leader election on the ledger: of the replicas of a singleton controller, one writes, the others stand by.

Keys, under /controllers/NAME/:
- `leader` -> {"replica", "since"}: written once per term; its mod revision is the term, and every commit of
  the leader checks it (`Fenced`), so a deposed or paused leader can never write: its commit conflicts on
  that key and raises Deposed (etcd's own mutex fences on the lock key's revision the same way);
- `heartbeat`: renewed by the leader every TTL/3, each renewal checking the term;
- `replicas/REPLICA` -> {"since", "seen"}: every replica's presence, for `isthmus get controllers`.
A standby takes over (a commit checking both keys as it last saw them) when the heartbeat has not changed
for TTL seconds by its own clock, so no clocks are compared across machines; a clean stop deletes the
leader key (resigns) and a standby takes over at once. Works on every ledger backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from isthmus.store.ledger import Conflict, KeyValue, Ledger, LedgerError, Op, Unavailable, Watch

CONTROLLERS = "/controllers/"
log = logging.getLogger("isthmus.election")


class Deposed(LedgerError):
    """This replica no longer leads: another took over. Nothing of the refused commit was written."""


@dataclass(frozen=True)
class Controller:
    """A controller as the ledger shows it: its leader (replica, since), its standbys."""

    name: str
    leader: str | None
    since: float | None
    standbys: list[str]


class Election:
    """One replica's part in the election of controller `name`; `lead` blocks until it leads."""

    def __init__(self, ledger: Ledger, name: str, replica: str, ttl: float = 5.0) -> None:
        self.ledger, self.name, self.replica, self.ttl = ledger, name, replica, ttl
        self.base = f"{CONTROLLERS}{name}/"
        self.term = 0  # the leader key's revision while this replica leads, else 0
        self._lock = threading.Lock()
        self._presented = -ttl

    def lead(self, stop: threading.Event) -> bool:
        """Wait until this replica leads (True) or `stop` is set (False); then keep the lead renewed in a
        thread of its own until `resign` or deposition (`leading` turns False)."""
        seen: dict[str, int] = {}
        still_since = time.monotonic()
        while not stop.is_set():
            try:
                self._present()
                now = {k: self._revision(k) for k in ("leader", "heartbeat")}
                leader = now["leader"]
                if now != seen:
                    seen, still_since = now, time.monotonic()
                if (not leader or time.monotonic() - still_since >= self.ttl) and self._take(seen):
                    return True
            except Conflict:
                seen = {}
            except Unavailable as exc:
                log.warning("%s: %s", self.name, exc)
            stop.wait(self.ttl / 10)
        return False

    @property
    def leading(self) -> bool:
        return self.term != 0

    def fenced(self) -> Fenced:
        """The ledger as this leader writes it: every commit checks the term."""
        return Fenced(self.ledger, self)

    def resign(self) -> None:
        """Hand over at once: delete the leader key if it is still this replica's term."""
        with self._lock:
            term, self.term = self.term, 0
        with contextlib.suppress(Conflict, Unavailable):  # deposed already, or the heartbeat stops
            if term:
                self.ledger.commit({self.base + "leader": term}, [(self.base + "leader", None)])
            self.ledger.commit({}, [(self.base + f"replicas/{self.replica}", None)])

    def _take(self, seen: Mapping[str, int]) -> bool:
        since = time.time()
        record = json.dumps({"replica": self.replica, "since": since}).encode()
        checks = {self.base + k: v for k, v in seen.items()}
        try:
            term = self.ledger.commit(
                checks, [(self.base + "leader", record), (self.base + "heartbeat", b"0")]
            )
        except Conflict:
            return False
        with self._lock:
            self.term = term
        log.info("%s: %s leads from revision %d", self.name, self.replica, term)
        threading.Thread(target=self._renew, args=(term,), daemon=True, name=f"lease-{self.name}").start()
        return True

    def _renew(self, term: int) -> None:
        beat = 0
        while self.term == term:
            time.sleep(self.ttl / 3)
            beat += 1
            try:
                if self.term == term:
                    heartbeat = (self.base + "heartbeat", str(beat).encode())
                    self.ledger.commit({self.base + "leader": term}, [heartbeat])
                    self._present()
            except Conflict:
                with self._lock:
                    if self.term == term:
                        self.term = 0
                log.warning("%s: %s was deposed", self.name, self.replica)
            except Unavailable as exc:
                log.warning("%s: cannot renew the lead: %s", self.name, exc)

    def _revision(self, key: str) -> int:
        found = self.ledger.get(self.base + key)
        return found.mod_revision if found else 0

    def _present(self) -> None:
        """Say this replica is here, every TTL/3 at most."""
        if time.monotonic() - self._presented < self.ttl / 3:
            return
        key = self.base + f"replicas/{self.replica}"
        found = self.ledger.get(key)
        since = json.loads(found.value)["since"] if found else time.time()
        self.ledger.commit({}, [(key, json.dumps({"since": since, "seen": time.time()}).encode())])
        self._presented = time.monotonic()


Work = Callable[[Ledger, threading.Event], None]


def elected(election: Election, stop: threading.Event, work: Work) -> None:
    """Run `work(fenced ledger, term)` whenever this replica leads, until `stop`: `term` is set when `stop`
    is or the lead is lost, and `work` returns then (or raises Deposed); then campaign again. Resigns last."""
    try:
        while election.lead(stop):
            term = threading.Event()
            threading.Thread(target=_end, args=(election, stop, term), daemon=True).start()
            with contextlib.suppress(Deposed):  # a commit refused for the term: the lead is lost
                work(election.fenced(), term)
            term.set()
            if not stop.is_set():
                log.warning("%s: %s no longer leads; standing by", election.name, election.replica)
                election.term = 0
    finally:
        election.resign()


def _end(election: Election, stop: threading.Event, term: threading.Event) -> None:
    """Set `term` once `stop` is set or the lead is lost."""
    while not term.is_set() and election.leading and not stop.wait(0.1):
        pass
    term.set()


class Fenced(Ledger):
    """A ledger whose commits succeed only while `election` holds its term; reads and watches as the
    ledger's. A commit refused for the term raises Deposed and ends the term."""

    def __init__(self, ledger: Ledger, election: Election) -> None:
        self.inner, self.election = ledger, election

    def commit(self, checks: Mapping[str, int], ops: Sequence[Op]) -> int:
        key, term = self.election.base + "leader", self.election.term
        if not term:
            raise Deposed(f"{self.election.replica} does not lead {self.election.name}")
        try:
            return self.inner.commit({**checks, key: term}, ops)
        except Conflict as exc:
            if exc.key != key:
                raise
            self.election.term = 0
            raise Deposed(f"{self.election.replica} no longer leads {self.election.name}") from None

    def revision(self) -> int:
        return self.inner.revision()

    def get(self, key: str) -> KeyValue | None:
        return self.inner.get(key)

    def snapshot(self, start: str, end: str, limit: int | None = None) -> tuple[list[KeyValue], int]:
        return self.inner.snapshot(start, end, limit)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def follow(self, ranges: Mapping[str, int]) -> Watch:
        return self.inner.follow(ranges)


def controllers(ledger: Ledger, stale: float = 30.0) -> list[Controller]:
    """Every controller with its leader and the standbys seen in the last `stale` seconds."""
    found: dict[str, dict[str, KeyValue]] = {}
    for kv in ledger.list(CONTROLLERS)[0]:
        name, _, rest = kv.key.removeprefix(CONTROLLERS).partition("/")
        found.setdefault(name, {})[rest] = kv
    shown = []
    for name, keys in sorted(found.items()):
        leader = json.loads(keys["leader"].value) if "leader" in keys else {}
        replicas = {
            k.removeprefix("replicas/"): json.loads(kv.value)
            for k, kv in keys.items()
            if k.startswith("replicas/")
        }
        current = leader.get("replica")
        standbys = sorted(r for r, s in replicas.items() if r != current and time.time() - s["seen"] < stale)
        shown.append(Controller(name, leader.get("replica"), leader.get("since"), standbys))
    return shown
