"""The compiled form: typed entries a node programs and the trace driver walks.

A node's desired state is the cluster-wide entries (the same on every node, held once) plus the entries of
that node alone; `NodeState` is that union. Entries are immutable values under a key; a change is a
`Delta` of keys put and deleted per scope ("" for cluster-wide, else a node name), so two states compare
and diff entry by entry.

Keys, by their first element:
  ("node", name)                        NodeEntry: the node's underlay address (its VTEP)
  ("network", ref)                      NetworkEntry: VNI and routing table of a virtual network
  ("route", network, prefix)            RouteEntry: the network's table; endpoint, block, leak, egress or
                                        unreachable
  ("identity", network, address)        Identity: who an address is, for NetworkPolicy peers
  ("service", address, protocol, port)  ServiceEntry: a VIP, external IP or floating IP and its backends
  ("nodeport", protocol, port)          ServiceEntry: the same, on every node's own address
  ("egressip", namespace)               EgressEntry: the source address of the namespace's endpoints outside
  ("block", network, prefix)            BlockEntry: a node's block of a routed network
  ("rule", priority, policy, index)     RuleEntry: an Isthmus Policy rule, in key order
  ("local", network, address)           LocalEntry (node scope): an endpoint attached to this node
  ("ingress" | "egress", network, address)
                                        Isolation (node scope): a local endpoint's NetworkPolicy allows
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

Key = tuple[str | int, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
Protocol = Literal["TCP", "UDP", "SCTP"]
SHARED = ""  # the scope of cluster-wide entries


# the node's own infrastructure, which no endpoint reaches on a node's address, whatever its network allows:
# VXLAN (a packet from a pod would be decapsulated into any network) and BGP (its sessions announce routes)
GUARDED = {("UDP", 4789): "VXLAN", ("TCP", 179): "BGP"}


@dataclass(frozen=True, slots=True)
class NodeEntry:
    name: str
    addresses: tuple[Address, ...]  # one of each family the underlay has, the first its VXLAN endpoint
    announce: tuple[str, ...] = ()  # what its BGP speaker announces: floatingIPs, serviceVIPs, ...

    @property
    def address(self) -> Address:
        """Its VXLAN tunnel endpoint."""
        return self.addresses[0]


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    ref: str  # NAMESPACE/NAME
    vni: int
    table: int  # the kernel routing table, chosen by `ip rule` for the network's endpoints
    mode: str
    node_access: bool = True  # its endpoints reach the nodes' addresses
    # the nodes its traffic goes between: those with its endpoints or blocks, and egress addresses'
    # owners; None: every node (a service reached from outside has backends in it)
    nodes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """`endpoint`: to an endpoint of the network (through its veth on its node, else VXLAN to the node);
    `block`: to `node`'s block of an overlay network (VXLAN to it; on `node` itself, unreachable: its
    endpoints there have their own routes);
    `leak`: to an endpoint of `target` network, allowed by `rule` (only towards `via`, a VIP, when set);
    `imported`: to another cluster's endpoint, over VXLAN in its network's `vni` to its node `via`;
    `egress`: out of the cluster through the sending node's uplink, source NATed to the node's address;
    `unreachable`: the end of the table, and in a table with egress every cluster-internal prefix."""

    network: str
    prefix: Prefix
    kind: Literal["endpoint", "block", "leak", "egress", "unreachable", "imported"]
    node: str | None = None
    endpoint: str | None = None
    target: str | None = None
    via: Address | None = None
    rule: str = ""
    vni: int | None = None  # imported: the remote network's


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Identity:
    """Who an endpoint is to NetworkPolicy: its namespace (and that namespace's labels), its labels and
    its named ports. Endpoints of one template share one identity."""

    namespace: str
    namespace_labels: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int, str], ...] = ()  # (name, port, protocol)

    def named_port(self, name: str, protocol: str) -> int | None:
        return next((p for n, p, proto in self.ports if n == name and proto == protocol), None)


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector: every label in `labels` equal, every requirement (key, operator, values) met."""

    labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, given: tuple[tuple[str, str], ...]) -> bool:
        found = dict(given)
        return all(found.get(k) == v for k, v in self.labels) and all(
            _meets(found, key, operator, values) for key, operator, values in self.requirements
        )


def _meets(labels: dict[str, str], key: str, operator: str, values: tuple[str, ...]) -> bool:
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    return (key in labels) == (operator == "Exists")


