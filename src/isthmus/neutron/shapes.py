"""Neutron's JSON shapes to and from Isthmus objects. Pure functions.

Identity: a Neutron resource's id is the Isthmus object's name in its tenant (the project, whose id is
the tenant's name); resources made through Neutron get a UUID for it, and keep their Neutron name,
description and the fields Isthmus has no use for (device owner, device id, address pairs) as
annotations. Networks are VirtualNetworks, subnets Subnets, ports Endpoints (kind vm), floating IPs
FloatingIPs, security groups SecurityGroups (a port's groups are labels of its endpoint), routers Isthmus
Policies that allow traffic between the networks of their interfaces (their gateway and interfaces kept as
annotations; a network reaches the outside through source NAT once a router with a gateway holds it).
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Callable
from typing import Any

from isthmus.model import (
    Endpoint,
    FloatingIP,
    Node,
    Object,
    Policy,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    VirtualNetwork,
    member_label,
    parse_object,
    split_ref,
)
from isthmus.model.security import MEMBER

NAME, DESCRIPTION = "neutron.isthmus.io/name", "neutron.isthmus.io/description"
DEVICE_OWNER, DEVICE_ID = "neutron.isthmus.io/device-owner", "neutron.isthmus.io/device-id"
ADDRESS_PAIRS = "neutron.isthmus.io/allowed-address-pairs"
KEPT = "neutron.isthmus.io/attributes"  # what Neutron keeps and Isthmus only stores and shows (JSON)
MTU = 1450  # a VXLAN network's: 1500 less the encapsulation
GATEWAY, INTERFACES = "neutron.isthmus.io/router-gateway", "neutron.isthmus.io/router-interfaces"
ROUTER_PRIORITY = 2000  # lower runs first: after the tenants' own Isthmus policies (1000 by default)
PROTOCOLS = {
    "tcp": "TCP",
    "udp": "UDP",
    "sctp": "SCTP",
    "icmp": "ICMP",
    "6": "TCP",
    "17": "UDP",
    "132": "SCTP",
}
STAMP = "1970-01-01T00:00:00Z"


class BadRequest(ValueError):
    """A request body Neutron would refuse with 400; the message names the field."""


def new_id() -> str:
    return str(uuid.uuid4())


def _common(obj: Object, project: str) -> dict[str, Any]:
    annotations = obj.metadata.annotations
    return {
        "id": obj.metadata.name,
        "name": annotations.get(NAME, obj.metadata.name),
        "description": annotations.get(DESCRIPTION, ""),
        "tenant_id": project,
        "project_id": project,
        "tags": [],
        "created_at": STAMP,
        "updated_at": STAMP,
        "revision_number": 1,
    }


def _meta(
    ident: str, project: str, body: dict[str, Any], extra: dict[str, str] | None = None
) -> dict[str, Any]:
    annotations = {NAME: str(body.get("name") or ""), DESCRIPTION: str(body.get("description") or "")}
    return {"name": ident, "namespace": project, "annotations": annotations | (extra or {})}


Kept = dict[str, tuple[Any, Callable[[Any], bool]]]  # attribute -> (its default, what it may be)


def _kept(obj: Object, kept: Kept) -> dict[str, Any]:
    """The attributes `obj` keeps for Neutron, each else its default."""
    stored: dict[str, Any] = json.loads(obj.metadata.annotations.get(KEPT, "{}"))
    return {k: default for k, (default, _) in kept.items()} | stored


def _keep(old: Object | None, body: dict[str, Any], kept: Kept) -> dict[str, str]:
    """The annotation of the attributes a creation or an update gives over the stored ones (each else its
    default); one that is not what it may be is refused, named."""
    held = _kept(old, kept) if old is not None else {k: default for k, (default, _) in kept.items()}
    for field, (_, valid) in kept.items():
        if field in body:
            if not valid(body[field]):
                raise BadRequest(f"invalid input for {field}: {body[field]!r}")
            held[field] = body[field]
    return {KEPT: json.dumps(held, sort_keys=True)}


def _parses(parse: Callable[[str], Any], value: Any) -> bool:
    try:
        parse(str(value))
    except ValueError:
        return False
    return True


def _addresses(value: Any) -> bool:
    return isinstance(value, list) and all(_parses(ipaddress.ip_address, v) for v in value)


def _routes(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, dict)
        and _parses(ipaddress.ip_network, r.get("destination"))
        and _parses(ipaddress.ip_address, r.get("nexthop"))
        for r in value
    )


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


NETWORK_KEPT: Kept = {
    "mtu": (MTU, lambda v: isinstance(v, int) and not isinstance(v, bool) and 68 <= v <= MTU),
    "admin_state_up": (True, _flag),
}
SUBNET_KEPT: Kept = {
    "dns_nameservers": ([], _addresses),
    "host_routes": ([], _routes),
    "enable_dhcp": (True, _flag),
}
PORT_KEPT: Kept = {"port_security_enabled": (True, _flag), "admin_state_up": (True, _flag)}
ROUTER_KEPT: Kept = {"admin_state_up": (True, _flag)}


def _object(kind: str, metadata: dict[str, Any], spec: dict[str, Any]) -> Object:
    return parse_object({"apiVersion": "isthmus.io/v1", "kind": kind, "metadata": metadata, "spec": spec})


def _ref(reference: str, namespace: str | None) -> str:
    """The id a reference names (its name)."""
    return split_ref(reference, namespace)[1]


# -- networks


def network(obj: VirtualNetwork, subnets: list[str]) -> dict[str, Any]:
    project = obj.metadata.namespace or ""
    return (
        _common(obj, project)
        | _kept(obj, NETWORK_KEPT)
        | {
            "status": "ACTIVE",
            "shared": obj.spec.shared,
            "router:external": obj.spec.external,
            "subnets": subnets,
            "provider:network_type": "vxlan" if obj.spec.mode == "overlay" else "routed",
            "provider:segmentation_id": obj.spec.vni,
            "provider:physical_network": None,
            "port_security_enabled": True,
            "availability_zones": [],
            "availability_zone_hints": [],
            "is_default": False,
            "ipv4_address_scope": None,
            "ipv6_address_scope": None,
            "l2_adjacency": obj.spec.mode == "overlay",
            "route_targets": obj.spec.import_targets,
        }
    )


def to_network(body: dict[str, Any], project: str, old: VirtualNetwork | None) -> VirtualNetwork:
    ident = old.metadata.name if old else new_id()
    spec = old.spec.model_dump(by_alias=True, exclude_none=True) if old else {}
    spec["shared"] = bool(body.get("shared", spec.get("shared", False)))
    spec["external"] = bool(body.get("router:external", spec.get("external", False)))
    spec.setdefault("nodeAccess", False)  # a project's VMs do not reach the hypervisors, as in OpenStack
    merged = _merged(old, body)
    made = _object("VirtualNetwork", _meta(ident, project, merged, _keep(old, body, NETWORK_KEPT)), spec)
    assert isinstance(made, VirtualNetwork)
    return made


def _merged(old: Object | None, body: dict[str, Any]) -> dict[str, Any]:
    """An update's name and description over the stored ones."""
    if old is None:
        return body
    kept = {
        "name": old.metadata.annotations.get(NAME, ""),
        "description": old.metadata.annotations.get(DESCRIPTION, ""),
    }
    return kept | {k: v for k, v in body.items() if k in ("name", "description")}


