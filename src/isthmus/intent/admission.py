"""Admission: what an object needs from the ledger before it may be stored, and what it frees on delete.

Checks references and overlaps, assigns uid, MAC and allocations (VNI, addresses), all inside the caller's
transaction. Functions of (transaction, object, stored object); they write nothing but IPAM keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from isthmus import ipam
from isthmus.intent.errors import InUse, Invalid, NotFound
from isthmus.model import (
    Backend,
    EgressIP,
    Endpoint,
    FloatingIP,
    KubeObject,
    Node,
    Object,
    Resource,
    ServicePort,
    ServiceVIP,
    Subnet,
    SubnetPool,
    Tenant,
    VirtualNetwork,
    kind_of,
    split_ref,
)
from isthmus.model.kinds import ISTHMUS, KINDS, lookup_kind
from isthmus.model.meta import IPAddress
from isthmus.model.network import eui64
from isthmus.store import objects
from isthmus.store.txn import Txn

R = TypeVar("R", bound=Resource)
NODE_PORTS = ipam.Pool("nodeport", ((30000, 32767),), "the node port range 30000-32767")
_INFO = {k.model: k for k in KINDS if k.model is not None}
# Prefixes under which admitting an object reads keys or ranges of its own, besides its kind's: its network's
# subnets and its pools; releasing it reads these and who names it too.
ADMIT_READS = (objects.kind_prefix(_INFO[Subnet]), ipam.IPAM)
RELEASE_READS = (*ADMIT_READS, objects.REFS)


def ident(obj: Object) -> str:
    """How messages and IPAM owners name an object: Kind/namespace/name."""
    ns = f"{obj.metadata.namespace}/" if obj.metadata.namespace else ""
    return f"{obj.kind}/{ns}{obj.metadata.name}"


def _get(txn: Txn, model: type[R], namespace: str | None, name: str) -> R | None:
    found = objects.get(txn, _INFO[model], namespace, name)
    return found if isinstance(found, model) else None


def network_of(txn: Txn, ref: str, namespace: str | None) -> VirtualNetwork:
    """The network a reference names, if the referrer's tenant may use it (its own, shared or external)."""
    ns, name = split_ref(ref, namespace)
    network = _get(txn, VirtualNetwork, ns, name)
    if network is None or (ns != namespace and not (network.spec.shared or network.spec.external)):
        raise NotFound(f"virtual network {ns}/{name} not found")
    return network


def subnets_of(txn: Txn, network: VirtualNetwork) -> list[Subnet]:
    ns = network.metadata.namespace
    found = objects.scan(txn, _INFO[Subnet], ns)
    return [
        s
        for s in found
        if isinstance(s, Subnet) and split_ref(s.spec.network, ns)[1] == network.metadata.name
    ]


def admit(txn: Txn, obj: Object, old: Object | None) -> Object:
    """The object as it will be stored: identity kept from `old`, allocations made; raises IntentError."""
    given = obj.metadata.uid if isinstance(obj, KubeObject) else None  # Kubernetes UIDs are identities
    uid = old.metadata.uid if old else given or str(uuid.uuid4())
    meta = obj.metadata.model_copy(update={"uid": uid, "resource_version": None})
    obj = obj.model_copy(update={"metadata": meta})
    info = kind_of(obj)
    if info.model is None or not isinstance(obj, Resource):
        return obj
    if info.namespaced and _get(txn, Tenant, None, str(meta.namespace)) is None:
        raise NotFound(f"tenant {meta.namespace!r} does not exist; create it first (kind: Tenant)")
    for kind, ns, name in obj.refs():
        if kind != "VirtualNetwork" and not objects.exists(txn, lookup_kind(f"{kind}.{ISTHMUS}"), ns, name):
            raise NotFound(f"{ident(obj)} names {kind} {f'{ns}/' if ns else ''}{name}, which does not exist")
    check = _ADMIT.get(type(obj))
    return check(txn, obj, old) if check else obj


