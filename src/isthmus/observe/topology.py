"""The topology a console draws: nodes with their BGP peers and sessions (as the agents report them),
networks with their route targets, the endpoints on each (pods, VMs, hosts), services with their VIPs and
backends, floating IPs, and the other clusters as their imported routes show them (by AS: their networks'
VNIs, route targets and prefixes, their nodes). For a tenant: its own namespace, and the shared and
external networks its endpoints may use, the other clusters' networks its own import, without other
tenants' endpoints or any node."""

from __future__ import annotations

from typing import Any

from isthmus.compile.compiler import ref
from isthmus.model import Endpoint, FloatingIP, ImportedRoute, Node, ServiceVIP, VirtualNetwork, lookup_kind
from isthmus.model.meta import split_ref
from isthmus.store import Ledger, objects


def topology(ledger: Ledger, tenant: str | None = None) -> dict[str, Any]:
    """The topology the ledger holds, all of it (`tenant` None) or as `tenant` may see it."""

    def listed(kind: str, only: str | None = tenant) -> list[Any]:
        return objects.list_objects(ledger, lookup_kind(kind), only)[0]

    networks = [n for n in listed("VirtualNetwork", None) if isinstance(n, VirtualNetwork)]
    visible = [
        n
        for n in networks
        if tenant is None or n.metadata.namespace == tenant or n.spec.shared or n.spec.external
    ]
    reports = objects.statuses(ledger)
    return {
        "nodes": []
        if tenant
        else [_node(n, reports.get(n.metadata.name, {})) for n in listed("Node") if isinstance(n, Node)],
        "networks": [_network(n) for n in visible],
        "endpoints": [_endpoint(e) for e in listed("Endpoint") if isinstance(e, Endpoint)],
        "services": [_service(s) for s in listed("ServiceVIP") if isinstance(s, ServiceVIP)],
        "floatingIPs": [_floating(f) for f in listed("FloatingIP") if isinstance(f, FloatingIP)],
        "clusters": _clusters(
            [r for r in listed("ImportedRoute", None) if isinstance(r, ImportedRoute)],
            None if tenant is None else {t for n in visible for t in n.spec.import_targets},
        ),
    }


def _clusters(routes: list[ImportedRoute], imported: set[str] | None) -> list[dict[str, Any]]:
    """The other clusters by AS (their route distinguishers ASN:VNI): each network's VNI, route targets
    and prefixes, and the nodes the routes lead to; only the networks `imported` meets, when given,
    and then without nodes."""
    found: dict[str, dict[str, Any]] = {}
    for route in routes:
        targets = [str(t) for t in route.spec.route_targets]
        if imported is not None and imported.isdisjoint(targets):
            continue
        asn, _, vni = route.spec.route_distinguisher.rpartition(":")
        cluster = found.setdefault(asn, {"asn": asn, "nodes": set(), "networks": {}})
        network = cluster["networks"].setdefault(vni, {"vni": vni, "routeTargets": targets, "prefixes": []})
        network["prefixes"].append(str(route.spec.prefix))
        if imported is None:
            cluster["nodes"].add(str(route.spec.next_hop))
    return [
        {
            "asn": c["asn"],
            "nodes": sorted(c["nodes"]),
            "networks": [n | {"prefixes": sorted(n["prefixes"])} for _, n in sorted(c["networks"].items())],
        }
        for _, c in sorted(found.items())
    ]


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
    return {
        "name": _ref(endpoint),
        "kind": endpoint.spec.kind,
        "network": ref(*split_ref(endpoint.spec.network, endpoint.metadata.namespace)),
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
