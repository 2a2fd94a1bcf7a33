"""Flow records: every packet the node's rules log to NFLOG group FLOW_GROUP becomes a record naming its
ends, the service it was DNATed for and the rule that decided it, worded as `isthmus trace` words it.

The log prefix says what decided: `a…`/`d…` a rule of the plan that allowed or dropped (its words in the
planner's `words`), `s…` a service's DNAT (held until the same packet's verdict), and one letter a rule of
the base ruleset (`_FIXED`). One packet can be logged more than once on a node (allowed by an egress rule,
then allowed or dropped by an ingress one): the later verdict updates the record. Records live in a ring
of `size`; the kernel limits each rule's records (FLOW_RATE) and drops what the reader does not take in
time, and both are counted, so a flood costs neither forwarding nor the agent's memory.

A record's `state` is `new` (the first packet's verdict). The connections recorded as allowed are kept in
`open` (at most OPEN) until conntrack says they closed: its events (`dataplane/kernel/conntrack.py`) add
an `established` and a `closed` record of the same flow, its rule and service. An event can come before
the first packet's record (NFLOG sends in batches, conntrack at once): it waits up to EARLY seconds."""

from __future__ import annotations

import ipaddress
import logging
import select
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isthmus.compile.compiler import ref
from isthmus.dataplane.kernel import conntrack, nflog
from isthmus.dataplane.kernel.ruleset import FLOW_GROUP, MARK_MASK, via_key
from isthmus.model import Endpoint, FloatingIP, Object, ServiceVIP
from isthmus.model.meta import split_ref

log = logging.getLogger("isthmus.agent.flows")
TRANSPORT = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMP"}
_FIXED = {  # the base ruleset's prefixes: (verdict, words; "" when the words depend on the packet)
    "o": ("allowed", ""),
    "r": ("dropped", ""),
    "n": ("dropped", ""),
    "e": ("dropped", "egress address: replies only"),
    "i": ("dropped", "invalid"),
    "v": ("dropped", ""),
    "g": ("dropped", "node infrastructure"),
    "h": ("dropped", "pods reach their node on its address only"),
}
SAME_PACKET = 0.25  # seconds within which records of one flow's first packet are one record
DNAT_HELD = 2.0  # seconds a service's DNAT waits for the packet's verdict
OPEN = 65_536  # allowed connections awaiting conntrack's events; beyond it, the oldest are forgotten
EARLY = 1.0  # seconds an event waits for the record of its connection's first packet
Flow = tuple[str, str, int, str, int]  # protocol, source, its port, destination after DNAT, its port


@dataclass(frozen=True)
class Named:
    namespace: str
    name: str
    network: str = ""  # NAMESPACE/NAME
    kind: str = "pod"  # pod, vm or host


@dataclass
class Names:
    """Who the node's state says an address is, and which service a VIP (address, protocol, port) is."""

    endpoints: Mapping[str, Named] = field(default_factory=dict)
    services: Mapping[str, str] = field(default_factory=dict)  # "address" -> NAMESPACE/NAME


def names_of(objects: Mapping[str, Mapping[tuple[str, str], Object]]) -> Names:
    """The names of the addresses of a compiler's endpoints, service VIPs, external and floating IPs."""
    endpoints: dict[str, Named] = {}
    for (namespace, name), endpoint in objects.get("Endpoint", {}).items():
        if isinstance(endpoint, Endpoint):
            for address in endpoint.spec.addresses:
                network = ref(*split_ref(endpoint.spec.network, namespace))
                endpoints[str(address)] = Named(namespace, name, network, endpoint.spec.kind)
    services: dict[str, str] = {}
    for (namespace, name), vip in objects.get("ServiceVIP", {}).items():
        if isinstance(vip, ServiceVIP):
            services |= {str(a): ref(namespace, name) for a in [*vip.spec.vips, *vip.spec.external_ips]}
    for (namespace, _), fip in objects.get("FloatingIP", {}).items():
        if isinstance(fip, FloatingIP) and fip.spec.service:
            services |= {str(a): ref(namespace, fip.spec.service) for a in fip.spec.addresses}
    return Names(endpoints, services)


@dataclass(frozen=True)
class Packet:
    protocol: str
    source: str
    destination: str
    sport: int
    dport: int


