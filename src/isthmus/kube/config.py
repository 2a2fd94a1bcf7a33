"""What a cluster's Kubernetes translation is configured with."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from isthmus.model.meta import Cidr, Model, Name

Isolation = Literal["cluster", "namespace", "collection"]


class KubeConfig(Model):
    system: Name = Field("isthmus-system", description="tenant of the cluster-wide networks")
    pod_cidr: Cidr = Field("10.32.0.0/12", description="pod networks take their blocks from here")  # type: ignore[assignment]
    pod_block: int = Field(24, ge=8, le=30, description="prefix length of a pod network's blocks")
    service_cidr: Cidr = Field("10.254.0.0/16", description="ClusterIPs")  # type: ignore[assignment]
    external_pool: Cidr = Field("203.0.113.0/24", description="LoadBalancer floating IPs")  # type: ignore[assignment]
    isolation: Isolation = Field("cluster", description="for namespaces without isthmus.io/isolation")
    default_node: Name = Field("node-1", description="where pods go when no node is known")
    default_node_address: str = Field("192.0.2.1", description="the underlay address of that default node")