def release(txn: Txn, obj: Object) -> None:
    """Refuse to delete what is still named by others; free what the object holds."""
    info = kind_of(obj)
    if isinstance(obj, VirtualNetwork) and obj.spec.pools():
        for grown in subnets_of(txn, obj):  # blocks it grew go with it, once empty
            if grown.spec.pool in obj.spec.pools():
                release(txn, grown)
                objects.delete(txn, grown)
    using = objects.referrers(txn, info, obj.metadata.namespace, obj.metadata.name)
    if using:
        raise InUse(f"{ident(obj)} is in use by {', '.join(_key_ident(k) for k in using)}")
    if isinstance(obj, Tenant):
        for kind in KINDS:
            held = objects.scan(txn, kind, obj.metadata.name) if kind.namespaced and kind.model else []
            if held:
                raise InUse(
                    f"tenant {obj.metadata.name} still holds {ident(held[0])}; delete its objects first"
                )
    elif isinstance(obj, VirtualNetwork):
        ipam.release(txn, ipam.VNI_POOL, ident(obj))
    elif isinstance(obj, Subnet):
        pool = ipam.subnet_pool(obj)
        owners = ipam.in_use(txn, pool)
        if owners:
            raise InUse(f"{ident(obj)} still has addresses allocated to {', '.join(owners)}")
        ipam.retire(txn, pool)
        subnet_pool = _get(txn, SubnetPool, None, obj.spec.pool) if obj.spec.pool else None
        if subnet_pool is not None:
            ipam.release(txn, _block_pool(subnet_pool), ident(obj))
    elif isinstance(obj, SubnetPool):
        blocks = ipam.in_use(txn, _block_pool(obj))
        if blocks:
            raise InUse(f"{ident(obj)} still has blocks allocated to {', '.join(blocks)}")
        ipam.retire(txn, _block_pool(obj))
    if isinstance(obj, ServiceVIP):
        for port in obj.spec.ports:
            ipam.release(txn, NODE_PORTS, f"{ident(obj)}/{port.port}/{port.protocol}")
    if isinstance(obj, Endpoint | ServiceVIP | FloatingIP | EgressIP):
        network_ref = obj.spec.pool if isinstance(obj, FloatingIP | EgressIP) else obj.spec.network
        ns, name = split_ref(network_ref, obj.metadata.namespace)
        network = _get(txn, VirtualNetwork, ns, name)
        for subnet in subnets_of(txn, network) if network else []:
            ipam.release(txn, ipam.subnet_pool(subnet), ident(obj))


def _key_ident(key: str) -> str:
    info, ns, name = objects.parse_key(key)
    return f"{info.kind}/{f'{ns}/' if ns else ''}{name}"


def _node(txn: Txn, node: Node, old: Object | None) -> Node:
    for other in objects.scan(txn, _INFO[Node]):
        if isinstance(other, Node) and other.metadata.name != node.metadata.name:
            shared = [a for a in node.spec.addresses if a in other.spec.addresses]
            if shared:
                name, owner = node.metadata.name, other.metadata.name
                raise Invalid(f"node {name}: address {shared[0]} belongs to {owner}")
    return node


def _network(txn: Txn, network: VirtualNetwork, old: Object | None) -> VirtualNetwork:
    pools = [p for p in (_get(txn, SubnetPool, None, n) for n in network.spec.pools()) if p is not None]
    for a, b in itertools.combinations(pools, 2):
        if a.spec.cidr.version == b.spec.cidr.version:
            raise Invalid(
                f"{ident(network)}: subnet pools {a.metadata.name} and {b.metadata.name} are both "
                f"IPv{a.spec.cidr.version}; a network grows by one pool of each family"
            )
    try:
        vni = ipam.allocate(txn, ipam.VNI_POOL, ident(network), network.spec.vni)
    except ipam.IpamError as exc:
        raise Invalid(f"{ident(network)}: VNI {exc}") from None
    return network.model_copy(update={"spec": network.spec.model_copy(update={"vni": vni})})


def _block_pool(pool: SubnetPool) -> ipam.Pool:
    return ipam.Pool(
        f"subnetpool/{pool.metadata.uid}",
        ((0, pool.spec.blocks() - 1),),
        f"subnet pool {pool.metadata.name} ({pool.spec.cidr})",
        lambda i: str(pool.spec.block(i)),
    )


def _with_block(txn: Txn, subnet: Subnet) -> Subnet:
    """The subnet with its CIDR taken from (or checked against) its subnet pool."""
    if subnet.spec.pool is None:
        return subnet
    pool = _pool(txn, subnet.spec.pool)
    wanted = None
    if subnet.spec.cidr is not None:
        wanted = pool.spec.index_of(subnet.spec.cidr)
        if wanted is None:
            raise Invalid(
                f"{ident(subnet)}: {subnet.spec.cidr} is not a /{pool.spec.block_prefix_length} "
                f"block of subnet pool {pool.metadata.name} ({pool.spec.cidr})"
            )
    try:
        index = ipam.allocate(txn, _block_pool(pool), ident(subnet), wanted)
    except ipam.IpamError as exc:
        raise Invalid(f"{ident(subnet)}: {exc}") from None
    return subnet.model_copy(update={"spec": subnet.spec.model_copy(update={"cidr": pool.spec.block(index)})})


