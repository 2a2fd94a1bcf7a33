"""The etcd ledger: the ledger on an etcd v3 cluster, for Isthmus on many machines.

Keys and revisions are etcd's own: a commit is one txn comparing mod revisions; a listing is paged at one
revision; a watch is one etcd watch stream read by a thread of its own. Watches require a leader, move to
another member from the last revision + 1 when their stream breaks, turn a compaction into Compacted, and
treat events that do not move forward (duplicates or regressions, known etcd 3.4.23 watch bugs) as a reason
to relist: they raise Compacted too.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from isthmus.store.etcd_gateway import Gateway, b64, unb64
from isthmus.store.ledger import (
    Compacted,
    Conflict,
    Event,
    EventType,
    KeyValue,
    Ledger,
    LedgerError,
    Op,
    Unavailable,
    Watch,
    prefix_end,
)

PAGE = 1000  # keys per range request of a listing
# A member takes ~30 µs per compare or operation of a big txn (bench/store.py: the cold translation of 10,000
# pods has 126,000, 3.7 s, most in the JSON gateway). A commit waits 100 µs each beyond the unary timeout, or
# it would be sent again while still being applied, meet a Conflict and make the caller redo all its work.
SECONDS_PER_TXN_ENTRY = 100e-6


class EtcdLedger(Ledger):
    def __init__(self, gateway: Gateway, watch_timeout: float = 5.0) -> None:
        """`watch_timeout`: a stream silent this long is taken as lost, and opened again (the project's
        members send progress at least every 2 s: their 1 s interval, at most twice)."""
        self.gateway = gateway
        self._watch_timeout = watch_timeout

    def revision(self) -> int:
        return _revision(self.gateway.call("/v3/kv/range", {"key": b64("/"), "count_only": True}))

    def get(self, key: str) -> KeyValue | None:
        found = self.gateway.call("/v3/kv/range", {"key": b64(key)}).get("kvs", [])
        return _kv(found[0]) if found else None

    def read(self, keys: Sequence[str]) -> tuple[dict[str, KeyValue], int]:
        """One read-only txn: every key at one revision, in one round trip."""
        ranges = [{"request_range": {"key": b64(key)}} for key in keys]
        answer = self.gateway.call("/v3/kv/txn", {"success": ranges})
        found = (_kv(kv) for r in answer.get("responses", []) for kv in r["response_range"].get("kvs", []))
        return {kv.key: kv for kv in found}, _revision(answer)

    def snapshot(self, start: str, end: str, limit: int | None = None) -> tuple[list[KeyValue], int]:
        """Page after page at the first page's revision; compacted past it meanwhile, read again."""
        while True:
            with contextlib.suppress(Compacted):
                return self._pages(start, end, limit)

    def _pages(self, start: str, end: str, limit: int | None) -> tuple[list[KeyValue], int]:
        items: list[KeyValue] = []
        at = 0
        while limit is None or len(items) < limit:
            page = PAGE if limit is None else min(PAGE, limit - len(items))
            request: dict[str, Any] = {"key": b64(start or "\0"), "range_end": b64(end), "limit": page}
            if at:
                request["revision"] = at
            answer = self.gateway.call("/v3/kv/range", request)
            at = at or _revision(answer)
            items += [_kv(kv) for kv in answer.get("kvs", [])]
            if not answer.get("more"):
                break
            start = items[-1].key + "\0"
        return items, at

    def commit(self, checks: Mapping[str, int], ops: Sequence[Op]) -> int:
        request = {
            "compare": [_unchanged(key, expected) for key, expected in checks.items()],
            "success": [
                {"request_delete_range": {"key": b64(key)}}
                if value is None
                else {"request_put": {"key": b64(key), "value": b64(value)}}
                for key, value in ops
            ],
        }
        entries = len(checks) + len(ops)
        answer = self.gateway.call(
            "/v3/kv/txn", request, timeout=self.gateway.timeout + entries * SECONDS_PER_TXN_ENTRY
        )
        if not answer.get("succeeded"):
            raise self._conflict(checks)
        return _revision(answer)

    def _conflict(self, checks: Mapping[str, int]) -> Conflict:
        """The first checked key that no longer has its expected revision (read after the failed txn)."""
        for key, expected in checks.items():
            kv = self.get(key)
            actual = kv.mod_revision if kv else 0
            if actual != expected:
                return Conflict(key, expected, actual)
        key, expected = next(iter(checks.items()))
        return Conflict(key, expected, expected)  # changed and changed back meanwhile

    def compact(self, revision: int) -> None:
        revision = min(revision, self.revision())
        with contextlib.suppress(Compacted):  # compacted already up to there or beyond
            self.gateway.call("/v3/kv/compaction", {"revision": revision})

    def follow(self, ranges: Mapping[str, int]) -> Watch:
        return EtcdWatch(self, ranges)

    def close(self) -> None:
        self.gateway.close()


