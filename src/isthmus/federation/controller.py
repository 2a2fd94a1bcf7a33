"""The cluster's federation controller: it keeps its VPNv4 speaker (one BIRD, `bgp.bird.Bird`) announcing
the routes of the cluster's networks with export targets, and keeps the ledger's ImportedRoutes equal to
the routes its peers announce. The compiler does the rest: a network that imports one of a route's
targets reaches its prefix over VXLAN, node to node.

Invariant after each pass: BIRD's static routes are `exported(ledger)`, and the ImportedRoutes the
controller made (annotation isthmus.io/federation) are the routes BIRD learned, one each."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from pyroute2 import IPRoute

from isthmus import intent
from isthmus.bgp.bird import Bird
from isthmus.bgp.config import Settings
from isthmus.bgp.control import BgpError
from isthmus.federation.vpn import TABLE, Address, VpnRoute, exported, parse_routes, render
from isthmus.model import ImportedRoute, Object, lookup_kind
from isthmus.observe.metrics import FederationMetrics
from isthmus.store import Compacted, Ledger, Unavailable, Watch, objects
from isthmus.store.election import Deposed, Election

log = logging.getLogger("isthmus.federation")
LEARNED = "isthmus.io/federation"  # the annotation of the ImportedRoutes the controller keeps
_KINDS = [lookup_kind(k) for k in ("VirtualNetwork", "Endpoint", "Node")]
_PREFIXES = tuple(objects.kind_prefix(k) for k in _KINDS)
_IMPORTED = lookup_kind("ImportedRoute")


def device_of(address: Address) -> str:
    """The interface that holds `address` (the speaker's, on the underlay)."""
    with IPRoute() as ipr:
        for found in ipr.get_addr(address=str(address)):
            return str(ipr.get_links(found["index"])[0].get_attr("IFLA_IFNAME"))
    raise BgpError(f"no interface of this host holds the speaker's address {address}")


def route_name(route: VpnRoute) -> str:
    """An ImportedRoute's name: its distinguisher and prefix, as a DNS label (64512-4096-10-32-0-5-32)."""
    return re.sub(r"[^0-9a-z]+", "-", f"{route.distinguisher}-{route.prefix}".lower()).strip("-")


def imported(route: VpnRoute, peer: str) -> ImportedRoute:
    return ImportedRoute.model_validate(
        {
            "metadata": {"name": route_name(route), "annotations": {LEARNED: peer}},
            "spec": {
                "prefix": str(route.prefix),
                "nextHop": str(route.next_hop),
                "vni": route.vni,
                "routeTargets": list(route.targets),
                "routeDistinguisher": route.distinguisher,
                "peer": peer,
            },
        }
    )


class Federation:
    """Exports from every replica (each its own BIRD, so peers hear the cluster from all of them); imports
    from the one that leads the election `federation`, through its fence."""

    def __init__(
        self,
        ledger: Ledger,
        directory: Path,
        settings: Settings,
        election: Election,
        metrics: FederationMetrics | None = None,
    ) -> None:
        self.ledger, self.settings, self.election = ledger, settings, election
        self.metrics = metrics or FederationMetrics()
        self.bird = Bird(directory)
        self.exports: set[VpnRoute] | None = None  # what BIRD announces, once loaded
        self.imported: dict[str, ImportedRoute] | None = None  # what the ledger holds, once written
        self.watch: Watch | None = None  # changes of the kinds the exports come from
        self.peer = ",".join(str(p.address) for p in settings.peers)
        self.device = device_of(settings.address)

    def run(self, stop: threading.Event, every: float = 0.2) -> None:
        """Pass after pass until `stop`; then BIRD stops, withdrawing the cluster's routes. A BIRD that
        died or refused is started (or adopted) again and given the exports anew on the next pass."""
        started = False
        threading.Thread(target=self._campaign, args=(stop,), daemon=True, name="campaign").start()
        try:
            while not stop.is_set():
                try:
                    if not started:
                        self.bird.start(render(self.settings, (), self.bird.log, self.device))
                        self.exports, started = None, True
                    self.step()
                except BgpError as exc:
                    log.warning("federation: %s (BIRD started again on the next pass)", exc)
                    self.metrics.errors.labels("bird").inc()
                    started = False
                except intent.IntentError as exc:  # tried again on the next pass
                    log.warning("federation: %s", exc)
                    self.metrics.errors.labels("refused").inc()
                    self.imported = None
                except Unavailable as exc:  # BIRD keeps announcing what it has; next pass, watch anew
                    log.warning("federation: %s", exc)
                    self.metrics.errors.labels("store").inc()
                    self.watch, self.imported = None, None
                except Deposed as exc:  # another replica imports now
                    log.warning("federation: %s", exc)
                    self.metrics.errors.labels("deposed").inc()
                    self.imported = None
                stop.wait(every)
        finally:
            self.bird.stop(withdraw=True)
            self.election.resign()

    def _campaign(self, stop: threading.Event) -> None:
        """Lead the imports whenever this replica can; a new term writes what BIRD has learned anew."""
        while self.election.lead(stop):
            while self.election.leading and not stop.wait(0.2):
                pass
            self.imported = None

    def step(self) -> None:
        """One pass: the exports again when a network, endpoint or node changed; the imports when BIRD
        learned something else than the ledger holds."""
        if self._moved() or self.exports is None:
            found: list[Object] = [o for info in _KINDS for o in objects.list_objects(self.ledger, info)[0]]
            exports = exported(found, self.settings.asn)
            if exports != self.exports:
                self.bird.load(render(self.settings, exports, self.bird.log, self.device))
                self.exports = exports
                self.metrics.exported.set(len(exports))
                log.info("federation: announcing %d routes", len(exports))
        self.metrics.leading.set(1 if self.election.leading else 0)
        if not self.election.leading:
            self.imported = None
            return
        learned = [
            r
            for table in TABLE.values()
            for r in parse_routes(self.bird.command(f"show route table {table} where source = RTS_BGP all"))
        ]
        wanted = {route_name(r): imported(r, self.peer) for r in learned}
        if wanted != self.imported:
            self._import(wanted)
            self.imported = wanted
            self.metrics.imported.set(len(wanted))

    def _moved(self) -> bool:
        """Whether a network, endpoint or node changed since the last pass (yes on the first)."""
        if self.watch is not None:
            try:
                return any(e.key.startswith(_PREFIXES) for e in self.watch.poll())
            except Compacted:
                pass
        self.watch = self.ledger.watch(objects.OBJECTS, self.ledger.revision())
        return True

    def _import(self, wanted: dict[str, ImportedRoute]) -> None:
        """Make the controller's ImportedRoutes exactly `wanted`, in one transaction."""
        held = {
            o.metadata.name: o
            for o in objects.list_objects(self.ledger, _IMPORTED)[0]
            if isinstance(o, ImportedRoute) and LEARNED in o.metadata.annotations
        }
        puts = [r for name, r in wanted.items() if name not in held or held[name].spec != r.spec]
        gone = [(_IMPORTED, None, name) for name in held.keys() - wanted.keys()]
        if puts or gone:
            intent.change(self.election.fenced(), puts, gone)
            log.info("federation: %d routes imported, %d withdrawn", len(puts), len(gone))