def _subnet(txn: Txn, subnet: Subnet, old: Object | None) -> Subnet:
    subnet = _with_block(txn, subnet)
    ns = subnet.metadata.namespace
    net_ns, _ = split_ref(subnet.spec.network, ns)
    if net_ns != ns:
        raise Invalid(
            f"{ident(subnet)}: a subnet belongs to its network's tenant; {subnet.spec.network} is not in {ns}"
        )
    if isinstance(old, Subnet) and old.spec.cidr != subnet.spec.cidr:
        raise Invalid(f"{ident(subnet)}: spec.cidr is immutable ({old.spec.cidr} -> {subnet.spec.cidr})")
    network = network_of(txn, subnet.spec.network, ns)
    if subnet.spec.node is not None and not _node_blocks(network):
        raise Invalid(
            f"{ident(subnet)}: spec.node gives a node a block of a routed network or of one that grows "
            f"from a subnet pool; network {ns}/{network.metadata.name} is {network.spec.mode} "
            "without a subnet pool"
        )
    for other in subnets_of(txn, network):
        if other.metadata.name != subnet.metadata.name and other.spec.cidr.overlaps(subnet.spec.cidr):
            raise Invalid(
                f"{ident(subnet)}: {subnet.spec.cidr} overlaps {ident(other)} ({other.spec.cidr}) "
                f"in network {ns}/{network.metadata.name}"
            )
    return subnet


def _addresses(
    txn: Txn,
    owner: Object,
    network: VirtualNetwork,
    wanted: list[IPAddress],
    held: list[IPAddress],
    families: Sequence[int] = (),
) -> list[IPAddress]:
    """The owner's addresses: one per subnet as `wanted`, and one of each of `families` that none wanted
    is of; with nothing wanted, one of each of `families`, or of each family the network has (its pools'
    first, in their order). Each is the one it holds (among `held`, what its stored version shows) or a
    new one, from the newest block first in a network that grows. In a routed network or one that grows,
    an endpoint on a node takes them from that node's blocks (so other nodes route one block to it, not
    each address), anything else from the subnets of no node."""
    name, net = ident(owner), f"{network.metadata.namespace}/{network.metadata.name}"
    node = owner.spec.node if isinstance(owner, Endpoint) and _node_blocks(network) else None
    mac = owner.spec.mac if isinstance(owner, Endpoint) else None
    subnets = sorted(
        (s for s in subnets_of(txn, network) if s.spec.node == node),
        key=lambda s: (s.spec.cidr.version, _block_index(s)),
    )
    pools: dict[int, str] = {
        p.spec.cidr.version: p.metadata.name for p in map(partial(_pool, txn), network.spec.pools())
    }
    if not subnets and not pools:
        raise Invalid(f"{name}: network {net} has no subnet" + (f" for node {node}" if node else ""))
    outside = [str(a) for a in wanted if not any(a in s.spec.cidr for s in subnets)]
    if outside:
        where = f"block of node {node} in network" if node else "subnet of network"
        raise Invalid(f"{name}: {', '.join(outside)} is in no {where} {net}")
    missing = [f for f in families if f not in {a.version for a in wanted}]
    has = _families(txn, network)
    if absent := [f"IPv{f}" for f in families if f not in has]:
        raise Invalid(f"{name}: network {net} has no {' or '.join(absent)} subnet")
    try:
        if not wanted:
            for dropped in (s for s in subnets if families and s.spec.cidr.version not in families):
                ipam.release(txn, ipam.subnet_pool(dropped), name)
            return [
                _address(
                    txn,
                    name,
                    network,
                    node,
                    [s for s in subnets if s.spec.cidr.version == f],
                    pools.get(f),
                    held,
                    mac,
                )
                for f in families
                or [f for f in has if f in pools or any(s.spec.cidr.version == f for s in subnets)]
            ]
        result: list[IPAddress] = []
        for subnet in subnets:
            pool, cidr = ipam.subnet_pool(subnet), subnet.spec.cidr
            mine = [a for a in wanted if a in cidr]
            if len(mine) > 1:
                raise Invalid(f"{name}: one address per subnet, got {', '.join(map(str, mine))} in {cidr}")
            if mine:
                result.append(cidr[ipam.allocate(txn, pool, name, int(mine[0]) - int(cidr.network_address))])
            elif cidr.version not in missing:
                ipam.release(txn, pool, name)
        family = [s for s in subnets if s.spec.cidr.version in missing]
        result += [
            _address(
                txn, name, network, node, [s for s in family if s.spec.cidr.version == f], None, held, mac
            )
            for f in missing
        ]
        return sorted(result, key=lambda a: [*families, a.version].index(a.version))
    except ipam.IpamError as exc:
        raise Invalid(f"{name}: {exc}") from None


