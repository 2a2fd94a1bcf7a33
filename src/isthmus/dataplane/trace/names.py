"""What a trace's ends name: a pod or endpoint (NAMESPACE/NAME, or NAME in a namespace), a service
(svc/NAMESPACE/NAME: its ClusterIP), or an address. Unknown names raise LookupError, saying which."""

from __future__ import annotations

import ipaddress

from isthmus.compile.state import Address
from isthmus.dataplane.trace.walk import Source, Tracer
from isthmus.model import ServiceVIP


def namespace_of(given: str, namespace: str) -> str | None:
    """The namespace a name lies in; None for an address."""
    try:
        ipaddress.ip_address(given)
    except ValueError:
        ns, _, _ = given.removeprefix("svc/").rpartition("/")
        return ns or namespace
    return None


def source(tracer: Tracer, given: str, namespace: str) -> Source:
    try:
        address = ipaddress.ip_address(given)
    except ValueError:
        ns, _, name = given.rpartition("/")
        return tracer.endpoint(ns or namespace, name)
    return Source(address, given)


def destination(tracer: Tracer, given: str, namespace: str) -> Address:
    if given.startswith("svc/"):
        ns, _, name = given.removeprefix("svc/").rpartition("/")
        vip = tracer.compiler.objects["ServiceVIP"].get((ns or namespace, name))
        if not isinstance(vip, ServiceVIP) or vip.spec.vip is None:
            raise LookupError(f"service {ns or namespace}/{name} not found, or it has no ClusterIP")
        return vip.spec.vip
    return source(tracer, given, namespace).address
