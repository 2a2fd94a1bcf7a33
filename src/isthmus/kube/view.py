"""A view of a cluster's Kubernetes objects, indexed by kind, namespace and name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from isthmus.model import Endpoint, KubeObject, Object

Key = tuple[str, str | None, str]  # kind, namespace, name
SERVICE_NAME = "kubernetes.io/service-name"  # the label naming an EndpointSlice's Service


def key(obj: KubeObject) -> Key:
    return obj.kind, obj.metadata.namespace, obj.metadata.name


def node_name(pod: KubeObject) -> str | None:
    node = (pod.body.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) and node else None


def service_of(endpoint_slice: KubeObject) -> str | None:
    """The Service an EndpointSlice belongs to (its label kubernetes.io/service-name)."""
    return endpoint_slice.metadata.labels.get(SERVICE_NAME) or None


def host_network(pod: KubeObject) -> bool:
    """Whether the pod shares its node's network (its address is its node's; it has no Endpoint)."""
    return bool((pod.body.get("spec") or {}).get("hostNetwork"))


def holding(obj: Object) -> tuple[str, str] | None:
    """The UID of the pod an Endpoint stands for, and the network it holds."""
    if isinstance(obj, Endpoint) and obj.spec.owner and obj.spec.owner.kind == "Pod" and obj.spec.owner.uid:
        return obj.spec.owner.uid, obj.spec.network
    return None


@dataclass
class KubeView:
    """Kubernetes objects by kind, then namespace, then name; plus the nodes declared as Isthmus Nodes and
    the network each admitted pod holds (chosen at its first admission, kept while its UID lives)."""

    objects: dict[str, dict[str | None, dict[str, KubeObject]]] = field(default_factory=dict)
    declared_nodes: set[str] = field(default_factory=set)
    pods_on: Counter[str | None] = field(default_factory=Counter)  # pods by spec.nodeName
    held: dict[str, str] = field(default_factory=dict)  # pod uid -> the network its Endpoint holds for life
    slices: dict[tuple[str | None, str], set[str]] = field(default_factory=dict)  # Service -> EndpointSlices

    def add(self, obj: KubeObject) -> KubeObject | None:
        """Store `obj`; the object it replaces."""
        names = self.objects.setdefault(obj.kind, {}).setdefault(obj.metadata.namespace, {})
        old = names.get(obj.metadata.name)
        names[obj.metadata.name] = obj
        self._count(old, -1)
        self._count(obj, 1)
        return old

    def remove(self, kind: str, namespace: str | None, name: str) -> KubeObject | None:
        """Forget an object; the object that was there."""
        names = self.objects.get(kind, {}).get(namespace, {})
        old = names.pop(name, None)
        if not names:
            self.objects.get(kind, {}).pop(namespace, None)
        self._count(old, -1)
        return old

    def _count(self, obj: KubeObject | None, delta: int) -> None:
        if obj is not None and obj.kind == "Pod":
            self.pods_on[node_name(obj)] += delta
        elif obj is not None and obj.kind == "EndpointSlice" and (service := service_of(obj)) is not None:
            names = self.slices.setdefault((obj.metadata.namespace, service), set())
            if delta > 0:
                names.add(obj.metadata.name)
            else:
                names.discard(obj.metadata.name)
            if not names:
                del self.slices[(obj.metadata.namespace, service)]

    def slices_of(self, namespace: str | None, service: str) -> list[KubeObject]:
        """The EndpointSlices of a Service, in name order."""
        names = sorted(self.slices.get((namespace, service), ()))
        return [s for n in names if (s := self.get("EndpointSlice", namespace, n)) is not None]

    def get(self, kind: str, namespace: str | None, name: str) -> KubeObject | None:
        return self.objects.get(kind, {}).get(namespace, {}).get(name)

    def of(self, kind: str, namespace: str | None = None) -> list[KubeObject]:
        """Objects of a kind (in one namespace when given), in namespace and name order."""
        spaces = self.objects.get(kind, {})
        chosen = [namespace] if namespace is not None else sorted(spaces, key=lambda n: n or "")
        return [spaces[n][name] for n in chosen if n in spaces for name in sorted(spaces[n])]

    def __iter__(self) -> Iterator[KubeObject]:
        for spaces in self.objects.values():
            for names in spaces.values():
                yield from names.values()

    def holds(self, namespace: str) -> bool:
        """Whether anything lives in the namespace or declares it."""
        return self.get("Namespace", None, namespace) is not None or any(
            namespace in spaces for spaces in self.objects.values()
        )

    def namespaces(self) -> list[str]:
        names = {o.metadata.name for o in self.of("Namespace")}
        names |= {n for spaces in self.objects.values() for n in spaces if n}
        return sorted(names)

    def nodes(self) -> list[str]:
        """Nodes pods may be placed on: declared Isthmus Nodes and Kubernetes Nodes."""
        return sorted(self.declared_nodes | {n.metadata.name for n in self.of("Node")})
