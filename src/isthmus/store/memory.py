"""The in-memory ledger: for tests and what-if analysis; lost when the process ends."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence

from sortedcontainers import SortedDict

from isthmus.store.ledger import Compacted, Conflict, Event, EventType, KeyValue, LoggedLedger, Op


class MemoryLedger(LoggedLedger):
    def __init__(self, history: int = 1_000_000) -> None:
        self._data: SortedDict = SortedDict()
        self._log: list[Event] = []
        self._log_revs: list[int] = []
        self._revision = 0
        self._compacted = 0
        self._history = history
        self._changed = threading.Condition()

    def revision(self) -> int:
        return self._revision

    def compacted(self) -> int:
        return self._compacted

    def get(self, key: str) -> KeyValue | None:
        kv: KeyValue | None = self._data.get(key)
        return kv

    def snapshot(self, start: str, end: str, limit: int | None = None) -> tuple[list[KeyValue], int]:
        with self._changed:
            keys = self._data.irange(start, end, inclusive=(True, False))
            items: list[KeyValue] = []
            for key in keys:
                if limit is not None and len(items) >= limit:
                    break
                items.append(self._data[key])
            return items, self._revision

    def commit(self, checks: Mapping[str, int], ops: Sequence[Op]) -> int:
        with self._changed:
            for key, expected in checks.items():
                current = self._data.get(key)
                actual = current.mod_revision if current else 0
                if actual != expected:
                    raise Conflict(key, expected, actual)
            revision = self._revision + 1
            events = []
            for key, value in ops:
                old: KeyValue | None = self._data.get(key)
                if value is None:
                    if old is not None:
                        del self._data[key]
                        events.append(Event(EventType.DELETE, key, b"", revision))
                    continue
                self._data[key] = KeyValue(
                    key,
                    value,
                    old.create_revision if old else revision,
                    revision,
                    old.version + 1 if old else 1,
                )
                events.append(Event(EventType.PUT, key, value, revision))
            if not events:
                return self._revision
            self._revision = revision
            self._log += events
            self._log_revs += [revision] * len(events)
            if revision - self._compacted > self._history * 2:
                self.compact(revision - self._history)
            self._changed.notify_all()
            return revision

    def compact(self, revision: int) -> None:
        with self._changed:
            revision = min(revision, self._revision)
            if revision <= self._compacted:
                return
            cut = bisect.bisect_right(self._log_revs, revision)
            del self._log[:cut], self._log_revs[:cut]
            self._compacted = revision

    def _events(self, start: str, end: str, after: int, limit: int) -> list[Event]:
        with self._changed:
            if after < self._compacted:
                raise Compacted(after, self._compacted)
            found: list[Event] = []
            for i in range(bisect.bisect_right(self._log_revs, after), len(self._log)):
                event = self._log[i]
                if len(found) >= limit and event.revision != found[-1].revision:
                    break
                if start <= event.key < end:
                    found.append(event)
            return found

    def _wait(self, after: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._revision > after, timeout)
