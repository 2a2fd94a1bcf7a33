"""The ledger interface: an ordered key-value store with revisions, watches and compare-and-swap commits.

Shaped like etcd v3 so that an etcd backend fits without change to callers:
- every commit that changes something gets the next revision; each key keeps create/mod revision and version;
- `commit` applies its writes only if every checked key still has the expected mod revision (0: absent);
- `watch(prefix, after)` yields every change with revision > `after`, in order, then live changes; a revision
  older than the compaction point raises Compacted, and the caller relists.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class LedgerError(Exception):
    """Base of the ledger's errors."""


class Conflict(LedgerError):
    """A checked key changed since it was read: re-read and try again."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"conflict on {key}: expected revision {expected}, found {actual}")
        self.key, self.expected, self.actual = key, expected, actual


class Compacted(LedgerError):
    """The requested revision is no longer in the history: relist, then watch from the list's revision."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (history starts after {compacted}); relist")
        self.requested, self.compacted = requested, compacted


class Unavailable(LedgerError):
    """The store could not be reached or has no quorum; the message names the store and the cause."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class EventType(Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    value: bytes  # empty for DELETE
    revision: int


Op = tuple[str, bytes | None]  # (key, value); None deletes


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class Ledger(ABC):
    """One store of all intent and allocations; everything else is derived from it."""

    @abstractmethod
    def revision(self) -> int:
        """The revision of the last commit (the store's first revision for an empty ledger)."""

    @abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def snapshot(self, start: str, end: str, limit: int | None = None) -> tuple[list[KeyValue], int]:
        """Keys in [start, end) in key order, and the revision they were read at."""

    @abstractmethod
    def commit(self, checks: Mapping[str, int], ops: Sequence[Op]) -> int:
        """Atomically apply `ops` if every key in `checks` has that mod revision (0: absent).

        Returns the new revision, or the current one when nothing changed. Raises Conflict.
        """

    @abstractmethod
    def compact(self, revision: int) -> None:
        """Drop history up to and including `revision`."""

    @abstractmethod
    def watch(self, prefix: str, after: int) -> Watch:
        """Changes under `prefix` with revision > `after`; raises Compacted (now or on a later poll)."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release resources; the ledger must not be used afterwards."""

    def range(self, start: str, end: str, limit: int | None = None) -> list[KeyValue]:
        return self.snapshot(start, end, limit)[0]

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return self.snapshot(prefix, prefix_end(prefix))


class Watch(ABC):
    """Changes under a prefix after a revision, in order, never splitting a revision between polls.

    `.revision`: every change under the prefix up to it has been returned; resume a new watch from it.
    A poll raises Compacted when the history it needs is gone: relist, then watch from the list's revision.
    """

    revision: int
    live = True  # the watch hears its store now (a remote store's stream may be opening again)

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> list[Event]:
        """The next events, waiting up to `timeout` seconds for some."""

    @abstractmethod
    def close(self) -> None: ...


class LoggedLedger(Ledger):
    """A ledger that keeps its own change log (memory, SQLite): its watches poll that log."""

    @abstractmethod
    def compacted(self) -> int:
        """History holds every revision above this one."""

    @abstractmethod
    def _events(self, start: str, end: str, after: int, limit: int) -> list[Event]:
        """Changes to keys in [start, end) with revision > after, oldest first; raises Compacted.

        At least `limit` events when there are that many, always ending with a whole revision.
        """

    @abstractmethod
    def _wait(self, after: int, timeout: float) -> None:
        """Return when the revision passes `after`, or after `timeout` seconds."""

    def watch(self, prefix: str, after: int) -> Watch:
        if after < self.compacted():
            raise Compacted(after, self.compacted())
        return LogWatch(self, prefix, after)


class LogWatch(Watch):
    BATCH = 1000

    def __init__(self, ledger: LoggedLedger, prefix: str, after: int) -> None:
        self._ledger, self._start, self._end = ledger, prefix, prefix_end(prefix)
        self.revision = after
        self._closed = threading.Event()

    def poll(self, timeout: float = 0.0) -> list[Event]:
        events = self._fetch()
        if not events and timeout > 0 and not self._closed.is_set():
            self._ledger._wait(self.revision, timeout)
            events = self._fetch()
        return events

    def _fetch(self) -> list[Event]:
        head = self._ledger.revision()
        events = self._ledger._events(self._start, self._end, self.revision, self.BATCH)
        last = events[-1].revision if events else self.revision
        # Everything up to `head` under this prefix has been seen unless the batch was cut short.
        self.revision = last if len(events) >= self.BATCH else max(last, head)
        return events

    def close(self) -> None:
        self._closed.set()
