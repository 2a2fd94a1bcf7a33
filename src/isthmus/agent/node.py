"""The node agent: watches the ledger from a revision, compiles, and has the kernel driver hold its node's
plan. Level-triggered: after a restart it lists, compiles and applies only what the kernel lacks."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from isthmus.compile import Compiler
from isthmus.compile.compiler import Unit
from isthmus.compile.state import LocalEntry
from isthmus.dataplane.kernel.driver import Driver
from isthmus.dataplane.kernel.plan import Veth, plan, veth_name
from isthmus.model import Object
from isthmus.store import Compacted, Event, EventType, Ledger
from isthmus.store.ledger import prefix_end
from isthmus.store.objects import OBJECTS, _decode, decode, parse_key

log = logging.getLogger("isthmus.agent")


@dataclass
class Metrics:
    reconciles: int = 0
    errors: int = 0
    last_seconds: float = 0.0
    total_seconds: float = 0.0
    objects: int = 0
    latencies: list[float] = field(default_factory=list)

    def text(self, node: str) -> str:
        """Prometheus exposition format."""
        label = f'{{node="{node}"}}'
        return "".join(
            f"# TYPE isthmus_agent_{name} {kind}\nisthmus_agent_{name}{label} {value}\n"
            for name, kind, value in (
                ("reconciles_total", "counter", self.reconciles),
                ("reconcile_errors_total", "counter", self.errors),
                ("reconcile_seconds_total", "counter", round(self.total_seconds, 6)),
                ("reconcile_last_seconds", "gauge", round(self.last_seconds, 6)),
                ("objects_programmed", "gauge", self.objects),
            )
        )


class Agent:
    """Holds the node's compiler and driver; every method takes the lock, so CNI requests and ledger
    changes are applied one at a time."""

    def __init__(self, ledger: Ledger, node: str, driver: Driver) -> None:
        self.ledger, self.node, self.driver = ledger, node, driver
        self.lock = threading.RLock()
        self.metrics = Metrics()
        self.problems: dict[str, str] = {}
        self.compiler, self.revision = self._list()
        self.reconcile()

    def _list(self) -> tuple[Compiler, int]:
        found, revision = self.ledger.snapshot(OBJECTS, prefix_end(OBJECTS))
        return Compiler(decode(kv) for kv in found if _kind(kv.key) in Compiler.KINDS), revision

    def reconcile(self) -> None:
        with self.lock:
            started = time.perf_counter()
            failed = self.driver.apply(plan(self.compiler.node_state(self.node)))
            self.problems = {" ".join(map(str, k)): reason for k, reason in failed.items()}
            elapsed = time.perf_counter() - started
            self.metrics.reconciles += 1
            self.metrics.errors += 1 if failed else 0
            self.metrics.last_seconds, self.metrics.total_seconds = (
                elapsed,
                self.metrics.total_seconds + elapsed,
            )
            self.metrics.objects = len(self.driver.current)

    def endpoint(self, namespace: str, name: str) -> Veth | None:
        """The local endpoint's attachment, as the compiled state of this node has it."""
        with self.lock:
            ref = f"{namespace}/{name}" if namespace else name
            entries = [
                e
                for e in self.compiler.node_state(self.node).own.values()
                if isinstance(e, LocalEntry) and e.endpoint == ref
            ]
            if not entries:
                return None
            addresses = tuple(str(e.address) for e in entries)
            return Veth(ref, entries[0].network, addresses, entries[0].mac)

    def status(self) -> dict[str, object]:
        with self.lock:
            endpoints = {}
            for entry in self.compiler.node_state(self.node).own.values():
                if isinstance(entry, LocalEntry):
                    reason = self.problems.get(f"veth {veth_name(entry.endpoint)}")
                    endpoints[entry.endpoint] = {"programmed": reason is None} | (
                        {"reason": reason} if reason else {}
                    )
            return {
                "node": self.node,
                "revision": self.revision,
                "endpoints": endpoints,
                "problems": self.problems,
            }

    def run(self, stop: threading.Event) -> None:
        """Follow the ledger until `stop` is set."""
        while not stop.is_set():
            try:
                watch = self.ledger.watch(OBJECTS, self.revision)
                while not stop.is_set():
                    events = watch.poll(timeout=0.5)
                    if events:
                        self._changed(events, watch.revision)
                    elif self.problems:
                        self.reconcile()  # retry what could not be made
            except Compacted:
                log.warning("watch from %d compacted; listing again", self.revision)
                with self.lock:
                    self.compiler, self.revision = self._list()
                self.reconcile()

    def _changed(self, events: list[Event], revision: int) -> None:
        last = {e.key: e for e in events if _kind(e.key) in Compiler.KINDS}  # the last change of each wins
        puts: list[Object] = []
        deletes: list[Unit] = []
        for event in last.values():
            if event.type is EventType.PUT:
                puts.append(_decode(event.value, event.revision))
            else:
                info, namespace, name = parse_key(event.key)
                deletes.append((info.kind, namespace or "", name))
        with self.lock:
            self.revision = revision
            delta = self.compiler.change(puts, deletes) if puts or deletes else None
        if delta and (delta.puts.keys() | delta.deletes.keys()) & {"", self.node}:
            self.reconcile()


def _kind(key: str) -> str:
    parts = key.removeprefix(OBJECTS).split("/")
    return parts[1] if len(parts) > 1 else ""
