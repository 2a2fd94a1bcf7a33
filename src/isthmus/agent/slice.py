"""The slice of the ledger a node holds: the channels its plan depends on, and what they hold.

A node needs (`interest`): the cluster channel; its own endpoints; the namespaces of its endpoints and
networks (their endpoints, services, NetworkPolicies, and the blocks and services of their networks); the
namespaces whose endpoints its NetworkPolicy peers select (a namespaceSelector: the matching namespaces);
and the namespaces named by what reaches its networks (Isthmus policies, floating IPs). Interest is a
function of what the node holds, so the agent widens and narrows its slice as it changes, to a fixed point.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from isthmus.compile import Compiler
from isthmus.compile.compiler import METADATA_NAME
from isthmus.compile.state import Isolation, Peer
from isthmus.model import Endpoint, FloatingIP, KubeObject, Object, Policy, ServiceVIP
from isthmus.model.meta import split_ref
from isthmus.store import Event, EventType, KeyValue, Ledger
from isthmus.store.channels import CHANNELS, CLUSTER, namespace, node, prefix
from isthmus.store.objects import OBJECTS, _decode, parse_key

Unit = tuple[str, str, str]  # kind, namespace ("" when none), name


def interest(name: str, compiler: Compiler) -> set[str]:
    """The channels node `name` needs, given what it holds."""
    wanted = {CLUSTER, node(name)}
    spaces: set[str] = set()
    hosted: set[str] = set()
    for endpoint in compiler.objects["Endpoint"].values():
        if isinstance(endpoint, Endpoint) and endpoint.spec.node == name:
            network = compiler.network_of(endpoint)
            hosted.add(network)
            spaces |= {endpoint.metadata.namespace or "", network.partition("/")[0]}
    namespaces = {ns: {METADATA_NAME: ns} for ns, _ in compiler.objects["VirtualNetwork"]}
    namespaces |= {ns: {METADATA_NAME: ns} for ns in spaces}
    namespaces |= {
        n: {**o.metadata.labels, METADATA_NAME: n}
        for (_, n), o in compiler.objects["Namespace"].items()
        if isinstance(o, KubeObject)
    }
    for entry in compiler.state.get(name, {}).values():
        if isinstance(entry, Isolation):
            for allow in entry.allows:
                spaces |= _selected(allow.peer, namespaces)
    for (ns, _), policy in compiler.objects["Policy"].items():
        if isinstance(policy, Policy) and _reaches(policy, ns, hosted, spaces):
            spaces.add(ns)
            for rule in policy.spec.rules:
                for given in (rule.destination.service, rule.destination.network, rule.source.network):
                    if given:
                        spaces.add(split_ref(given, ns)[0] or ns)
    for vip in compiler.objects["ServiceVIP"].values():  # reached from outside on any node
        if isinstance(vip, ServiceVIP) and vip.reached_from_outside():
            spaces |= {ns for ns, _ in vip.backend_networks()}
    for (ns, _), fip in compiler.objects["FloatingIP"].items():
        if isinstance(fip, FloatingIP):
            named = [fip.spec.service] if fip.spec.service else fip.spec.endpoints
            spaces |= {split_ref(n, ns)[0] or ns for n in named}
    return wanted | {namespace(s) for s in spaces}


def _selected(peer: Peer, namespaces: dict[str, dict[str, str]]) -> set[str]:
    """The namespaces whose endpoints a NetworkPolicy peer may match (namespaces: each Namespace, and each
    that holds a network, with its labels)."""
    if peer.cidrs:
        return set()
    if peer.namespaces is not None:
        selector = peer.namespaces
        return {n for n, labels in namespaces.items() if selector.matches(tuple(sorted(labels.items())))}
    if peer.namespace is not None:
        return {peer.namespace}
    return set(namespaces)  # every peer


def _reaches(policy: Policy, namespace: str, hosted: set[str], spaces: set[str]) -> bool:
    """Whether an Isthmus policy may concern the node: it is its namespaces' or names a network it hosts."""
    if namespace in spaces:
        return True
    networks = {
        "/".join(filter(None, split_ref(peer.network, namespace)))
        for rule in policy.spec.rules
        for peer in (rule.source, rule.destination)
        if peer.network
    }
    return bool(networks & hosted)


class Slice:
    """The objects a node holds, by the channels that brought them: an object is held while one of its
    channels still holds it (an endpoint moving off the node leaves its node channel, not its namespace's)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[str, set[str]] = defaultdict(set)  # object key -> the channels holding it
        self.members: dict[str, set[str]] = defaultdict(set)  # channel -> object keys
        self.received = 0  # bytes of object values received, listings and changes

    @staticmethod
    def split(key: str) -> tuple[str, str]:
        """A channel key's channel and the object key it copies."""
        parts = key.removeprefix(CHANNELS).split("/")
        cut = 1 if parts[0] == CLUSTER else 2
        return "/".join(parts[:cut]), OBJECTS + "/".join(parts[cut:])

    def listed(self, channel: str, found: Iterable[KeyValue]) -> tuple[list[Object], list[Unit]]:
        """A channel's listing, now held: the objects to put, and those it no longer holds to delete."""
        before = self.members.pop(channel, set())
        puts: list[Object] = []
        for kv in found:
            _, key = self.split(kv.key)
            self.members[channel].add(key)
            self.held[key].add(channel)
            self.received += len(kv.value)
            puts.append(_decode(kv.value, kv.mod_revision))
        return puts, self._release(channel, before - self.members[channel])

    def dropped(self, channel: str) -> list[Unit]:
        """A channel no longer watched: the objects no other channel holds, to delete."""
        return self._release(channel, self.members.pop(channel, set()))

    def changed(self, events: Iterable[Event]) -> tuple[list[Object], list[Unit]]:
        """Changes to watched channels: the objects to put and to delete (the last change of each wins)."""
        last: dict[str, Event | None] = {}
        for event in events:
            channel, key = self.split(event.key)
            self.received += len(event.value)
            if event.type is EventType.PUT:
                self.members[channel].add(key)
                self.held[key].add(channel)
                last[key] = event
            else:
                self.members[channel].discard(key)
                self.held[key].discard(channel)
                if not self.held[key]:  # else another channel still holds it, as it now is
                    del self.held[key]
                    last[key] = None
        puts = [_decode(e.value, e.revision) for e in last.values() if e is not None]
        deletes = [_unit(k) for k, e in last.items() if e is None and k not in self.held]
        return puts, deletes

    def _release(self, channel: str, keys: set[str]) -> list[Unit]:
        gone = []
        for key in keys:
            self.held[key].discard(channel)
            if not self.held[key]:
                del self.held[key]
                gone.append(_unit(key))
        return gone


def _unit(key: str) -> Unit:
    info, namespace_, name = parse_key(key)
    return info.kind, namespace_ or "", name


def held(ledger: Ledger, name: str) -> Compiler:
    """The compiler of what node `name` holds: its interest's channels, listed to a fixed point, as its
    agent lists them."""
    compiler, listed = Compiler(), set[str]()
    while (wanted := interest(name, compiler)) != listed:
        found = {Slice.split(kv.key)[1]: kv for c in sorted(wanted) for kv in ledger.list(prefix(c))[0]}
        compiler, listed = Compiler(_decode(kv.value, kv.mod_revision) for kv in found.values()), wanted
    return compiler


def prefixes(channels: Iterable[str]) -> list[str]:
    return sorted(prefix(c) for c in channels)
