"""What a cluster's Kubernetes translation is configured with: among others its address families, chosen
by the CIDRs of pods and services (one of each family, the first the cluster's primary), as kube-apiserver's
`--service-cluster-ip-range` and the controller manager's `--cluster-cidr` choose them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from isthmus.model.meta import Cidr, Model, Name

Isolation = Literal["cluster", "namespace", "collection"]
CidrList = list[Cidr]


def _cidrs(default: str, description: str) -> Any:
    """A list of CIDRs, one of each family, the primary first."""
    return Field(
        [default],
        min_length=1,
        max_length=2,
        validate_default=True,
        description=f"{description}; one CIDR of each family, the primary first",
    )


class KubeConfig(Model):
    system: Name = Field("isthmus-system", description="tenant of the cluster-wide networks")
    pod_cidrs: CidrList = _cidrs("10.32.0.0/12", "pod networks take their blocks from here")
    pod_block: int = Field(24, ge=8, le=30, description="prefix length of a pod network's IPv4 blocks")
    pod_block6: int = Field(64, ge=48, le=124, description="prefix length of a pod network's IPv6 blocks")
    service_cidrs: CidrList = _cidrs("10.254.0.0/16", "ClusterIPs; of the families of pod_cidrs, in order")
    external_pools: CidrList = _cidrs("203.0.113.0/24", "LoadBalancer floating IPs")
    isolation: Isolation = Field("cluster", description="for namespaces without isthmus.io/isolation")
    default_node: Name = Field("node-1", description="where pods go when no node is known")
    default_node_address: str = Field("192.0.2.1", description="the underlay address of that default node")

    @model_validator(mode="after")
    def _families(self) -> KubeConfig:
        for cidr in self.pod_cidrs:
            block = self.block(cidr.version)
            if cidr.prefixlen > block:
                raise ValueError(f"pod CIDR {cidr} is smaller than one block of its pods (/{block})")
        for field in ("pod_cidrs", "service_cidrs", "external_pools"):
            versions = [c.version for c in getattr(self, field)]
            if len(set(versions)) != len(versions):
                shown = ", ".join(map(str, getattr(self, field)))
                raise ValueError(f"{field}: one CIDR of each family, got {shown}")
        if [c.version for c in self.service_cidrs] != self.families():
            raise ValueError(
                f"service_cidrs ({', '.join(map(str, self.service_cidrs))}) must be of the families of "
                f"pod_cidrs ({', '.join(map(str, self.pod_cidrs))}), in that order"
            )
        return self

    def families(self) -> list[int]:
        """The cluster's address families, the primary first."""
        return [c.version for c in self.pod_cidrs]

    def block(self, family: int) -> int:
        return self.pod_block if family == 4 else self.pod_block6
