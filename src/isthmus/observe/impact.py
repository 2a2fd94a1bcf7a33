"""A change's impact before it is applied: the connections it would open and close.

The change is applied to a copy of the ledger in memory (Kubernetes manifests through the translation,
Isthmus objects through admission, as `isthmus apply` does), both ledgers are compiled, and the
reachability matrices between every pod, before and after, are compared on the ports the change's
policies name (every port the pods declare when they name none). Nothing is stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from isthmus import intent
from isthmus.compile.source import compiled
from isthmus.dataplane.trace import Tracer
from isthmus.dataplane.trace.matrix import matrix
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.model import Endpoint, KubeObject, Object, Policy, kind_of
from isthmus.model.netpol import parse_network_policy
from isthmus.store import Ledger, MemoryLedger

Port = tuple[int, str]  # number, protocol


@dataclass(frozen=True)
class Cell:
    source: str  # NAMESPACE/NAME
    destination: str
    port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.destination} {self.port}/{self.protocol}"

    def touches(self, namespace: str) -> bool:
        """Whether either end lies in `namespace`."""
        return namespace in (self.source.split("/")[0], self.destination.split("/")[0])


@dataclass(frozen=True)
class Impact:
    ports: tuple[Port, ...]
    opens: tuple[Cell, ...]
    closes: tuple[Cell, ...]


def parse_port(text: str) -> Port:
    """PORT[/PROTOCOL] (TCP by default); ValueError naming what is wrong."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "TCP").upper()
    if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in ("TCP", "UDP", "SCTP"):
        raise ValueError(f"{text!r} is not PORT[/PROTOCOL] (a port 1-65535; TCP, UDP or SCTP)")
    return int(number), protocol


def impact(ledger: Ledger, items: Sequence[Object], ports: Sequence[Port] = ()) -> Impact:
    """What applying `items` would open and close, on `ports` (else as the module says)."""
    copy = MemoryLedger()
    held = ledger.list("/")[0]
    copy.commit({}, [(kv.key, kv.value) for kv in held])
    before = Tracer(compiled(copy)[0])
    if any(kind_of(o).model is None for o in items):
        reconcile(copy, KubeConfig(), items)
    else:
        intent.apply(copy, items)
    after = Tracer(compiled(copy)[0])
    chosen = tuple(ports) or _named(items) or _declared(before)
    opens: list[Cell] = []
    closes: list[Cell] = []
    for port, protocol in chosen:
        was = matrix(before, port, protocol, "pods")["allowed"]
        now = matrix(after, port, protocol, "pods")["allowed"]
        for source in sorted(was.keys() | now.keys()):
            row_was, row_now = was.get(source, {}), now.get(source, {})
            for destination in sorted(row_was.keys() | row_now.keys()):
                if source == destination:
                    continue
                cell = Cell(source, destination, port, protocol)
                if row_now.get(destination) and not row_was.get(destination):
                    opens.append(cell)
                elif row_was.get(destination) and not row_now.get(destination):
                    closes.append(cell)
    return Impact(chosen, tuple(opens), tuple(closes))


def _named(items: Sequence[Object]) -> tuple[Port, ...]:
    """The numeric ports the change's NetworkPolicies and Isthmus policies name."""
    found: set[Port] = set()
    for item in items:
        if isinstance(item, KubeObject) and item.kind == "NetworkPolicy":
            spec = parse_network_policy(item.body)
            ports = [p for r in spec.ingress for p in r.ports] + [p for r in spec.egress for p in r.ports]
            found |= {(p.port, p.protocol) for p in ports if isinstance(p.port, int)}
        elif isinstance(item, Policy):
            found |= {(p.port, r.protocol) for r in item.spec.rules for p in r.ports if r.protocol != "any"}
    return tuple(sorted(found))


def _declared(tracer: Tracer) -> tuple[Port, ...]:
    """Every port the pods declare."""
    found: set[Port] = set()
    for endpoint in tracer.compiler.objects["Endpoint"].values():
        if isinstance(endpoint, Endpoint):
            found |= {(p.port, p.protocol) for p in endpoint.spec.ports}
    return tuple(sorted(found))
