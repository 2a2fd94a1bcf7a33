"""Channels: the copies of objects that nodes watch, so that each node receives only what it needs.

Beside its key under /objects/, every object a node compiles is kept, in the same transaction, under each
channel it belongs to: /channels/CHANNEL/GROUP/KIND/[NAMESPACE/]NAME. A node watches a few channels on
one stream and receives a change only when it is in one of them:

  cluster     what every node needs: Nodes, Namespaces, SubnetPools, Isthmus Policies, floating IPs,
              egress addresses, imported routes, networks that do not grow from a pool (external ones,
              tenants' own) and their subnets (the cluster-internal prefixes), and services reachable
              from outside (node ports, external IPs)
  node/NODE   the endpoints attached to NODE
  ns/NS       a namespace's endpoints, services, NetworkPolicies and security groups, and what concerns
              the networks of NS: those that grow from a pool (each node programs only the networks
              it needs), their blocks, the services with backends in them, and the endpoints of a
              network routed per endpoint (not by its nodes' blocks)

Which channels an object belongs to is a function of the object and of its network (`channels`).

Every transaction that changes a channel also writes its stamp, /channels/stamps/CHANNEL: the stamp's mod
revision is the channel's last change. Before it watches, a node reads its channels' stamps (`due`) and
starts each channel that holds its last change at the read's revision (`settle`): etcd replays a watcher's
history from its start revision before it sends anything live, and quiet channels would otherwise drag
every resumed watch back to the revision they were listed at. A channel that did change is current with
that revision as soon as its watch delivers the stamp's revision, so a resumed node knows it is current
without waiting for a progress notification. A Namespace's, Tenant's or Node's deletion deletes the stamp
of the channel named after it (a missing stamp keeps a position where it is), so stamps do not outlive
their channels.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from isthmus.model import (
    EgressIP,
    Endpoint,
    FloatingIP,
    ImportedRoute,
    KubeObject,
    Node,
    Object,
    Policy,
    SecurityGroup,
    ServiceVIP,
    Subnet,
    SubnetPool,
    Tenant,
    VirtualNetwork,
)
from isthmus.model.meta import split_ref
from isthmus.store.ledger import Ledger

CHANNELS = "/channels/"
STAMPS = f"{CHANNELS}stamps/"
CLUSTER = "cluster"
Network = Callable[[str, str], VirtualNetwork | None]  # (namespace, name) -> the network, if stored
_EVERYWHERE = (Node, SubnetPool, Policy, FloatingIP, EgressIP, ImportedRoute)


def node(name: str) -> str:
    return f"node/{name}"


def namespace(name: str) -> str:
    return f"ns/{name}"


def prefix(channel: str) -> str:
    return f"{CHANNELS}{channel}/"


def stamp(channel: str) -> str:
    return STAMPS + channel


Due = dict[str, tuple[int, int]]  # channel prefix -> (its last change, the revision that was read at)


def due(ledger: Ledger, prefixes: Collection[str]) -> Due:
    """Each channel's last change as its stamp shows it, read in one transaction (no stamp: not known)."""
    channel = {p: p.removeprefix(CHANNELS).removesuffix("/") for p in prefixes}
    stamps, revision = ledger.read([stamp(c) for c in channel.values()])
    return {p: (s.mod_revision, revision) for p, c in channel.items() if (s := stamps.get(stamp(c)))}


def settle(positions: Mapping[str, int], due: Due) -> dict[str, int]:
    """`positions` (channel prefix -> every change up to there held), each channel that holds its last
    change moved up to the revision its stamp was read at (it has not changed since)."""
    return {p: max(at, due[p][1]) if p in due and at >= due[p][0] else at for p, at in positions.items()}


def named_after(obj: Object) -> str | None:
    """The channel named after the object (a Namespace's or Tenant's, a Node's), if any."""
    if isinstance(obj, Node):
        return node(obj.metadata.name)
    if isinstance(obj, Tenant) or (isinstance(obj, KubeObject) and obj.kind == "Namespace"):
        return namespace(obj.metadata.name)
    return None


def routed_per_endpoint(network: VirtualNetwork | None) -> bool:
    """Whether other nodes route each of the network's endpoints (no blocks of its nodes to route)."""
    return network is None or network.spec.mode == "routed" or not network.spec.pools()


def channels(obj: Object, network: Network) -> set[str]:
    """The channels an object belongs to (none: no node compiles it)."""
    own = obj.metadata.namespace or ""
    if isinstance(obj, _EVERYWHERE) or (isinstance(obj, KubeObject) and obj.kind == "Namespace"):
        return {CLUSTER}
    if isinstance(obj, VirtualNetwork):
        grows = bool(obj.spec.pools()) and not obj.spec.external
        return {namespace(own)} if grows else {CLUSTER}
    if isinstance(obj, Subnet):
        return {namespace(own)} if obj.spec.pool else {CLUSTER}
    if isinstance(obj, Endpoint):
        found = {namespace(own)} | ({node(obj.spec.node)} if obj.spec.node else set())
        net_ns, net_name = split_ref(obj.spec.network, own)
        if (net_ns or own) != own and routed_per_endpoint(network(net_ns or own, net_name)):
            found.add(namespace(net_ns or own))
        return found
    if isinstance(obj, ServiceVIP):
        found = {namespace(own)} | {namespace(ns) for ns, _ in obj.backend_networks()}
        return found | ({CLUSTER} if obj.reached_from_outside() else set())
    if isinstance(obj, SecurityGroup) or (isinstance(obj, KubeObject) and obj.kind == "NetworkPolicy"):
        return {namespace(own)}
    return set()