# -- subnets


def subnet(obj: Subnet) -> dict[str, Any]:
    project = obj.metadata.namespace or ""
    cidr = obj.spec.cidr
    gateway = obj.spec.effective_gateway()
    base = int(cidr.network_address)
    pools = [
        {"start": str(ipaddress.ip_address(base + low)), "end": str(ipaddress.ip_address(base + high))}
        for low, high in obj.spec.offset_ranges()
    ]
    return (
        _common(obj, project)
        | _kept(obj, SUBNET_KEPT)
        | {
            "network_id": _ref(obj.spec.network, obj.metadata.namespace),
            "cidr": str(cidr),
            "ip_version": cidr.version,
            "gateway_ip": str(gateway) if gateway is not None else None,
            "allocation_pools": pools,
            "subnetpool_id": obj.spec.pool,
            "ipv6_address_mode": obj.spec.ipv6_address_mode,
            "ipv6_ra_mode": obj.spec.ipv6_ra_mode,
            "service_types": [],
            "segment_id": None,
        }
    )


def to_subnet(body: dict[str, Any], project: str, network_id: str, old: Subnet | None) -> Subnet:
    """A new subnet, or `old` updated as Neutron updates one: its gateway and allocation pools (and what
    it keeps) change; its CIDR, version, network and IPv6 modes are read-only."""
    ident = old.metadata.name if old else new_id()
    if old is not None:
        spec = old.spec.model_dump(by_alias=True, exclude_none=True)
        shown = subnet(old)
        for field in ("cidr", "ip_version", "network_id", "ipv6_address_mode", "ipv6_ra_mode"):
            if field in body and str(body[field]) != str(shown[field]):
                raise BadRequest(f"Cannot update read-only attribute {field}")
    else:
        if not body.get("cidr"):
            raise BadRequest("subnet: cidr is required (subnet pools are not offered through Neutron)")
        spec = {"network": network_id, "cidr": body["cidr"]}
        for field in ("ipv6_address_mode", "ipv6_ra_mode"):
            if body.get(field):
                spec[field] = body[field]
        try:
            given = ipaddress.ip_network(str(body["cidr"]), strict=False)
        except ValueError:
            raise BadRequest(f"subnet: cidr {body['cidr']!r} is not a CIDR") from None
        version = body.get("ip_version")
        if version is not None and given.version != int(version):
            raise BadRequest(f"subnet: cidr {body['cidr']} is not IPv{version}")
    if "gateway_ip" in body:
        spec.pop("gateway", None)
        spec["noGateway"] = body["gateway_ip"] is None
        if body["gateway_ip"] is not None:
            spec["gateway"] = body["gateway_ip"]
    if "allocation_pools" in body:
        spec.pop("allocationPools", None)
        if body["allocation_pools"]:
            spec["allocationPools"] = body["allocation_pools"]
    kept = _keep(old, body, SUBNET_KEPT)
    made = _object("Subnet", _meta(ident, project, _merged(old, body), kept), spec)
    assert isinstance(made, Subnet)
    return made