def _families(txn: Txn, network: VirtualNetwork) -> list[int]:
    """The network's address families: its pools', in their order, then its subnets' (IPv4 first)."""
    pools = [_pool(txn, p).spec.cidr.version for p in network.spec.pools()]
    return list(dict.fromkeys([*pools, *sorted(s.spec.cidr.version for s in subnets_of(txn, network))]))


def _address(
    txn: Txn,
    name: str,
    network: VirtualNetwork,
    node: str | None,
    subnets: list[Subnet],
    pool: str | None,
    held: list[IPAddress],
    mac: str | None = None,
) -> IPAddress:
    """One address of one family: the one `name` holds in `subnets`, else in a subnet of automatic (SLAAC)
    addresses the EUI-64 of `mac`, else a free one (the newest block first when the family grows from
    `pool`), else one of a new block of `pool`."""
    ranked = [(ipam.subnet_pool(s), s.spec.cidr) for s in subnets]
    for subnet in (s for s in subnets if s.spec.automatic() and mac):
        cidr = subnet.spec.cidr
        assert mac and isinstance(cidr, ipaddress.IPv6Network)  # an endpoint's, in a /64
        offset = int(eui64(cidr, mac)) - int(cidr.network_address)
        return cidr[ipam.allocate(txn, ipam.subnet_pool(subnet), name, offset)]
    for numbers, cidr in ranked:
        value = ipam.held(txn, numbers, name) if any(a in cidr for a in held) else None
        if value is not None:
            return cidr[value]
    for numbers, cidr in reversed(ranked) if pool else ranked:
        try:
            return cidr[ipam.allocate(txn, numbers, name)]
        except ipam.Exhausted:
            continue
    if pool is not None:
        grown = _grow(txn, network, node, pool)
        return grown.spec.cidr[ipam.allocate(txn, ipam.subnet_pool(grown), name)]
    net = f"{network.metadata.namespace}/{network.metadata.name}"
    raise ipam.Exhausted(
        f"every subnet of network {net} is exhausted ({', '.join(str(c) for _, c in ranked)})"
    )


def _block_index(subnet: Subnet) -> tuple[int, str]:
    """Blocks NETWORK-N in the order they were added; other subnets first, by name."""
    base, _, index = subnet.metadata.name.rpartition("-")
    return (
        (int(index), "")
        if subnet.spec.pool and base == subnet.spec.network and index.isdigit()
        else (-1, subnet.metadata.name)
    )


def _grow(txn: Txn, network: VirtualNetwork, node: str | None, pool: str) -> Subnet:
    """A new subnet for the network, NETWORK-N, a block of one of its subnet pools (`node`'s, when given)."""
    ns, base = network.metadata.namespace, network.metadata.name
    name = next(f"{base}-{i}" for i in itertools.count() if _get(txn, Subnet, ns, f"{base}-{i}") is None)
    draft = Subnet.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"network": base, "pool": pool, "node": node},
        }
    )
    subnet = admit(txn, draft, None)
    assert isinstance(subnet, Subnet)
    objects.put(txn, subnet, None)
    return subnet


def _node_blocks(network: VirtualNetwork) -> bool:
    """Whether the network's endpoints on a node take their addresses from that node's blocks."""
    return network.spec.mode == "routed" or bool(network.spec.pools())


def _pool(txn: Txn, name: str) -> SubnetPool:
    pool = _get(txn, SubnetPool, None, name)
    if pool is None:
        raise NotFound(f"subnet pool {name} not found")
    return pool


