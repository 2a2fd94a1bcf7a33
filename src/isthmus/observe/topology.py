"""The topology a console draws: nodes with their BGP peers and sessions (as the agents report them),
networks with their route targets, the endpoints on each (pods, VMs, hosts), services with their VIPs and
backends, floating IPs. For a tenant: its own namespace, and the shared and external networks its
endpoints may use, without other tenants' endpoints or the nodes' sessions."""

from __future__ import annotations

import json
from typing import Any

from isthmus.compile.compiler import ref
from isthmus.model import Endpoint, FloatingIP, Node, ServiceVIP, VirtualNetwork, lookup_kind
from isthmus.store import Ledger, objects


def topology(ledger: Ledger, tenant: str | None = None) -> dict[str, Any]:
    """The topology the ledger holds, all of it (`tenant` None) or as `tenant` may see it."""

    def listed(kind: str) -> list[Any]:
        return objects.list_objects(ledger, lookup_kind(kind), tenant)[0]

    networks = [
        n
        for n in objects.list_objects(ledger, lookup_kind("VirtualNetwork"))[0]
        if isinstance(n, VirtualNetwork)
    ]
    visible = [
        n
        for n in networks
        if tenant is None or n.metadata.namespace == tenant or n.spec.shared or n.spec.external
    ]
    reports = {
        kv.key.removeprefix(objects.STATUS): json.loads(kv.value) for kv in ledger.list(objects.STATUS)[0]
    }
    return {
        "nodes": []
        if tenant
        else [_node(n, reports.get(n.metadata.name, {})) for n in listed("Node") if isinstance(n, Node)],
        "networks": [_network(n) for n in visible],
        "endpoints": [_endpoint(e) for e in listed("Endpoint") if isinstance(e, Endpoint)],
        "services": [_service(s) for s in listed("ServiceVIP") if isinstance(s, ServiceVIP)],
        "floatingIPs": [_floating(f) for f in listed("FloatingIP") if isinstance(f, FloatingIP)],
    }


def _ref(obj: Any) -> str:
    return ref(obj.metadata.namespace, obj.metadata.name)


def _node(node: Node, report: dict[str, Any]) -> dict[str, Any]:
    bgp = report.get("bgp") or {}
    return {
        "name": node.metadata.name,
        "addresses": [str(a) for a in node.spec.addresses],
        "peers": [{"address": p.get("address"), "state": p.get("state")} for p in bgp.get("peers") or []],
        "problems": report.get("problems") or {},
    }


def _network(network: VirtualNetwork) -> dict[str, Any]:
    return {
        "name": _ref(network),
        "mode": network.spec.mode,
        "vni": network.spec.vni,
        "importTargets": list(network.spec.import_targets),
        "exportTargets": list(network.spec.export_targets),
        "shared": network.spec.shared,
        "external": network.spec.external,
    }


def _endpoint(endpoint: Endpoint) -> dict[str, Any]:
    namespace = endpoint.metadata.namespace
    network = (
        endpoint.spec.network if "/" in endpoint.spec.network else f"{namespace}/{endpoint.spec.network}"
    )
    return {
        "name": _ref(endpoint),
        "kind": endpoint.spec.kind,
        "network": network,
        "node": endpoint.spec.node,
        "addresses": [str(a) for a in endpoint.spec.addresses],
    }


def _service(vip: ServiceVIP) -> dict[str, Any]:
    return {
        "name": _ref(vip),
        "vips": [str(a) for a in vip.spec.vips],
        "type": vip.spec.type,
        "backends": [b.endpoint or str(b.address) for b in vip.spec.backends],
    }


def _floating(fip: FloatingIP) -> dict[str, Any]:
    return {"name": _ref(fip), "addresses": [str(a) for a in fip.spec.addresses], "service": fip.spec.service}