def parse(payload: bytes, family: int) -> Packet | None:
    """The addresses, transport protocol and ports (ICMP: type and code) of a packet's first bytes."""
    if family == 4 and len(payload) >= 20:
        start, number, width = (payload[0] & 0x0F) * 4, payload[9], 4
        ends = payload[12:20]
    elif family == 6 and len(payload) >= 40:
        start, number, width = 40, payload[6], 16
        ends = payload[8:40]
    else:
        return None
    source, destination = (ipaddress.ip_address(ends[i : i + width]) for i in (0, width))
    protocol = TRANSPORT.get(number, str(number))
    ports = payload[start : start + 4]
    if len(ports) < 4 or protocol not in ("TCP", "UDP", "SCTP", "ICMP"):
        return Packet(protocol, str(source), str(destination), 0, 0)
    if protocol == "ICMP":
        return Packet(protocol, str(source), str(destination), ports[0], ports[1])
    return Packet(
        protocol,
        str(source),
        str(destination),
        int.from_bytes(ports[:2], "big"),
        int.from_bytes(ports[2:], "big"),
    )


class Recorder:
    """The node's flow records. Invariant: `records` holds at most `size`, oldest first, each with a
    sequence number one above the one before it."""

    def __init__(
        self,
        node: str,
        names: Callable[[], Names],
        words: Callable[[str], str | None],
        size: int = 10_000,
    ) -> None:
        self.node, self.names, self.words = node, names, words
        self.records: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0  # of the last record
        self.lock = threading.Lock()
        self.listener: nflog.Listener | None = None
        self.events: conntrack.Listener | None = None
        self.recent: OrderedDict[Flow, tuple[float, dict[str, Any]]] = OrderedDict()
        self.open: OrderedDict[Flow, dict[str, Any]] = OrderedDict()  # their first records
        self.established: set[Flow] = set()  # of those open
        self.early: OrderedDict[Flow, list[tuple[float, conntrack.Event]]] = OrderedDict()
        self.dnat: OrderedDict[tuple[str, str, int], tuple[float, str, str, int]] = OrderedDict()
        self.counts: dict[tuple[str, str], int] = {}  # (verdict, rule) -> records

    def run(self, stop: threading.Event) -> None:
        """Read NFLOG and conntrack's events until `stop` is set (a node without NFLOG records nothing,
        and says why)."""
        self.listener, self.events = nflog.Listener(FLOW_GROUP), conntrack.Listener()
        try:
            while not stop.is_set():
                try:
                    self._read(self.listener, self.events)
                except Exception:  # a message this reader cannot take costs its batch, never the recorder
                    log.exception("flow records: a batch of messages lost")
        finally:
            self.listener.close()
            self.events.close()

    def _read(self, listener: nflog.Listener, events: conntrack.Listener) -> None:
        ready, _, _ = select.select([listener.fileno(), events.fileno()], [], [], 0.5)
        if listener.fileno() in ready:
            for logged in listener.read():
                self.add(logged, time.time())
        if events.fileno() in ready:
            for event in events.read():
                self.follow(event, time.time())

    def add(self, logged: nflog.Logged, now: float) -> None:
        packet = parse(logged.payload, logged.family)
        if packet is None:
            return
        kind = logged.prefix[:1]
        if kind == "s":
            self._held(packet, logged.prefix, now)
            return
        verdict, words = _FIXED.get(logged.prefix, ("allowed" if kind == "a" else "dropped", None))
        names = self.names()
        if words is None:
            words = self.words(logged.prefix) or f"rule {logged.prefix}"
        elif logged.prefix == "r":
            words = f"ServiceVIP {names.services.get(packet.destination, '?')}"
        elif logged.prefix == "v":
            words = self.words(via_key(logged.mark & MARK_MASK, packet.destination)) or "only via a service"
        elif logged.prefix == "n":
            network = names.endpoints.get(packet.source, Named("", "")).network
            words = f"VirtualNetwork {network} nodeAccess: false"
        with self.lock:
            self._record(packet, verdict, words, names, now)

    def _held(self, packet: Packet, prefix: str, now: float) -> None:
        """A service's DNAT: the packet's verdict comes next, addressed to the backend."""
        service = (self.words(prefix) or "").removeprefix("ServiceVIP ")
        with self.lock:
            self.dnat[(packet.protocol, packet.source, packet.sport)] = (
                now,
                service,
                packet.destination,
                packet.dport,
            )
            while self.dnat and next(iter(self.dnat.values()))[0] < now - DNAT_HELD:
                self.dnat.popitem(last=False)

    def _record(self, packet: Packet, verdict: str, rule: str, names: Names, now: float) -> None:
        key = (packet.protocol, packet.source, packet.sport, packet.destination, packet.dport)
        seen = self.recent.get(key)
        if seen is not None and now - seen[0] < SAME_PACKET and seen[1]["verdict"] == "allowed":
            seen[1].update(verdict=verdict, rule=rule)  # a later rule on the same packet decides
            self._count(verdict, rule)
            if verdict != "allowed":
                self.open.pop(key, None)
                self.established.discard(key)
            return
        held = self.dnat.pop((packet.protocol, packet.source, packet.sport), None)
        record = {
            "time": round(now, 6),
            "node": self.node,
            "source": _end(names, packet.source, packet.sport),
            "destination": _end(names, packet.destination, packet.dport),
            "protocol": packet.protocol,
            "verdict": verdict,
            "rule": rule,
            "state": "new",
        }
        if held is not None:
            record["service"] = held[1]
            record["vip"] = {"address": held[2], "port": held[3]}
        elif packet.destination in names.services:
            record["service"] = names.services[packet.destination]
        self._append(record)
        self._count(verdict, rule)
        self.recent[key] = (now, record)
        if verdict == "allowed":
            self.open[key] = record
            while len(self.open) > OPEN:
                self.established.discard(self.open.popitem(last=False)[0])
            for when, event in self.early.pop(key, []):
                self._follow(key, event, when)
        while self.recent and next(iter(self.recent.values()))[0] < now - SAME_PACKET:
            self.recent.popitem(last=False)

    def _append(self, record: dict[str, Any]) -> None:
        self.seq += 1
        record["seq"] = self.seq
        self.records.append(record)

    def follow(self, event: conntrack.Event, now: float) -> None:
        """A recorded connection established or closed: a record of its flow in that state (once
        each; a connection without a record of its first packet within EARLY is not followed)."""
        key = (event.protocol, event.source, event.sport, event.destination, event.dport)
        with self.lock:
            if key in self.open:
                self._follow(key, event, now)
                return
            self.early.setdefault(key, []).append((now, event))
            self.early.move_to_end(key)
            while self.early and next(iter(self.early.values()))[-1][0] < now - EARLY:
                self.early.popitem(last=False)

    def _follow(self, key: Flow, event: conntrack.Event, now: float) -> None:
        first = self.open.get(key)
        if first is not None and not (event.state == "established" and key in self.established):
            if event.state == "closed":
                del self.open[key]
                self.established.discard(key)
            else:
                self.established.add(key)
            self._append(first | {"time": max(round(now, 6), first["time"]), "state": event.state})

    def _count(self, verdict: str, rule: str) -> None:
        self.counts[(verdict, rule)] = self.counts.get((verdict, rule), 0) + 1

    def tally(self) -> tuple[dict[tuple[str, str], int], int]:
        """The records made by verdict and rule, and the messages the kernel dropped unread."""
        with self.lock:
            return dict(self.counts), self._lost()

    def _lost(self) -> int:
        """NFLOG messages lost, and conntrack event buffers that overran (each lost one or more)."""
        return (self.listener.lost if self.listener else 0) + (self.events.overruns if self.events else 0)

    def since(self, seq: int) -> dict[str, Any]:
        """The records after sequence number `seq`, the last number, and what the record lost."""
        with self.lock:
            first = self.records[0]["seq"] if self.records else self.seq + 1
            chosen = list(self.records)[max(0, seq + 1 - first) :] if seq < self.seq else []
            return {
                "records": chosen,
                "seq": self.seq,
                "lost": self._lost(),
                "overwritten": max(0, first - seq - 1),
            }


def _end(names: Names, address: str, port: int) -> dict[str, Any]:
    named = names.endpoints.get(address)
    end: dict[str, Any] = (
        {"namespace": named.namespace, "name": named.name, "kind": named.kind, "network": named.network}
        if named
        else {}
    )
    return end | {"address": address, "port": port}