# -- ports


def port(obj: Endpoint, subnets: dict[str, list[tuple[str, Any]]], network_id: str) -> dict[str, Any]:
    """`subnets`: per network id, its subnets' (id, cidr), to name each fixed IP's subnet."""
    project = obj.metadata.namespace or ""
    annotations = obj.metadata.annotations
    fixed = [
        {
            "subnet_id": next((sid for sid, cidr in subnets.get(network_id, []) if address in cidr), None),
            "ip_address": str(address),
        }
        for address in obj.spec.addresses
    ]
    groups = sorted(k.removeprefix(MEMBER) for k in obj.metadata.labels if k.startswith(MEMBER))
    return (
        _common(obj, project)
        | _kept(obj, PORT_KEPT)
        | {
            "network_id": network_id,
            "mac_address": obj.spec.mac,
            "fixed_ips": fixed,
            "device_id": annotations.get(DEVICE_ID, ""),
            "device_owner": annotations.get(DEVICE_OWNER, ""),
            "status": "ACTIVE" if obj.spec.node else "DOWN",
            "binding:host_id": obj.spec.node or "",
            "binding:vif_type": "isthmus" if obj.spec.node else "unbound",
            "binding:vnic_type": "normal",
            "binding:profile": {},
            "binding:vif_details": {},
            "allowed_address_pairs": json.loads(annotations.get(ADDRESS_PAIRS, "[]")),
            "security_groups": groups,
            "extra_dhcp_opts": [],
            "dns_name": "",
            "dns_assignment": [],
        }
    )


def to_port(
    body: dict[str, Any], project: str, network_id: str, groups: list[str], old: Endpoint | None
) -> Endpoint:
    """`groups`: the port's security groups (resolved by the caller: given, kept, or the default)."""
    ident = old.metadata.name if old else new_id()
    if old is not None:
        spec = old.spec.model_dump(by_alias=True, exclude_none=True)
        annotations = dict(old.metadata.annotations)
    else:
        fixed = body.get("fixed_ips") or []
        if not isinstance(fixed, list) or not all(isinstance(f, dict) for f in fixed):
            raise BadRequest("port: fixed_ips must be a list of {subnet_id, ip_address}")
        spec = {
            "kind": "vm",
            "network": network_id,
            "addresses": [f["ip_address"] for f in fixed if f.get("ip_address")],
        }
        if body.get("mac_address"):
            spec["mac"] = body["mac_address"]
        annotations = {}
    if "binding:host_id" in body:
        spec["node"] = body["binding:host_id"] or None
    for field, key in (("device_owner", DEVICE_OWNER), ("device_id", DEVICE_ID)):
        if field in body:
            annotations[key] = str(body[field] or "")
    if "allowed_address_pairs" in body:
        pairs = body["allowed_address_pairs"] or []
        if not isinstance(pairs, list) or not all(isinstance(p, dict) and p.get("ip_address") for p in pairs):
            raise BadRequest("port: allowed_address_pairs must be a list of {ip_address, mac_address}")
        annotations[ADDRESS_PAIRS] = json.dumps(pairs)
        spec["allowedAddresses"] = [str(p["ip_address"]) for p in pairs]
    kept = _keep(old, body, PORT_KEPT)
    metadata = _meta(ident, project, _merged(old, body), annotations | kept)
    metadata["labels"] = {member_label(g): "" for g in groups}
    made = _object("Endpoint", metadata, spec)
    assert isinstance(made, Endpoint)
    return made