def _mac(uid: str) -> str:
    """A locally administered unicast MAC derived from the uid."""
    digest = hashlib.sha256(uid.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _endpoint(txn: Txn, endpoint: Endpoint, old: Object | None) -> Endpoint:
    network = network_of(txn, endpoint.spec.network, endpoint.metadata.namespace)
    if network.spec.mode == "routed" and endpoint.spec.node is None:
        raise Invalid(
            f"{ident(endpoint)}: network {endpoint.spec.network} is routed; its endpoints take addresses "
            "from their node's blocks: give spec.node"
        )
    held = old.spec.addresses if isinstance(old, Endpoint) else []
    mac = endpoint.spec.mac or _mac(str(endpoint.metadata.uid))
    endpoint = endpoint.model_copy(update={"spec": endpoint.spec.model_copy(update={"mac": mac})})
    addresses = _addresses(txn, endpoint, network, list(endpoint.spec.addresses), held)
    return endpoint.model_copy(update={"spec": endpoint.spec.model_copy(update={"addresses": addresses})})


def _backend(txn: Txn, backend: Backend, namespace: str | None) -> Backend:
    """Addresses and node from the backend's endpoint, when it names one."""
    if backend.endpoint is None:
        return backend
    ns, name = split_ref(backend.endpoint, namespace)
    endpoint = _get(txn, Endpoint, ns, name)
    assert endpoint is not None  # admit() checked the reference
    network = "/".join(filter(None, split_ref(endpoint.spec.network, ns)))
    addresses = endpoint.spec.addresses
    update = {"address": addresses[0], "addresses": addresses, "node": endpoint.spec.node, "network": network}
    return backend.model_copy(update=update)


def _node_ports(txn: Txn, service: ServiceVIP) -> list[ServicePort]:
    """Every port of a NodePort or LoadBalancer service gets a node port; others hold none."""
    name, ports = ident(service), []
    for port in service.spec.ports:
        owner = f"{name}/{port.port}/{port.protocol}"
        if service.spec.type == "ClusterIP":
            ipam.release(txn, NODE_PORTS, owner)
            ports.append(port.model_copy(update={"node_port": None}))
            continue
        try:
            ports.append(
                port.model_copy(update={"node_port": ipam.allocate(txn, NODE_PORTS, owner, port.node_port)})
            )
        except ipam.IpamError as exc:
            raise Invalid(f"{name}: node port {exc}") from None
    return ports


def _service(txn: Txn, service: ServiceVIP, old: Object | None) -> ServiceVIP:
    network = network_of(txn, service.spec.network, service.metadata.namespace)
    held = list(old.spec.vips) if isinstance(old, ServiceVIP) else []
    families = service.spec.families() or _families(txn, network)[:1]
    vips = _addresses(txn, service, network, list(service.spec.vips), held, families)
    backends = [_backend(txn, b, service.metadata.namespace) for b in service.spec.backends]
    spec = {
        "vip": vips[0],
        "vips": vips,
        "ip_families": [f"IPv{v.version}" for v in vips],
        "backends": backends,
        "ports": _node_ports(txn, service),
    }
    return service.model_copy(update={"spec": service.spec.model_copy(update=spec)})


_Public = TypeVar("_Public", FloatingIP, EgressIP)


def _public(
    txn: Txn, obj: FloatingIP | EgressIP, wanted: list[IPAddress], held: list[IPAddress], families: list[int]
) -> list[IPAddress]:
    """The addresses of a floating or egress IP, of `families` (else the pool's first family): those
    asked for, or held, or new ones, in its pool."""
    pool = network_of(txn, obj.spec.pool, obj.metadata.namespace)
    if not pool.spec.external:
        raise Invalid(f"{ident(obj)}: pool {obj.spec.pool} is not an external network")
    return _addresses(txn, obj, pool, wanted, held, families or _families(txn, pool)[:1])


def _floating(txn: Txn, fip: _Public, old: Object | None) -> _Public:
    """A floating (or egress) IP's addresses: of the families asked for, else the pool's first."""
    held = list(old.spec.addresses) if isinstance(old, type(fip)) else []
    addresses = _public(txn, fip, list(fip.spec.addresses), held, fip.spec.families())
    update = {
        "address": addresses[0],
        "addresses": addresses,
        "ip_families": [f"IPv{a.version}" for a in addresses],
    }
    return fip.model_copy(update={"spec": fip.spec.model_copy(update=update)})


def _egress(txn: Txn, egress: EgressIP, old: Object | None) -> EgressIP:
    """One per tenant: it is the tenant's source address."""
    for other in objects.scan(txn, _INFO[EgressIP], egress.metadata.namespace):
        if isinstance(other, EgressIP) and other.metadata.name != egress.metadata.name:
            raise Invalid(
                f"{ident(egress)}: tenant {egress.metadata.namespace} already egresses as "
                f"{other.spec.address} ({ident(other)})"
            )
    return _floating(txn, egress, old)


_ADMIT: dict[type, Callable[[Txn, object, Object | None], Object]] = {
    Node: _node,  # type: ignore[dict-item]
    VirtualNetwork: _network,  # type: ignore[dict-item]
    Subnet: _subnet,  # type: ignore[dict-item]
    Endpoint: _endpoint,  # type: ignore[dict-item]
    ServiceVIP: _service,  # type: ignore[dict-item]
    FloatingIP: _floating,  # type: ignore[dict-item]
    EgressIP: _egress,  # type: ignore[dict-item]
}
