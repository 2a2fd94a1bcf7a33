"""The intent model: typed, validated objects for everything the ledger holds.

Pure data and validation; imports no driver.
"""

from isthmus.model.endpoint import Endpoint, EndpointSpec, NamedPort, Owner
from isthmus.model.kinds import KINDS, KindInfo, Object, kind_of, lookup_kind, parse_object
from isthmus.model.kube import KubeObject
from isthmus.model.manifest import ManifestError, load_manifests, parse_manifests
from isthmus.model.meta import ObjectMeta, Resource, split_ref
from isthmus.model.network import (
    ImportedRoute,
    Node,
    NodeSpec,
    Subnet,
    SubnetPool,
    SubnetPoolSpec,
    SubnetSpec,
    Tenant,
    VirtualNetwork,
    VirtualNetworkSpec,
)
from isthmus.model.policy import Peer, Policy, PolicyRule, PolicySpec, PortRange
from isthmus.model.security import SecurityGroup, SecurityGroupRule, SecurityGroupSpec, member_label
from isthmus.model.selector import LabelSelector, SelectorRequirement
from isthmus.model.service import (
    Backend,
    EgressIP,
    EgressIPSpec,
    FloatingIP,
    FloatingIPSpec,
    ServicePort,
    ServiceVIP,
    ServiceVIPSpec,
)

__all__ = [
    "KINDS",
    "Backend",
    "EgressIP",
    "EgressIPSpec",
    "Endpoint",
    "EndpointSpec",
    "FloatingIP",
    "FloatingIPSpec",
    "ImportedRoute",
    "KindInfo",
    "KubeObject",
    "LabelSelector",
    "ManifestError",
    "NamedPort",
    "Node",
    "NodeSpec",
    "Object",
    "ObjectMeta",
    "Owner",
    "Peer",
    "Policy",
    "PolicyRule",
    "PolicySpec",
    "PortRange",
    "Resource",
    "SecurityGroup",
    "SecurityGroupRule",
    "SecurityGroupSpec",
    "SelectorRequirement",
    "ServicePort",
    "ServiceVIP",
    "ServiceVIPSpec",
    "Subnet",
    "SubnetPool",
    "SubnetPoolSpec",
    "SubnetSpec",
    "Tenant",
    "VirtualNetwork",
    "VirtualNetworkSpec",
    "kind_of",
    "load_manifests",
    "lookup_kind",
    "member_label",
    "parse_manifests",
    "parse_object",
    "split_ref",
]
