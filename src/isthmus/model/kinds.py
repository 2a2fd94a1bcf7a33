"""The registry of kinds: what the ledger can hold, how each is named, keyed and ordered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isthmus.model.endpoint import Endpoint
from isthmus.model.kube import KubeObject
from isthmus.model.meta import Resource
from isthmus.model.network import ImportedRoute, Node, Subnet, SubnetPool, Tenant, VirtualNetwork
from isthmus.model.policy import Policy
from isthmus.model.security import SecurityGroup
from isthmus.model.service import EgressIP, FloatingIP, ServiceVIP

Object = Resource | KubeObject
ISTHMUS = "isthmus.io"


@dataclass(frozen=True)
class KindInfo:
    group: str
    kind: str
    plural: str
    namespaced: bool
    versions: tuple[str, ...]
    short: tuple[str, ...] = ()
    model: type[Resource] | None = None  # None: a Kubernetes kind stored as declared

    @property
    def qualified(self) -> str:
        return f"{self.kind}.{self.group}"

    def api_version(self) -> str:
        return self.versions[0] if self.group == "core" else f"{self.group}/{self.versions[0]}"


def _isthmus(model: type[Resource]) -> KindInfo:
    return KindInfo(ISTHMUS, model.KIND, model.PLURAL, model.NAMESPACED, ("v1",), model.SHORT, model)


# Dependency order: an object only names objects of kinds listed before its own.
KINDS: tuple[KindInfo, ...] = (
    *(
        _isthmus(m)
        for m in (
            Tenant,
            Node,
            SubnetPool,
            VirtualNetwork,
            Subnet,
            SecurityGroup,
            Endpoint,
            ServiceVIP,
            FloatingIP,
            EgressIP,
            Policy,
            ImportedRoute,
        )
    ),
    KindInfo("core", "Node", "nodes", False, ("v1",), ("no",)),
    KindInfo("core", "Namespace", "namespaces", False, ("v1",), ("ns",)),
    KindInfo("core", "Pod", "pods", True, ("v1",), ("po",)),
    KindInfo("core", "ReplicationController", "replicationcontrollers", True, ("v1",), ("rc",)),
    KindInfo("apps", "ReplicaSet", "replicasets", True, ("v1",), ("rs",)),
    KindInfo("apps", "Deployment", "deployments", True, ("v1",), ("deploy",)),
    KindInfo("core", "Service", "services", True, ("v1",), ("svc",)),
    KindInfo("core", "Endpoints", "endpoints", True, ("v1",)),
    KindInfo("discovery.k8s.io", "EndpointSlice", "endpointslices", True, ("v1", "v1beta1")),
    KindInfo("networking.k8s.io", "NetworkPolicy", "networkpolicies", True, ("v1",), ("netpol",)),
)
_BY_GROUP_KIND = {(k.group, k.kind): k for k in KINDS}


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return (group or "core"), version


def kind_of(obj: Object | dict[str, Any]) -> KindInfo:
    """The kind of an object or of a raw document; KeyError names what is unknown."""
    api_version, kind = (
        (obj.get("apiVersion"), obj.get("kind")) if isinstance(obj, dict) else (obj.api_version, obj.kind)
    )
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise KeyError("apiVersion and kind must both be given as strings")
    group, version = split_api_version(api_version)
    info = _BY_GROUP_KIND.get((group, kind))
    if info is None:
        known = ", ".join(sorted({k.kind for k in KINDS}))
        raise KeyError(f"unknown kind {kind!r} (apiVersion {api_version!r}); known kinds: {known}")
    if version not in info.versions:
        raise KeyError(f"{kind} has no version {version!r} in {group}; use {info.api_version()}")
    return info


def lookup_kind(name: str) -> KindInfo:
    """Resolve a user's kind name: kind, plural or short name, any case, optionally KIND.GROUP.

    Isthmus kinds win over Kubernetes kinds of the same name (endpoints, nodes).
    """
    word, _, group = name.lower().partition(".")
    for info in KINDS:
        names = {info.kind.lower(), info.plural, *info.short}
        if word in names and (not group or group == info.group):
            return info
    raise KeyError(f"unknown kind {name!r}; try one of: {', '.join(k.plural for k in KINDS)}")


def parse_object(data: dict[str, Any]) -> Object:
    """Validate a raw document into its kind's model (pydantic.ValidationError on bad fields)."""
    info = kind_of(data)
    if info.model is None:
        return KubeObject.model_validate(data)
    return info.model.model_validate(data)
