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
    """The requested revision is no longer in the history: relist, then watch from the list's revision.
    A watch of several prefixes need relist only those whose position is before `compacted`, unless
    `whole` (the watch itself went wrong)."""

    whole = False

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

    def watch(self, prefix: str, after: int) -> Watch:
        """Changes under `prefix` with revision > `after`; raises Compacted (now or on a later poll)."""
        return self.follow({prefix: after})

    @abstractmethod
    def follow(self, ranges: Mapping[str, int]) -> Watch:
        """Changes under each prefix (disjoint) with revision > its own, on one stream; raises Compacted
        (now or on a later poll) when one of them is gone from the history."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release resources; the ledger must not be used afterwards."""

    def range(self, start: str, end: str, limit: int | None = None) -> list[KeyValue]:
        return self.snapshot(start, end, limit)[0]

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return self.snapshot(prefix, prefix_end(prefix))

    def read(self, keys: Sequence[str]) -> tuple[dict[str, KeyValue], int]:
        """The keys present among `keys`, and a revision they are no older than."""
        revision = self.revision()
        return {key: kv for key in keys if (kv := self.get(key)) is not None}, revision


class Watch(ABC):
    """Changes under prefixes, each after its own revision, in order for each prefix; one prefix's changes
    of a revision never split between polls (another prefix's changes of it may come in another poll).

    `.positions`: for each prefix, every change under it up to that revision has been returned: resume a
    new watch from there. `.revision`: the store's revision that every prefix is current with, as far as
    the watch has heard (at least the least position). A poll raises Compacted when the history it needs
    is gone: relist, then watch from the list's revision.
    """

    positions: dict[str, int]

    @property
    def revision(self) -> int:
        return min(self.positions.values())

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

    def follow(self, ranges: Mapping[str, int]) -> Watch:
        oldest = min(ranges.values())
        if oldest < self.compacted():
            raise Compacted(oldest, self.compacted())
        return LogWatch(self, ranges)


class LogWatch(Watch):
    BATCH = 1000

    def __init__(self, ledger: LoggedLedger, ranges: Mapping[str, int]) -> None:
        self._ledger = ledger
        self.positions = dict(ranges)
        self._closed = threading.Event()

    def poll(self, timeout: float = 0.0) -> list[Event]:
        events = self._fetch()
        if not events and timeout > 0 and not self._closed.is_set():
            self._ledger._wait(self.revision, timeout)
            events = self._fetch()
        return events

    def _fetch(self) -> list[Event]:
        head = self._ledger.revision()
        batches = [
            self._ledger._events(prefix, prefix_end(prefix), after, self.BATCH)
            for prefix, after in self.positions.items()
        ]
        # Everything up to `head` under a prefix has been seen unless its batch was cut short.
        upto = min((b[-1].revision for b in batches if len(b) >= self.BATCH), default=head)
        events = sorted((e for b in batches for e in b if e.revision <= upto), key=lambda e: e.revision)
        self.positions = {prefix: max(after, upto) for prefix, after in self.positions.items()}
        return events

    def close(self) -> None:
        self._closed.set()
