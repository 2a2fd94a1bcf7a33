"""The reachability matrix: the trace verdict for every source pod and every destination.

Sources with one signature (network, identity, egress isolation; the address too when a CIDR peer exists)
share a row: it is traced once. The JSON shape is an interface:
{"port", "protocol", "to", "sources", "destinations", "allowed": {source: {destination: bool}}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from isthmus.compile.state import Address
from isthmus.dataplane.trace.walk import Source, Tracer
from isthmus.model import Endpoint, ServiceVIP


def destinations(
    tracer: Tracer, to: Literal["pods", "services"], namespaces: Sequence[str], family: int = 4
) -> dict[str, Address]:
    """NAMESPACE/NAME of each pod endpoint (or service with a VIP) in the namespaces with an address of
    `family`, to that address."""
    kind = "Endpoint" if to == "pods" else "ServiceVIP"
    found: dict[str, Address] = {}
    for (namespace, name), obj in sorted(tracer.compiler.objects[kind].items()):
        if namespaces and namespace not in namespaces:
            continue
        if isinstance(obj, Endpoint) and obj.spec.kind == "pod":
            addresses = obj.spec.addresses
        elif isinstance(obj, ServiceVIP):
            addresses = obj.spec.vips
        else:
            continue
        for address in (a for a in addresses if a.version == family):
            found[f"{namespace}/{name}"] = address
    return found


def matrix(
    tracer: Tracer,
    port: int,
    protocol: str,
    to: Literal["pods", "services"],
    namespaces: Sequence[str] = (),
    family: int = 4,
) -> dict[str, Any]:
    """The verdicts in `family`: from each pod's address of it to each destination's."""
    sources: dict[str, Source] = {}
    for name in destinations(tracer, "pods", namespaces, family):
        namespace, _, pod = name.partition("/")
        sources[name] = tracer.endpoint(namespace, pod, family)
    targets = destinations(tracer, to, namespaces, family)
    rows: dict[tuple[Any, ...], dict[str, bool]] = {}
    allowed: dict[str, dict[str, bool]] = {}
    for name, source in sources.items():
        signature = tracer.signature(source)
        if signature not in rows:
            rows[signature] = {
                target: tracer.trace(source, address, protocol, port).verdict == "allow"
                for target, address in targets.items()
            }
        allowed[name] = rows[signature]
    return {
        "port": port,
        "protocol": protocol,
        "to": to,
        "sources": list(sources),
        "destinations": list(targets),
        "allowed": allowed,
    }


def grid(result: dict[str, Any]) -> str:
    """The matrix as the upstream e2e logs print it: `.` allowed, `X` denied."""
    columns = result["destinations"]
    lines = ["\t".join(["-", *columns])]
    for source in result["sources"]:
        row = result["allowed"][source]
        lines.append("\t".join([source, *("." if row[c] else "X" for c in columns)]))
    return "\n".join(lines)