# -- floating IPs


def floating_ip(obj: FloatingIP, fixed: str | None, router_id: str | None = None) -> dict[str, Any]:
    """`router_id`: the router that joins the port's network to the floating IP's network, if any."""
    project = obj.metadata.namespace or ""
    port_id = _ref(obj.spec.endpoints[0], obj.metadata.namespace) if obj.spec.endpoints else None
    return _common(obj, project) | {
        "floating_ip_address": str(obj.spec.address) if obj.spec.address else None,
        "floating_network_id": _ref(obj.spec.pool, obj.metadata.namespace),
        "port_id": port_id,
        "fixed_ip_address": fixed if port_id else None,
        "router_id": router_id if port_id else None,
        "status": "ACTIVE" if port_id else "DOWN",
        "port_details": None,
    }


def to_floating_ip(
    body: dict[str, Any], project: str, pool: str, old: FloatingIP | None, family: int | None = None
) -> FloatingIP:
    """`pool`: NAMESPACE/NAME of the external network; `family`: the address's, when a subnet says it."""
    ident = old.metadata.name if old else new_id()
    spec: dict[str, Any] = old.spec.model_dump(by_alias=True, exclude_none=True) if old else {"pool": pool}
    if old is None and body.get("floating_ip_address"):
        spec["address"] = body["floating_ip_address"]
    elif old is None and family is not None:
        spec["ipFamilies"] = [f"IPv{family}"]
    if "port_id" in body:
        spec["endpoints"] = [body["port_id"]] if body["port_id"] else []
    made = _object("FloatingIP", _meta(ident, project, _merged(old, body)), spec)
    assert isinstance(made, FloatingIP)
    return made


# -- security groups


def rule(group: SecurityGroup, given: SecurityGroupRule) -> dict[str, Any]:
    project = group.metadata.namespace or ""
    return {
        "id": given.id,
        "security_group_id": group.metadata.name,
        "direction": given.direction,
        "ethertype": given.ethertype,
        "protocol": given.protocol.lower() if given.protocol else None,
        "port_range_min": given.port_range_min,
        "port_range_max": given.port_range_max,
        "remote_ip_prefix": str(given.remote_ip_prefix) if given.remote_ip_prefix else None,
        "remote_group_id": given.remote_group,
        "remote_address_group_id": None,
        "description": given.description,
        "tenant_id": project,
        "project_id": project,
        "created_at": STAMP,
        "updated_at": STAMP,
        "revision_number": 1,
        "tags": [],
        "belongs_to_default_sg": group.metadata.name == "default",
        "normalized_cidr": str(given.remote_ip_prefix) if given.remote_ip_prefix else None,
    }


def security_group(obj: SecurityGroup) -> dict[str, Any]:
    project = obj.metadata.namespace or ""
    return _common(obj, project) | {
        "security_group_rules": [rule(obj, r) for r in obj.spec.rules],
        "stateful": True,
        "shared": False,
    }


def to_rule(body: dict[str, Any]) -> SecurityGroupRule:
    protocol = body.get("protocol")
    if protocol is not None and str(protocol).lower() not in PROTOCOLS:
        raise BadRequest(f"security group rule: protocol {protocol!r} is not one of tcp, udp, sctp, icmp")
    return SecurityGroupRule.model_validate(
        {
            "direction": body.get("direction"),
            "ethertype": body.get("ethertype") or "IPv4",
            "protocol": PROTOCOLS[str(protocol).lower()] if protocol is not None else None,
            "portRangeMin": body.get("port_range_min"),
            "portRangeMax": body.get("port_range_max"),
            "remoteIpPrefix": body.get("remote_ip_prefix"),
            "remoteGroup": body.get("remote_group_id"),
            "description": body.get("description") or "",
        }
    )


