"""The compiler: the ledger's intent to every node's desired state, incrementally.

Invariant: after every change, the state equals `Compiler(objects).state` compiled afresh from the same
objects (a property test checks it on random sequences), and the delta a change returns is exactly the
difference. The state is the union of units, each a pure function of a few objects: a node, a network,
a routed network's block (a subnet given to a node), an endpoint (its routes, identity, attachment and
NetworkPolicy isolation), a service, a floating IP, an egress address, an Isthmus Policy (its rules and the
routes it leaks). A change recomputes the units whose inputs it touches. When two units give one key
(two services claiming one external IP), the unit that sorts first wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import sys
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence

from pydantic import ValidationError

from isthmus.compile import netpol, security
from isthmus.compile.state import (
    SHARED,
    Address,
    BlockEntry,
    Delta,
    EgressEntry,
    Entries,
    Entry,
    Identity,
    Isolation,
    Key,
    LocalEntry,
    NetworkEntry,
    NodeEntry,
    NodeState,
    Peer,
    Prefix,
    RouteEntry,
    RuleEntry,
    ServiceEntry,
    Target,
)
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
    VirtualNetwork,
)
from isthmus.model.meta import split_ref
from isthmus.model.netpol import NetworkPolicySpec, parse_network_policy
from isthmus.model.policy import Peer as PolicyPeer
from isthmus.model.policy import PolicyRule

Unit = tuple[str, str, str]  # kind, namespace ("" when none), name
Made = list[tuple[str, Key, Entry]]  # scope, key, entry
Isolations = tuple[Isolation | None, Isolation | None]  # ingress, egress
TABLE_BASE = 1000  # a network's table is TABLE_BASE + its VNI
METADATA_NAME = "kubernetes.io/metadata.name"
INTERNAL = "cluster-internal prefix"  # the rule of unreachable routes that keep egress inside isolation
DEFAULTS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
SECURITY_GROUP = "securitygroup/"  # the name its NetworkPolicy goes by, as in NAMESPACE/securitygroup/NAME
UNITS = (
    "Node",
    "VirtualNetwork",
    "Subnet",
    "Endpoint",
    "ServiceVIP",
    "FloatingIP",
    "EgressIP",
    "Policy",
    "ImportedRoute",
)


def unit_of(obj: Object) -> Unit:
    return obj.kind, obj.metadata.namespace or "", obj.metadata.name


def ref(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _split(network: str) -> tuple[str, str]:
    namespace, name = split_ref(network, None)
    return namespace or "", name


def _subnet_network(subnet: Subnet) -> str:
    return ref(*split_ref(subnet.spec.network, subnet.metadata.namespace))


def _host(address: Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(address)


class Compiler:
    """Holds the objects it compiled and the state they give; `change` applies a change and returns the
    delta. Reads only model objects: the caller lists them from the ledger (or watches it)."""

    KINDS = (*UNITS, "Namespace", "NetworkPolicy", "SecurityGroup", "SubnetPool")  # what it reads

    def __init__(self, objects: Iterable[Object] = ()) -> None:
        self.objects: dict[str, dict[tuple[str, str], Object]] = {k: {} for k in self.KINDS}
        self.netpols: dict[str, dict[str, NetworkPolicySpec]] = defaultdict(dict)  # namespace -> name -> spec
        # "ns:"/"vn:" namespace or network -> its endpoints; "on:NETWORK|NODE" -> its endpoints on a node;
        # "sn:" network -> its nodes' blocks; "bn:NETWORK|NODE" -> a node's blocks of a network;
        # "it:"/"rt:" route target -> the networks importing it / the imported routes carrying it
        self.members: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.parts: dict[Unit, Made] = {}
        self.owners: dict[str, dict[Key, list[Unit]]] = defaultdict(dict)  # scope -> key -> units giving it
        # one object per identity, shared by its endpoints, and its isolation; both forgotten with it
        self.identities: weakref.WeakValueDictionary[Identity, Identity] = weakref.WeakValueDictionary()
        self.isolations: dict[str, weakref.WeakKeyDictionary[Identity, Isolations]] = defaultdict(
            weakref.WeakKeyDictionary
        )
        self.state: dict[str, Entries] = {SHARED: {}}
        self.spans: dict[str, Counter[str]] = defaultdict(
            Counter
        )  # network -> its endpoints and blocks by node
        self.outside: Counter[str] = Counter()  # network -> services reached from outside with backends in it
        self.reshaped: set[str] = set()  # networks whose nodes changed since the last recompute
        for obj in objects:
            self._store(obj)
        self.internal = self._internal()
        self.reshaped.clear()
        self._recompute(set(self._units()), Delta())

    # -- reading the state

    def nodes(self) -> list[str]:
        return sorted(name for _, name in self.objects["Node"])

    def node_state(self, node: str) -> NodeState:
        return NodeState(node, self.state[SHARED], self.state.get(node, {}))

    # -- changing it

    def change(self, puts: Sequence[Object] = (), deletes: Sequence[Unit] = ()) -> Delta:
        """Store `puts`, forget `deletes` (kind, namespace, name) and return what the state changed by."""
        touched: set[Unit] = set()
        for obj in puts:
            if obj.kind in self.objects:
                old = self.objects[obj.kind].get((obj.metadata.namespace or "", obj.metadata.name))
                touched |= self._touches(old) | self._touches(obj)
                self._store(obj)
        for kind, namespace, name in deletes:
            old = self.objects.get(kind, {}).pop((namespace, name), None)
            if old is not None:
                touched |= self._touches(old)
                self._index(old, add=False)
        if any(o.kind in ("Node", "EgressIP") for o in puts) or any(
            d[0] in ("Node", "EgressIP") for d in deletes
        ):
            self.reshaped |= {ref(ns or None, name) for ns, name in self.objects["VirtualNetwork"]}
        touched |= {("VirtualNetwork", *_split(n)) for n in self.reshaped}
        self.reshaped.clear()
        addressing = ("VirtualNetwork", "Subnet", "SubnetPool")
        if any(o.kind in addressing for o in puts) or any(d[0] in addressing for d in deletes):
            internal = self._internal()
            if internal != self.internal:  # every egress network's table holds these prefixes
                self.internal = internal
                touched |= {("VirtualNetwork", ns, name) for ns, name in self.objects["VirtualNetwork"]}
        delta = Delta()
        self._recompute(touched, delta)
        return delta

    def _store(self, obj: Object) -> None:
        if obj.kind not in self.objects:
            return
        namespace = obj.metadata.namespace or ""
        old = self.objects[obj.kind].get((namespace, obj.metadata.name))
        if old is not None:
            self._index(old, add=False)
        self.objects[obj.kind][(namespace, obj.metadata.name)] = obj
        self._index(obj, add=True)

    def _index(self, obj: Object, add: bool) -> None:
        """Keep what is derived from stored objects in step: endpoints by namespace and network, networks
        and imported routes by route target, parsed NetworkPolicies, and the isolation cache of a namespace
        whose policies or labels change."""
        namespace, name = obj.metadata.namespace or "", obj.metadata.name
        groups: list[str] = []
        if isinstance(obj, Endpoint):
            network = self.network_of(obj)
            groups = ["ns:" + namespace, "vn:" + network, f"on:{network}|{obj.spec.node}"]
        elif isinstance(obj, Subnet) and obj.spec.node is not None:
            network = _subnet_network(obj)
            groups = ["sn:" + network, f"bn:{network}|{obj.spec.node}"]
        elif isinstance(obj, VirtualNetwork):
            groups = ["it:" + t for t in obj.spec.import_targets]
        elif isinstance(obj, ImportedRoute):
            groups = ["rt:" + t for t in obj.spec.route_targets]
        for group in groups:
            (self.members[group].add if add else self.members[group].discard)((namespace, name))
        self._count_outside(obj, 1 if add else -1)
        if obj.kind in ("Namespace", "NetworkPolicy", "SecurityGroup"):
            self.isolations.pop(name if obj.kind == "Namespace" else namespace, None)
        if isinstance(obj, SecurityGroup):  # enforced as the NetworkPolicy it amounts to
            self.netpols[namespace].pop(SECURITY_GROUP + name, None)
            if add:
                self.netpols[namespace][SECURITY_GROUP + name] = security.network_policy(obj)
        if isinstance(obj, KubeObject) and obj.kind == "NetworkPolicy":
            self.netpols[namespace].pop(name, None)
            if add:
                with contextlib.suppress(ValidationError):  # the translator reports it; it isolates nothing
                    self.netpols[namespace][name] = parse_network_policy(obj.body)

    def _count_outside(self, obj: Object, step: int) -> None:
        """Count the services reached from outside with backends in each network: such a network reaches
        every node (a node receiving a flow from outside forwards it to the backend's node)."""
        if isinstance(obj, ServiceVIP) and obj.reached_from_outside():
            for network in {ref(ns or None, name) for ns, name in obj.backend_networks()}:
                self.outside[network] += step
                if self.outside[network] == (1 if step > 0 else 0):
                    self.reshaped.add(network)
                if not self.outside[network]:
                    del self.outside[network]

    def _route_span(self, entry: Entry | None, step: int) -> None:
        """Count the nodes a network's routes lead to (its endpoints', blocks' and leaks' nodes)."""
        if isinstance(entry, (RouteEntry, BlockEntry)) and entry.node is not None:
            count = self.spans[entry.network]
            count[entry.node] += step
            if count[entry.node] == (1 if step > 0 else 0):  # the network reaches the node, or leaves it
                self.reshaped.add(entry.network)
            if not count[entry.node]:
                del count[entry.node]

    def _reach(self, network: str) -> tuple[str, ...] | None:
        """The nodes a network's traffic goes between (None: every node)."""
        if self.outside.get(network):
            return None
        owners = {self._owner(e) for e in self.objects["EgressIP"].values() if isinstance(e, EgressIP)}
        return tuple(sorted(set(self.spans.get(network, {})) | {o for o in owners if o}))

    def _endpoints(self, group: str) -> list[Endpoint]:
        found = (self.objects["Endpoint"].get(k) for k in sorted(self.members.get(group, ())))
        return [e for e in found if isinstance(e, Endpoint)]

    def _internal(self) -> tuple[Prefix, ...]:
        """The cluster's own addresses, never routed out of it: every SubnetPool no external network draws
        from, and every subnet not drawn from a pool of a network not known as external, aggregated.
        (Nodes' addresses are not among them: endpoints reach them as the nodes' own,
        `NetworkEntry.node_access`.) A node holding only its slice finds the same: external networks
        and subnets not drawn from a pool reach every node."""
        external = {
            key: network
            for key, network in self.objects["VirtualNetwork"].items()
            if isinstance(network, VirtualNetwork) and network.spec.external
        }
        outside = {pool for n in external.values() for pool in n.spec.pools()}
        found: list[Prefix] = [
            pool.spec.cidr
            for (_, name), pool in self.objects["SubnetPool"].items()
            if name not in outside and isinstance(pool, SubnetPool)
        ]
        for (namespace, _), subnet in self.objects["Subnet"].items():
            if not isinstance(subnet, Subnet) or subnet.spec.cidr is None or subnet.spec.pool:
                continue  # a block lies inside its pool (admission keeps it there)
            ns, network = split_ref(subnet.spec.network, namespace or None)
            if (ns or "", network) not in external:
                found.append(subnet.spec.cidr)
        return tuple(
            itertools.chain(
                ipaddress.collapse_addresses(p for p in found if isinstance(p, ipaddress.IPv4Network)),
                ipaddress.collapse_addresses(p for p in found if isinstance(p, ipaddress.IPv6Network)),
            )
        )

    def _units(self) -> Iterator[Unit]:
        for kind in UNITS:
            yield from ((kind, ns, name) for ns, name in self.objects[kind])

    def _touches(self, obj: Object | None) -> set[Unit]:
        """The units whose inputs include this object."""
        if obj is None:
            return set()
        kind, namespace, name = unit_of(obj)
        touched = {(kind, namespace, name)} if kind in UNITS else set()
        if isinstance(obj, VirtualNetwork):  # its import targets choose the imported routes it holds
            touched |= {
                ("ImportedRoute", ns, n)
                for t in obj.spec.import_targets
                for ns, n in self.members.get("rt:" + t, ())
            }
            network = ref(namespace, name)
            for ns, n in self.members.get("sn:" + network, ()):  # its blocks, and its endpoints in them
                touched.add(("Subnet", ns, n))
                block = self.objects["Subnet"].get((ns, n))
                if isinstance(block, Subnet) and block.spec.node is not None:
                    group = f"on:{network}|{block.spec.node}"
                    touched |= {("Endpoint", e_ns, e) for e_ns, e in self.members.get(group, ())}
        if isinstance(obj, Subnet) and obj.spec.node is not None:  # its node's endpoints in it
            group = f"on:{_subnet_network(obj)}|{obj.spec.node}"
            touched |= {("Endpoint", ns, n) for ns, n in self.members.get(group, ())}
        if kind == "Node":  # egress addresses may change owner
            touched |= {("EgressIP", ns, n) for ns, n in self.objects["EgressIP"]}
        if kind in ("Namespace", "NetworkPolicy", "SecurityGroup"):  # the namespace's endpoints' isolation
            space = name if kind == "Namespace" else namespace
            touched |= {("Endpoint", space, n) for _, n in self.members.get("ns:" + space, ())}
        if isinstance(obj, Endpoint):  # the policies that may leak routes to or from it
            network = self.network_of(obj)
            touched |= {
                ("Policy", ns, n)
                for (ns, n), policy in self.objects["Policy"].items()
                if isinstance(policy, Policy)
                and (ns == namespace or any(self._names_network(r, ns, network) for r in policy.spec.rules))
            }
        if kind == "ServiceVIP":
            touched |= {
                ("FloatingIP", ns, n)
                for (ns, n), fip in self.objects["FloatingIP"].items()
                if isinstance(fip, FloatingIP) and fip.spec.service and self._is(fip.spec.service, ns, obj)
            }
            touched |= {
                ("Policy", ns, n)
                for (ns, n), policy in self.objects["Policy"].items()
                if isinstance(policy, Policy)
                and any(
                    r.destination.service and self._is(r.destination.service, ns, obj)
                    for r in policy.spec.rules
                )
            }
        return touched

    @staticmethod
    def _names_network(rule: PolicyRule, namespace: str, network: str) -> bool:
        return any(
            p.network and ref(*split_ref(p.network, namespace)) == network
            for p in (rule.source, rule.destination)
        )

    @staticmethod
    def _is(reference: str, namespace: str, obj: Object) -> bool:
        ns, name = split_ref(reference, namespace)
        return (ns or "", name) == (obj.metadata.namespace or "", obj.metadata.name)

    def _recompute(self, touched: set[Unit], delta: Delta) -> None:
        changed: set[tuple[str, Key]] = set()
        for unit in touched:
            for scope, key, _ in self.parts.pop(unit, []):
                self.owners[scope][key].remove(unit)
                changed.add((scope, key))
            kind, namespace, name = unit
            obj = self.objects[kind].get((namespace, name))
            made = self._part(obj) if obj is not None else []
            if made:
                self.parts[unit] = made
            for scope, key, _ in made:
                self.owners[scope].setdefault(key, []).append(unit)
                changed.add((scope, key))
        for scope, key in changed:
            owners = self.owners[scope].get(key)
            entries = self.state.setdefault(scope, {})
            old = entries.get(key)
            if owners:
                first = min(owners)
                entry = next(e for s, k, e in self.parts[first] if (s, k) == (scope, key))
                if old != entry:
                    entries[key] = entry
                    delta.put(scope, key, entry)
                    if scope == SHARED:
                        self._route_span(old, -1)
                        self._route_span(entry, 1)
            else:
                self.owners[scope].pop(key, None)
                if entries.pop(key, None) is not None:
                    delta.delete(scope, key)
                    if scope == SHARED:
                        self._route_span(old, -1)
        if self.reshaped:  # networks whose nodes changed: their entries name them (no route of theirs does)
            networks = {("VirtualNetwork", *_split(n)) for n in self.reshaped}
            self.reshaped.clear()
            self._recompute(networks, delta)

    # -- the units

    def _part(self, obj: Object) -> Made:
        if isinstance(obj, Node):
            announce = tuple(obj.spec.bgp.announce) if obj.spec.bgp else ()
            return [
                (
                    SHARED,
                    ("node", obj.metadata.name),
                    NodeEntry(obj.metadata.name, tuple(obj.spec.addresses), announce),
                )
            ]
        if isinstance(obj, VirtualNetwork):
            return self._network(obj)
        if isinstance(obj, Subnet) and obj.spec.node is not None and obj.spec.cidr is not None:
            return self._block(obj, obj.spec.node, obj.spec.cidr)
        if isinstance(obj, Endpoint):
            return self._endpoint(obj)
        if isinstance(obj, ServiceVIP):
            return self._service(obj)
        if isinstance(obj, FloatingIP):
            return self._floating(obj)
        if isinstance(obj, EgressIP):
            return self._egress(obj)
        if isinstance(obj, ImportedRoute):
            return self._imported(obj)
        if isinstance(obj, Policy):
            return self._policy(obj)
        return []

    def _network(self, network: VirtualNetwork) -> Made:
        """Its table's end: unreachable, or with egress a default route out (source NAT) behind
        unreachable routes to every cluster-internal prefix, so that isolation still holds."""
        if network.spec.vni is None:
            return []
        name = ref(network.metadata.namespace, network.metadata.name)
        made: Made = [
            (
                SHARED,
                ("network", name),
                NetworkEntry(
                    name,
                    network.spec.vni,
                    TABLE_BASE + network.spec.vni,
                    network.spec.mode,
                    network.spec.node_access,
                    self._reach(name),
                ),
            )
        ]
        if not network.spec.egress:
            return made + [
                (SHARED, ("route", name, str(default)), RouteEntry(name, default, "unreachable"))
                for default in DEFAULTS
            ]
        made += [
            (
                SHARED,
                ("route", name, str(default)),
                RouteEntry(name, default, "egress", rule=f"VirtualNetwork {name} egress"),
            )
            for default in DEFAULTS
        ]
        return made + [
            (
                SHARED,
                ("route", name, str(prefix)),
                RouteEntry(name, prefix, "unreachable", rule=INTERNAL),
            )
            for prefix in self.internal
        ]

    def _block(self, subnet: Subnet, node: str, cidr: Prefix) -> Made:
        """A node's block: in a routed network announced by the node; in an overlay network one route to
        the node (over VXLAN), standing for the routes of its endpoints there."""
        name = _subnet_network(subnet)
        ns, network_name = split_ref(name, None)
        network = self.objects["VirtualNetwork"].get((ns or "", network_name))
        if not isinstance(network, VirtualNetwork):
            return []
        if network.spec.mode == "routed":
            return [(SHARED, ("block", name, str(cidr)), BlockEntry(name, cidr, node))]
        route = RouteEntry(name, cidr, "block", node, rule=f"block {cidr} of node {node}")
        return [(SHARED, ("route", name, str(cidr)), route)]

    def _in_block(self, network: str, node: str, address: Address) -> bool:
        """Whether an overlay network routes `address` by the block of `node` that holds it."""
        blocks = (self.objects["Subnet"].get(k) for k in self.members.get(f"bn:{network}|{node}", ()))
        if not any(isinstance(b, Subnet) and address in b.spec.cidr for b in blocks):
            return False
        namespace, name = split_ref(network, None)
        found = self.objects["VirtualNetwork"].get((namespace or "", name))
        return isinstance(found, VirtualNetwork) and found.spec.mode != "routed"

    def identity(self, endpoint: Endpoint) -> Identity:
        namespace = endpoint.metadata.namespace or ""
        declared = self.objects["Namespace"].get(("", namespace))
        labels = {**(declared.metadata.labels if declared else {}), METADATA_NAME: namespace}
        made = Identity(
            namespace,
            tuple(sorted(labels.items())),
            tuple(sorted(endpoint.metadata.labels.items())),
            tuple(sorted((p.name, p.port, p.protocol) for p in endpoint.spec.ports if p.name)),
        )
        return self.identities.setdefault(made, made)

    def network_of(self, endpoint: Endpoint) -> str:
        ns, name = split_ref(endpoint.spec.network, endpoint.metadata.namespace)
        return sys.intern(ref(ns, name))

    def _isolation(self, namespace: str, identity: Identity) -> Isolations:
        """Isolation is a function of the identity and the namespace's policies: computed once for each."""
        cached = self.isolations[namespace]
        if identity not in cached:
            policies = sorted(self.netpols.get(namespace, {}).items())
            cached[identity] = netpol.isolation(identity, [(ref(namespace, n), spec) for n, spec in policies])
        return cached[identity]

    def _endpoint(self, endpoint: Endpoint) -> Made:
        network, node = self.network_of(endpoint), endpoint.spec.node
        name = ref(endpoint.metadata.namespace, endpoint.metadata.name)
        identity = self.identity(endpoint)
        ingress, egress = self._isolation(endpoint.metadata.namespace or "", identity)
        made: Made = []
        for address in endpoint.spec.addresses:
            text = str(address)
            made.append((SHARED, ("identity", network, text), identity))
            if node is None:
                continue
            prefix = _host(address)
            route = RouteEntry(network, prefix, "endpoint", node, name)
            scope = node if self._in_block(network, node, address) else SHARED  # elsewhere: its block
            made.append((scope, ("route", network, str(prefix)), route))
            local = LocalEntry(name, network, address, endpoint.spec.mac or "", endpoint.spec.kind)
            made.append((node, ("local", network, text), local))
            made += [
                (node, (direction, network, text), isolated)
                for direction, isolated in (("ingress", ingress), ("egress", egress))
                if isolated is not None
            ]
        if node is not None:  # allowed address pairs: routed to it like its own addresses
            made += [
                (SHARED, ("route", network, str(prefix)), RouteEntry(network, prefix, "endpoint", node, name))
                for prefix in endpoint.spec.allowed_addresses
            ]
        return made

    def targets(self, vip: ServiceVIP, port_index: int) -> tuple[Target, ...]:
        """Where flows to one port of the VIP go: ready backends (or every one, publishing not-ready ones)
        whose target port resolves."""
        port = vip.spec.ports[port_index]
        found = []
        for backend in vip.spec.backends:
            number = port.target_for(backend.ports)
            if number is None or not (backend.ready or vip.spec.publish_not_ready):
                continue
            endpoint = ref(*split_ref(backend.endpoint, vip.metadata.namespace)) if backend.endpoint else None
            found += [Target(a, number, backend.node, endpoint, backend.network) for a in backend.addresses]
        return tuple(sorted(found, key=lambda t: (t.address.version, int(t.address), t.port)))

    @staticmethod
    def vip_for(vip: ServiceVIP, address: Address) -> Address:
        """The service's VIP of the family of `address` (an external or floating IP), else its first (it
        has one)."""
        return next((v for v in vip.spec.vips if v.version == address.version), vip.spec.vips[0])

    def _service(self, vip: ServiceVIP) -> Made:
        if vip.spec.vip is None:
            return []
        name = ref(vip.metadata.namespace, vip.metadata.name)
        affinity = vip.spec.affinity_timeout if vip.spec.session_affinity == "ClientIP" else None
        made: Made = []
        local = vip.spec.external_traffic_policy == "Local"
        for i, port in enumerate(vip.spec.ports):
            targets = self.targets(vip, i)
            for address in [*vip.spec.vips, *vip.spec.external_ips]:
                entry = ServiceEntry(name, self.vip_for(vip, address), targets, affinity, local)
                made.append((SHARED, ("service", str(address), port.protocol, port.port), entry))
            if port.node_port is not None:
                entry = ServiceEntry(name, vip.spec.vip, targets, affinity, local)
                made.append((SHARED, ("nodeport", port.protocol, port.node_port), entry))
        return made

    def _floating(self, fip: FloatingIP) -> Made:
        """Each address of the floating IP: to the service's targets of its family, or to the endpoints'
        addresses of its family (every port)."""
        if fip.spec.service is not None:
            ns, name = split_ref(fip.spec.service, fip.metadata.namespace)
            vip = self.objects["ServiceVIP"].get((ns or "", name))
            if not isinstance(vip, ServiceVIP) or vip.spec.vip is None:
                return []
            affinity = vip.spec.affinity_timeout if vip.spec.session_affinity == "ClientIP" else None
            local = vip.spec.external_traffic_policy == "Local"
            return [
                (
                    SHARED,
                    ("service", str(address), port.protocol, port.port),
                    ServiceEntry(
                        ref(ns, name), self.vip_for(vip, address), self.targets(vip, i), affinity, local
                    ),
                )
                for address in fip.spec.addresses
                for i, port in enumerate(vip.spec.ports)
            ]
        targets = []
        for endpoint_ref in fip.spec.endpoints:
            ns, name = split_ref(endpoint_ref, fip.metadata.namespace)
            endpoint = self.objects["Endpoint"].get((ns or "", name))
            if isinstance(endpoint, Endpoint):
                where = (endpoint.spec.node, ref(ns, name), self.network_of(endpoint))
                targets += [Target(a, 0, *where) for a in endpoint.spec.addresses]
        name = ref(fip.metadata.namespace, fip.metadata.name)
        return [
            (SHARED, ("service", str(address), "any", 0), ServiceEntry(name, address, tuple(targets)))
            for address in fip.spec.addresses
        ]

    def _egress(self, egress: EgressIP) -> Made:
        """The tenant's egress address and its owner."""
        owner = self._owner(egress)
        if egress.spec.address is None or owner is None:
            return []
        name = ref(egress.metadata.namespace, egress.metadata.name)
        entry = EgressEntry(name, tuple(egress.spec.addresses), owner)
        return [(SHARED, ("egressip", egress.metadata.namespace or ""), entry)]

    def _owner(self, egress: EgressIP) -> str | None:
        """The node named, else among the nodes announcing egress addresses (all nodes when none does)
        the one that wins rendezvous hashing, so that an address moves only when its owner goes."""
        nodes = [n for n in self.objects["Node"].values() if isinstance(n, Node)]
        if not nodes:
            return None
        if egress.spec.node in {n.metadata.name for n in nodes}:
            return egress.spec.node
        name = ref(egress.metadata.namespace, egress.metadata.name)
        speakers = [n for n in nodes if n.spec.bgp and "egressIPs" in n.spec.bgp.announce] or nodes
        return max(
            speakers, key=lambda n: hashlib.sha256(f"{name} {n.metadata.name}".encode()).digest()
        ).metadata.name

    def _imported(self, route: ImportedRoute) -> Made:
        """The route in every network that imports one of its route targets."""
        prefix = route.spec.prefix
        rule = f"ImportedRoute {route.metadata.name} ({route.spec.route_distinguisher or route.spec.peer})"
        importers = sorted({k for t in route.spec.route_targets for k in self.members.get("it:" + t, ())})
        return [
            (
                SHARED,
                ("route", name, str(prefix)),
                RouteEntry(name, prefix, "imported", via=route.spec.next_hop, rule=rule, vni=route.spec.vni),
            )
            for ns, n in importers
            if isinstance(network := self.objects["VirtualNetwork"].get((ns, n)), VirtualNetwork)
            and network.spec.vni is not None
            for name in [ref(ns or None, n)]
        ]

    def _peer(self, given: PolicyPeer, namespace: str | None) -> Peer:
        selector = netpol.selector(given.selector) if given.selector is not None else None
        if given.cidr is not None:
            return Peer(cidrs=(given.cidr,), excepts=tuple(given.except_))
        if selector is not None:
            return Peer(namespace=namespace or "", pods=selector)
        return Peer()

    def _members(self, given: PolicyPeer, namespace: str | None) -> list[Endpoint]:
        """The endpoints a rule's peer names by network or selector."""
        selector = netpol.selector(given.selector) if given.selector is not None else None
        network = ref(*split_ref(given.network, namespace)) if given.network else None
        if network is not None:
            found = self._endpoints("vn:" + network)
        elif selector is not None:
            found = self._endpoints("ns:" + (namespace or ""))
        else:
            return []
        return [
            e
            for e in found
            if (selector is None or selector.matches(tuple(sorted(e.metadata.labels.items()))))
            and (network is None or selector is None or e.metadata.namespace == namespace)
        ]

    def _policy(self, policy: Policy) -> Made:
        """Its rules, in order; for allow rules, routes leaked into the sources' networks towards the
        destinations' endpoints (a service's backends, reachable only through its VIP)."""
        namespace, name = policy.metadata.namespace, ref(policy.metadata.namespace, policy.metadata.name)
        made: Made = []
        for i, rule in enumerate(policy.spec.rules):
            service = (
                ref(*split_ref(rule.destination.service, namespace)) if rule.destination.service else None
            )
            ports = tuple((p.port, p.end_port or p.port) for p in rule.ports)
            entry = RuleEntry(
                name,
                rule.action,
                rule.protocol,
                ports,
                self._peer(rule.source, namespace),
                self._peer(rule.destination, namespace),
                service,
            )
            made.append((SHARED, ("rule", policy.spec.priority, name, i), entry))
            if rule.action == "allow":
                made += self._leaks(rule.source, rule.destination, namespace, service, f"{name} rules[{i}]")
        return made

    def _leaks(
        self,
        source: PolicyPeer,
        destination: PolicyPeer,
        namespace: str | None,
        service: str | None,
        rule: str,
    ) -> Made:
        towards: list[tuple[Address, str, str | None, str | None, Address | None]] = []
        if service is not None:
            ns, vip_name = split_ref(service, namespace)
            vip = self.objects["ServiceVIP"].get((ns or "", vip_name))
            if isinstance(vip, ServiceVIP):
                for backend in vip.spec.backends:
                    if backend.endpoint and backend.address is not None:
                        ep_ns, ep_name = split_ref(backend.endpoint, ns)
                        ep = self.objects["Endpoint"].get((ep_ns or "", ep_name))
                        if isinstance(ep, Endpoint):
                            where = (self.network_of(ep), ep.spec.node, ref(ep_ns, ep_name), vip.spec.vip)
                            towards.append((backend.address, *where))
        else:
            for ep in self._members(destination, namespace):
                for address in ep.spec.addresses:
                    towards.append(
                        (
                            address,
                            self.network_of(ep),
                            ep.spec.node,
                            ref(ep.metadata.namespace, ep.metadata.name),
                            None,
                        )
                    )
        sources = {self.network_of(ep) for ep in self._members(source, namespace)}
        return [
            (
                SHARED,
                ("route", network, str(_host(address))),
                RouteEntry(network, _host(address), "leak", node, endpoint, target, via, rule),
            )
            for network in sorted(sources)
            for address, target, node, endpoint, via in towards
            if target != network and node is not None
        ]
