"""The node agent: watches the ledger from a revision, compiles, and has the kernel driver hold its node's
plan. Incremental: a batch of ledger changes gives the compiler's delta, the delta the plan keys that
changed, and the driver applies those alone (nftables in one transaction). Level-triggered where it
matters: at start and after a relist it plans from scratch and compares the whole plan with what the
kernel holds, so a restart applies only the difference."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Collection

from isthmus.agent.bgp import Announcer
from isthmus.agent.flows import Names, Recorder, names_of
from isthmus.agent.metrics import AgentMetrics, BgpCollector
from isthmus.agent.slice import Slice, Unit, interest, prefixes
from isthmus.compile import Compiler
from isthmus.compile.announce import announced
from isthmus.compile.state import Delta, Key, LocalEntry
from isthmus.dataplane.kernel.driver import Driver
from isthmus.dataplane.kernel.plan import Planner, Veth, veth_name
from isthmus.model import Endpoint, Node, Object
from isthmus.store import Compacted, Event, Ledger, Unavailable, channels
from isthmus.store.objects import OBJECTS, STATUS

log = logging.getLogger("isthmus.agent")


class Agent:
    """Holds the node's compiler and driver; every method takes the lock, so CNI requests and ledger
    changes are applied one at a time. While the store cannot be reached the kernel keeps what it holds:
    the agent reports the store as its problem and retries; it relists only after a compaction."""

    RETRY = (0.1, 1.0)  # seconds between attempts to reach the store: first, most

    def __init__(self, ledger: Ledger, node: str, driver: Driver, announcer: Announcer | None = None) -> None:
        self.ledger, self.node, self.driver, self.announcer = ledger, node, driver, announcer
        self.lock = threading.RLock()
        self.metrics = AgentMetrics(node)
        if announcer is not None:
            self.metrics.watch(BgpCollector(node, self._bgp_report))
        self.problems: dict[str, str] = {}
        self.store_problem: str | None = None
        self.published = b""
        self.positions: dict[str, int] = {}  # watched channel prefix -> revision held
        self.heard = 0  # the store's revision its watch has heard the slice is current with
        self.slice = Slice(node)
        self.compiler = Compiler([])
        self.planner = Planner(self.compiler.node_state(node))
        self.listed = False
        self._names: tuple[int, Names] | None = None
        self.recorder: Recorder | None = None  # the node's flow records, when it keeps them
        self.control = ""  # the socket the agent answers on (CNI, its status, its flow records)
        try:
            self._list()
        except Unavailable as exc:
            self._unreachable(exc)

    @property
    def revision(self) -> int:
        """Every change of the node's slice up to here is held (as far as its watch has heard)."""
        return max(self.heard, min(self.positions.values(), default=0))

    def _list(self) -> None:
        """List the node's slice, compile and plan from scratch, compare the whole plan with the kernel."""
        with self.lock:
            started = time.perf_counter()
            self.positions, self.slice, self.compiler = {}, Slice(self.node), Compiler([])
            self._subscribe()
            self.metrics.lists.inc()
            self.planner = Planner(self.compiler.node_state(self.node))
            self._program(None, started)
            self._announce()
            self.listed = True
            self._reachable()

    def _relist(self, stale: set[str]) -> None:
        """List again the `stale` channels and any the node needs and lacks, and program the difference."""
        with self.lock:
            started = time.perf_counter()
            delta = self._subscribe(stale)
            if delta:
                self._program(self.planner.update(self.compiler.node_state(self.node), delta), started)

    def _subscribe(self, stale: Collection[str] = ()) -> Delta:
        """Widen or narrow the slice to what the node needs, to a fixed point (what a channel brings may
        call for more): list each new (or `stale`) channel, forget what only dropped ones held. The
        compiler's delta."""
        delta = Delta()
        while True:
            wanted = set(prefixes(interest(self.node, self.compiler)))
            added, gone = (wanted - set(self.positions)) | (wanted & set(stale)), set(self.positions) - wanted
            stale = ()
            if not (added or gone):
                return delta
            puts: list[Object] = []
            deletes: list[Unit] = []
            for prefix in sorted(added):
                found, self.positions[prefix] = self.ledger.list(prefix)
                listed, lost = self.slice.listed(Slice.split(prefix)[0], found)
                puts += listed
                deletes += lost
            for prefix in gone:
                deletes += self.slice.dropped(Slice.split(prefix)[0])
                del self.positions[prefix]
            merge(delta, self.compiler.change(puts, deletes))

    def _reachable(self) -> None:
        if self.store_problem is not None:
            log.info("store reachable again at revision %d", self.revision)
        self.store_problem = None
        self.metrics.store_up.set(1)

    def _unreachable(self, exc: Unavailable) -> None:
        if self.store_problem != str(exc):
            log.warning("%s; the kernel keeps its state, retrying", exc)
        self.store_problem = str(exc)
        self.metrics.store_up.set(0)
        self.metrics.store_errors.inc()

    def reconcile(self) -> None:
        """Try again what the kernel could not hold yet (after a CNI ADD made a veth, and periodically)."""
        with self.lock:
            self._program((), time.perf_counter())

    def changed(self, events: list[Event]) -> None:
        """Changes to the slice: compile their delta (and what a widened or narrowed slice brings), update
        the plan by it, program what changed."""
        puts, deletes = self.slice.changed(e for e in events if _compiled(e.key))
        heard = time.time()
        for changed in (o.metadata.changed_at for o in puts):
            if changed is not None:
                self.metrics.watch_lag_seconds.observe(max(0.0, heard - changed))
        with self.lock:
            started = time.perf_counter()
            if not (puts or deletes):
                return
            reshapes = self._reshapes(puts, deletes)
            delta = self.compiler.change(puts, deletes)
            if reshapes:
                merge(delta, self._subscribe())
            keys = self.planner.update(self.compiler.node_state(self.node), delta)
            if keys:
                self._program(keys, started)
            programmed = time.time()
            for changed in (o.metadata.changed_at for o in puts):
                if changed is not None:
                    self.metrics.programming_seconds.observe(max(0.0, programmed - changed))
            touched = [
                *(k for e in delta.puts.values() for k in e),
                *(k for d in delta.deletes.values() for k in d),
            ]
            mine = ("Node", "", self.node) in deletes or any(
                isinstance(o, Node) and o.metadata.name == self.node for o in puts
            )  # its BGP settings are not part of the compiled state
            if mine or any(k[0] in ("service", "node", "egressip", "block") for k in touched):
                self._announce()

    def _reshapes(self, puts: list[Object], deletes: list[Unit]) -> bool:
        """Whether a change may change what the node needs: its own endpoints, or what `interest` reads
        beyond them (namespaces, policies, floating IPs, networks)."""
        if any(kind in RESHAPING for kind, _, _ in deletes) or any(o.kind in RESHAPING for o in puts):
            return True
        held = self.compiler.objects["Endpoint"]
        return any(
            isinstance(e, Endpoint) and e.spec.node == self.node
            for e in [*puts, *(held.get((ns, name)) for kind, ns, name in deletes if kind == "Endpoint")]
        ) or any(
            isinstance(old, Endpoint) and old.spec.node == self.node
            for old in (held.get((o.metadata.namespace or "", o.metadata.name)) for o in puts)
        )

    def _announce(self) -> None:
        """Have the BGP speaker announce what the node's state says (nothing without settings)."""
        if self.announcer is not None:
            node = self.compiler.objects["Node"].get(("", self.node))
            state = self.compiler.node_state(self.node)
            self.announcer.update(node if isinstance(node, Node) else None, announced(state))

    def _program(self, keys: Collection[Key] | None, started: float) -> None:
        """Have the driver apply the plan's `keys` (None: compare all of it), and count the reconcile."""
        kernel = time.perf_counter()
        if keys is None:
            failed = self.driver.sync(self.planner.plan)
        else:
            failed = self.driver.apply(self.planner.plan, keys)
        self.problems = {" ".join(map(str, k)): reason for k, reason in failed.items()}
        done = time.perf_counter()
        self.metrics.reconciles.inc()
        if failed:
            self.metrics.errors.inc()
        self.metrics.reconcile_seconds.observe(done - started)
        self.metrics.kernel_seconds.observe(done - kernel)
        self.metrics.objects.set(len(self.driver.current))

    def metrics_text(self) -> str:
        return self.metrics.text()

    def _bgp_report(self) -> dict[str, object] | None:
        with self.lock:
            return self.announcer.report() if self.announcer is not None else None

    def names(self) -> Names:
        """Who the node's slice says each address is, for flow records (made again when it changed)."""
        with self.lock:
            if self._names is None or self._names[0] != self.revision:
                self._names = (self.revision, names_of(self.compiler.objects))
            return self._names[1]

    def words(self, prefix: str) -> str | None:
        """The deciding rule a flow-record prefix stands for, as the plan made it."""
        return self.planner.words.get(prefix)

    def endpoint(self, namespace: str, name: str) -> Veth | None:
        """The local endpoint's attachment, as this node's plan has it."""
        with self.lock:
            veth = self.planner.plan.get(("veth", veth_name(f"{namespace}/{name}" if namespace else name)))
            return veth if isinstance(veth, Veth) else None

    def status(self) -> dict[str, object]:
        with self.lock:
            endpoints = {}
            for entry in self.compiler.node_state(self.node).own.values():
                if isinstance(entry, LocalEntry):
                    reason = self.problems.get(f"veth {veth_name(entry.endpoint)}")
                    endpoints[entry.endpoint] = {"programmed": reason is None} | (
                        {"reason": reason} if reason else {}
                    )
            store = {"store": self.store_problem} if self.store_problem else {}
            return (
                {
                    "node": self.node,
                    "revision": self.revision,
                    "endpoints": endpoints,
                    "problems": self.problems | store,
                }
                | ({"bgp": self.announcer.report()} if self.announcer else {})
                | ({"control": self.control} if self.control else {})
            )

    def publish(self) -> None:
        """The node's status into the ledger (under STATUS, outside the objects), when it changed."""
        with self.lock:
            report = self.status() | {"problems": self.problems}  # written, so the store was reached
            report.pop("revision")
            body = json.dumps(report, sort_keys=True).encode()
            if body != self.published:
                self.ledger.commit({}, [(STATUS + self.node, body)])
                self.published = body

    def run(self, stop: threading.Event) -> None:
        """Follow the ledger until `stop` is set: resume from each channel's revision, relist the channels
        a compaction left behind (all of them when the watch went wrong), and before each watch bring the
        slice to what the node needs (a listing the store failed is tried again)."""
        delay = self.RETRY[0]
        stale: set[str] = set()
        while not stop.is_set():
            try:
                if not self.listed:
                    self._list()
                else:
                    self._relist(stale)
                stale = set()
                self._follow(stop)
            except Compacted as exc:
                stale = {p for p, r in self.positions.items() if r < exc.compacted}
                log.warning("%s: listing again %d of %d channels", exc, len(stale), len(self.positions))
                if exc.whole or not stale:
                    self.listed = False
            except Unavailable as exc:
                self._unreachable(exc)
                stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.RETRY[1])
                continue
            except Exception:  # an agent keeps the kernel and starts over rather than stop
                log.exception("unexpected error: listing again")
                self.listed = False
                stop.wait(self.RETRY[1])
            delay = self.RETRY[0]

    def _follow(self, stop: threading.Event) -> None:
        """Follow the slice's channels on one watch, until stopped or the slice changes; each channel that
        holds its last change (its stamp) is current with the revision the stamps were read at."""
        with self.lock:
            due = channels.due(self.ledger, self.positions)
            self.positions = channels.settle(self.positions, due)
            watch = self.ledger.follow(dict(self.positions))
        try:
            while not stop.is_set() and set(self.positions) == set(watch.positions):
                events = watch.poll(timeout=0.5)
                if watch.live:
                    self._reachable()
                if events:
                    self.changed(events)
                else:
                    if self.problems:
                        self.reconcile()  # retry what could not be made
                    if self.announcer is not None and self.announcer.error:
                        with self.lock:
                            self._announce()
                with self.lock:  # held now up to where the watch has returned every change
                    for prefix, revision in watch.positions.items():
                        if prefix in self.positions:
                            self.positions[prefix] = max(self.positions[prefix], revision)
                    self.positions = channels.settle(self.positions, due)
                    self.heard = max(self.heard, watch.revision)
                self.publish()
        finally:
            watch.close()


RESHAPING = {"Namespace", "NetworkPolicy", "SecurityGroup", "Policy", "FloatingIP", "VirtualNetwork"}


def _compiled(key: str) -> bool:
    return Slice.split(key)[1].removeprefix(OBJECTS).split("/")[1] in Compiler.KINDS


def merge(delta: Delta, more: Delta) -> None:
    """Add a later delta to `delta`."""
    for scope, entries in more.puts.items():
        for key, entry in entries.items():
            delta.put(scope, key, entry)
    for scope, keys in more.deletes.items():
        for key in keys:
            delta.delete(scope, key)