@dataclass(frozen=True, slots=True)
class Peer:
    """What a rule's peer matches. With `cidrs`: addresses inside one of them and in no `excepts`.
    Otherwise endpoints: in `namespace`, or in namespaces matching `namespaces`; with labels matching
    `pods` (any, when None). With neither field set (and no cidrs): everything. With `family` (a security
    group's remote group of one ethertype), only addresses of that family."""

    cidrs: tuple[Prefix, ...] = ()
    excepts: tuple[Prefix, ...] = ()
    namespace: str | None = None
    namespaces: Selector | None = None
    pods: Selector | None = None
    family: int | None = None

    def matches(self, address: Address, identity: Identity | None) -> bool:
        if self.family is not None and address.version != self.family:
            return False
        if self.cidrs:
            return any(address in c for c in self.cidrs) and not any(address in e for e in self.excepts)
        if self.namespace is None and self.namespaces is None and self.pods is None:
            return True
        if identity is None:
            return False
        if self.namespaces is not None:
            if not self.namespaces.matches(identity.namespace_labels):
                return False
        elif self.namespace is not None and identity.namespace != self.namespace:
            return False
        return self.pods is None or self.pods.matches(identity.labels)


@dataclass(frozen=True, slots=True)
class Target:
    """A service backend: where DNAT sends the flow."""

    address: Address
    port: int
    node: str | None
    endpoint: str | None
    network: str | None = None  # the endpoint's


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """Flows to this address and port go to one of `targets` (random, or by client address with
    `affinity` seconds of stickiness); with no target they are rejected. At an external or floating IP,
    flows from outside go to a target on the node they reach, else (unless `local_only`) to any."""

    service: str  # NAMESPACE/NAME of the ServiceVIP
    vip: Address  # the ClusterIP (policy rules naming the service match it)
    targets: tuple[Target, ...]
    affinity: int | None = None
    local_only: bool = False  # externalTrafficPolicy: Local


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """A block of a routed network's addresses: its endpoints are on `node`, which announces it; other
    nodes reach it through the underlay's routers."""

    network: str
    prefix: Prefix
    node: str


@dataclass(frozen=True, slots=True)
class EgressEntry:
    """Flows of a namespace's endpoints to the outside leave through `node`, source NATed to `address`;
    `node` announces it."""

    egress: str  # NAMESPACE/NAME of the EgressIP
    addresses: tuple[Address, ...]  # one of each family
    node: str

    @property
    def address(self) -> Address:
        return self.addresses[0]

    def of(self, version: int) -> Address | None:
        """The source address of flows of family `version`."""
        return next((a for a in self.addresses if a.version == version), None)


@dataclass(frozen=True, slots=True)
class Allow:
    """One NetworkPolicy allowance for a local endpoint: traffic with a peer matching `peer`, `protocol`
    ("any": every protocol, ICMP included), and a destination port in [low, high] (or named `port_name`,
    resolved on the destination endpoint)."""

    peer: Peer
    protocol: Protocol | Literal["ICMP", "any"]
    low: int = 1
    high: int = 65535
    port_name: str = ""
    rule: str = ""  # NetworkPolicy NAMESPACE/NAME ingress[i] | egress[i]


@dataclass(frozen=True, slots=True)
class Isolation:
    """A local endpoint selected by NetworkPolicies for a direction: only `allows` pass."""

    policies: tuple[str, ...]
    allows: tuple[Allow, ...]


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """An Isthmus Policy rule: traffic from `source` to `destination` (a service: its VIP, and its
    backends after DNAT) gets `action`; rules are tried in key order, first match wins."""

    policy: str
    action: Literal["allow", "deny"]
    protocol: str
    ports: tuple[tuple[int, int], ...]
    source: Peer
    destination: Peer
    service: str | None = None


@dataclass(frozen=True, slots=True)
class LocalEntry:
    endpoint: str
    network: str
    address: Address
    mac: str
    kind: str


Entry = (
    NodeEntry
    | NetworkEntry
    | RouteEntry
    | Identity
    | ServiceEntry
    | EgressEntry
    | BlockEntry
    | RuleEntry
    | LocalEntry
    | Isolation
)
Entries = dict[Key, Entry]


@dataclass
class Delta:
    """Per scope: entries to put (new or changed), keys to delete."""

    puts: dict[str, Entries] = field(default_factory=dict)
    deletes: dict[str, set[Key]] = field(default_factory=dict)

    def put(self, scope: str, key: Key, entry: Entry) -> None:
        self.puts.setdefault(scope, {})[key] = entry
        self.deletes.get(scope, set()).discard(key)

    def delete(self, scope: str, key: Key) -> None:
        self.deletes.setdefault(scope, set()).add(key)
        self.puts.get(scope, {}).pop(key, None)

    def __bool__(self) -> bool:
        return any(self.puts.values()) or any(self.deletes.values())


class NodeState(Mapping[Key, Entry]):
    """One node's desired state: the cluster-wide entries overlaid with its own."""

    def __init__(self, node: str, shared: Entries, own: Entries) -> None:
        self.node, self.shared, self.own = node, shared, own

    def __getitem__(self, key: Key) -> Entry:
        return self.own[key] if key in self.own else self.shared[key]

    def __iter__(self) -> Iterator[Key]:
        yield from self.shared
        yield from (k for k in self.own if k not in self.shared)

    def __len__(self) -> int:
        return len(self.shared) + sum(1 for k in self.own if k not in self.shared)