def _group(name: str, project: str, body: dict[str, Any], rules: list[SecurityGroupRule]) -> SecurityGroup:
    spec = {"rules": [r.model_dump(by_alias=True, exclude_none=True) for r in rules]}
    made = _object("SecurityGroup", _meta(name, project, body), spec)
    assert isinstance(made, SecurityGroup)
    return made


def default_group(project: str) -> SecurityGroup:
    """The project's group `default`, as Neutron makes it: everything out, in only from its members."""
    rules = [
        SecurityGroupRule(direction=direction, ethertype=ethertype, remote_group=peer)
        for direction, peer in (("egress", None), ("ingress", "default"))
        for ethertype in ("IPv4", "IPv6")
    ]
    return _group("default", project, {"name": "default", "description": "Default security group"}, rules)


def to_security_group(body: dict[str, Any], project: str, old: SecurityGroup | None) -> SecurityGroup:
    if old is not None:
        return _group(old.metadata.name, project, _merged(old, body), old.spec.rules)
    out = [SecurityGroupRule(direction="egress", ethertype=e) for e in ("IPv4", "IPv6")]  # as Neutron's do
    return _group(new_id(), project, body, out)


# -- routers


def agent(node: Node, report: dict[str, Any] | None) -> dict[str, Any]:
    """A node's Isthmus agent as a Neutron agent: alive while it has published a report (it publishes
    on change, with no heartbeat), its problems as its configuration."""
    return {
        "id": node.metadata.uid or node.metadata.name,
        "agent_type": "Isthmus agent",
        "binary": "isthmus-agent",
        "host": node.metadata.name,
        "topic": "N/A",
        "alive": report is not None,
        "admin_state_up": True,
        "availability_zone": None,
        "configurations": {"problems": (report or {}).get("problems") or {}},
        "description": "",
        "created_at": STAMP,
        "started_at": STAMP,
        "heartbeat_timestamp": STAMP,
        "resources_synced": None,
    }


def is_router(obj: Object) -> bool:
    return isinstance(obj, Policy) and INTERFACES in obj.metadata.annotations


def interfaces(obj: Policy) -> list[dict[str, str]]:
    """The router's interfaces: {subnet_id, network_id, port_id}."""
    found: list[dict[str, str]] = json.loads(obj.metadata.annotations.get(INTERFACES, "[]"))
    return found


def gateway(obj: Policy) -> dict[str, Any] | None:
    found: dict[str, Any] | None = json.loads(obj.metadata.annotations.get(GATEWAY, "null"))
    return found


def router(obj: Policy) -> dict[str, Any]:
    project = obj.metadata.namespace or ""
    return (
        _common(obj, project)
        | _kept(obj, ROUTER_KEPT)
        | {
            "status": "ACTIVE",
            "external_gateway_info": gateway(obj),
            "routes": [],
            "distributed": False,
            "ha": False,
            "availability_zones": [],
            "availability_zone_hints": [],
            "flavor_id": None,
        }
    )


def to_router(
    body: dict[str, Any], project: str, old: Policy | None, attached: list[dict[str, str]] | None = None
) -> Policy:
    """The router as a Policy: an allow rule from each interface's network to each other's. `attached`:
    its interfaces when they change (else kept)."""
    ident = old.metadata.name if old else new_id()
    kept = gateway(old) if old else None
    given = body.get("external_gateway_info", kept) or None  # {} or null: no gateway
    if given is not None and not (isinstance(given, dict) and given.get("network_id")):
        raise BadRequest("router: external_gateway_info needs a network_id")
    linked = attached if attached is not None else (interfaces(old) if old else [])
    networks = sorted({i["network_id"] for i in linked})
    rules = [
        {"action": "allow", "source": {"network": a}, "destination": {"network": b}}
        for a in networks
        for b in networks
        if a != b
    ]
    extra = {GATEWAY: json.dumps(given), INTERFACES: json.dumps(linked)} | _keep(old, body, ROUTER_KEPT)
    metadata = _meta(ident, project, _merged(old, body), extra)
    made = _object("Policy", metadata, {"priority": ROUTER_PRIORITY, "rules": rules})
    assert isinstance(made, Policy)
    return made
