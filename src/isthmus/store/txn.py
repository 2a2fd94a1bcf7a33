"""Optimistic transactions over a ledger: read, decide, then commit only if nothing read has changed.

Every `get` records the key's mod revision as a check and reads it once (repeatable reads), so a committed
transaction is serialisable for the keys it read. `range` and `peek` record nothing: use them for hints, and
`get` the keys a decision rests on. A transaction sees its own writes. `prefetch` reads a key range whole,
once: later reads inside it are answered from that read, and a `get` answered so still records the key's
revision as a check (0 when absent), so serialisability is unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sortedcontainers import SortedDict

from isthmus.store.ledger import Conflict, KeyValue, Ledger, Op

T = TypeVar("T")


class Txn:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.checks: dict[str, int] = {}
        self._read: dict[str, bytes | None] = {}
        self.writes: SortedDict = SortedDict()  # key -> value, None for a delete
        self.decoded: dict[str, tuple[bytes, int | None, Any]] = {}  # key -> value, revision, its decoding
        self._fetched: list[tuple[str, str]] = []  # ranges [start, end) read whole: disjoint, in key order
        self._stored: SortedDict = SortedDict()  # key -> KeyValue: every key those reads found

    def prefetch(self, start: str, end: str) -> None:
        """Read [start, end) whole (unless it has been); later reads inside it are answered from this read."""
        if self._covers(start, end):
            return
        items, _ = self.ledger.snapshot(start, end)
        for key in list(self._stored.irange(start, end, inclusive=(True, False))):
            del self._stored[key]
        self._stored.update((kv.key, kv) for kv in items)
        joined = [(lo, hi) for lo, hi in self._fetched if lo <= end and start <= hi]
        whole = (min([start, *(lo for lo, _ in joined)]), max([end, *(hi for _, hi in joined)]))
        self._fetched = sorted([*(r for r in self._fetched if r not in joined), whole])

    def _covers(self, start: str, end: str) -> bool:
        """Whether [start, end) lies within a range read whole."""
        i = bisect.bisect_right(self._fetched, start, key=lambda r: r[0])
        return i > 0 and end <= self._fetched[i - 1][1]

    def _stored_kv(self, key: str) -> KeyValue | None:
        """The key as stored: from a range read whole if one holds it, else from the ledger."""
        if self._covers(key, key + "\0"):
            found: KeyValue | None = self._stored.get(key)
            return found
        return self.ledger.get(key)

    def _stored_range(self, start: str, end: str, limit: int | None) -> list[KeyValue]:
        """Keys in [start, end) as stored: from a range read whole if one holds them, else from the ledger."""
        if not self._covers(start, end):
            return self.ledger.range(start, end, limit)
        keys = itertools.islice(self._stored.irange(start, end, inclusive=(True, False)), limit)
        return [self._stored[key] for key in keys]

    def get(self, key: str) -> bytes | None:
        if key in self.writes:
            value: bytes | None = self.writes[key]
            return value
        if key not in self.checks:
            kv = self._stored_kv(key)
            self.checks[key] = kv.mod_revision if kv else 0
            self._read[key] = kv.value if kv else None
        return self._read[key]

    def peek(self, key: str) -> bytes | None:
        if key in self.writes:
            value: bytes | None = self.writes[key]
            return value
        kv = self._stored_kv(key)
        return kv.value if kv else None

    def range(self, start: str, end: str, limit: int | None = None) -> list[tuple[str, bytes]]:
        pending = {k: self.writes[k] for k in self.writes.irange(start, end, inclusive=(True, False))}
        deleted = sum(1 for v in pending.values() if v is None)
        stored = self._stored_range(start, end, None if limit is None else limit + deleted)
        merged = {kv.key: kv.value for kv in stored} | pending
        items = sorted((k, v) for k, v in merged.items() if v is not None)
        return items if limit is None else items[:limit]

    def put(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None

    def ops(self) -> list[Op]:
        return list(self.writes.items())


def transact(ledger: Ledger, work: Callable[[Txn], T], attempts: int = 100) -> tuple[T, int]:
    """Run `work` in a fresh transaction and commit it, again from the start on Conflict.

    `work` may raise Conflict itself when what it read is already stale.
    Returns what `work` returned and the revision the commit made (the current one if it wrote nothing).
    """
    attempt = 0
    while True:
        txn = Txn(ledger)
        try:
            result = work(txn)
            revision = ledger.commit(txn.checks, txn.ops()) if txn.writes else ledger.revision()
            return result, revision
        except Conflict:
            attempt += 1
            if attempt >= attempts:
                raise
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