class EtcdWatch(Watch):
    """One stream with a watcher per prefix; a thread reads it into a queue; `poll` returns what has
    arrived, in order for each prefix.

    Only the first watcher asks for progress notifications (one a second per stream, not per prefix: a
    node's slice is tens of prefixes, and thousands of nodes share the store). A prefix's position moves
    with its own events alone, so a resumed stream loses nothing; `revision` is what the first watcher
    has heard: etcd sends a watcher's events on the stream before a later progress notification, unless
    the watcher is still catching up on history (just created, or after the stream fell behind).
    """

    BATCH = 1000

    def __init__(self, ledger: EtcdLedger, ranges: Mapping[str, int]) -> None:
        self.positions = dict(ranges)
        self._heard = min(ranges.values())
        self._gateway, self._timeout = ledger.gateway, ledger._watch_timeout
        self._queue: queue.Queue[tuple[str, list[Event], int] | LedgerError] = queue.Queue()
        self._closed = threading.Event()
        self._failed: LedgerError | None = None
        self.live = False
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, daemon=True, name="etcd-watch")
        self._thread.start()

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """What arrived; the stream's end (an error) once everything before it has been returned."""
        if self._failed is not None:
            raise self._failed
        events: list[Event] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if isinstance(item, LedgerError):
                    self._failed = item  # every later poll fails the same way
                    if events:
                        break
                    raise item
                prefix, found, header = item
                events += found
                if found:
                    self.positions[prefix] = max(self.positions[prefix], found[-1].revision)
                if prefix == self._first:
                    self._heard = max(self._heard, found[-1].revision if found else header)
                if len(events) >= self.BATCH:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return events

    @property
    def revision(self) -> int:
        return max(self._heard, min(self.positions.values()))

    @property
    def _first(self) -> str:
        return next(iter(self.positions))

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def _follow(self) -> None:
        """Read streams until closed, resuming on any member after the last revision of each prefix."""
        positions = dict(self.positions)
        try:
            while not self._closed.is_set():
                self._read(positions)
        except LedgerError as exc:
            if not self._closed.is_set():
                self._queue.put(exc)

    def _read(self, positions: dict[str, int]) -> None:
        """One stream from `positions`, which it advances as it delivers."""
        prefixes = list(positions)
        requests = [
            {
                "create_request": {
                    "key": b64(prefix),
                    "range_end": b64(prefix_end(prefix)),
                    "start_revision": positions[prefix] + 1,
                    "progress_notify": i == 0,
                }
            }
            for i, prefix in enumerate(prefixes)
        ]
        self._stream = self._gateway.watch(requests, read_timeout=self._timeout)
        if self._closed.is_set():
            self._stream.close()
        created = 0
        try:
            for result in self._stream:
                if result.get("canceled"):
                    compacted = int(result.get("compact_revision", 0))
                    if compacted:
                        raise Compacted(min(positions.values()), compacted)
                    reason = str(result.get("cancel_reason", result))
                    if "auth token" in reason:  # a restarted member knows no token issued before
                        self._gateway.forget_token()
                        return
                    raise Unavailable(f"store {self._gateway.name}: watch cancelled: {reason}")
                if result.get("created"):
                    created += 1
                    self.live = created == len(prefixes)
                    continue
                prefix = prefixes[int(result.get("watch_id", 0))]  # ids count from 0 in creation order
                after = positions[prefix]
                events = [_event(e) for e in result.get("events", [])]
                if events and events[0].revision <= after:
                    raise WentBack(after, events[0].revision)
                if events:
                    positions[prefix] = events[-1].revision
                self._queue.put((prefix, events, _revision(result)))  # no events: a progress notification
        except Unavailable:
            self.live = False
            if not created and not self._closed.is_set():
                raise  # the member took the stream but could not serve it: no member can, now
        # the stream broke after serving: resume, on another member if need be


class WentBack(Compacted):
    """A watch delivered a revision not after the last one: etcd 3.4.23's watch bugs; relist."""

    whole = True

    def __init__(self, delivered: int, received: int) -> None:
        LedgerError.__init__(
            self, f"watch went back from revision {delivered} to {received}; relist (etcd watch bug)"
        )
        self.requested, self.compacted = delivered, received


def _unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    """A compare that the key has this mod revision. Absent (0) is version 0, which the key alone says
    (proto3's defaults: target VERSION, result EQUAL, 0): less for the gateway to parse in a cold commit."""
    if mod_revision == 0:
        return {"key": b64(key)}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


def _revision(answer: dict[str, Any]) -> int:
    return int(answer["header"]["revision"])


def _kv(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        unb64(kv["key"]).decode(),
        unb64(kv.get("value", "")),
        int(kv.get("create_revision", 0)),
        int(kv.get("mod_revision", 0)),
        int(kv.get("version", 0)),
    )


def _event(event: dict[str, Any]) -> Event:
    kv = event["kv"]
    deleted = event.get("type") == "DELETE"
    return Event(
        EventType.DELETE if deleted else EventType.PUT,
        unb64(kv["key"]).decode(),
        b"" if deleted else unb64(kv.get("value", "")),
        int(kv["mod_revision"]),
    )
