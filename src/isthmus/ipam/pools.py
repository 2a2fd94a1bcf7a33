"""The pools the model defines: addresses of a subnet, VXLAN network identifiers."""

from __future__ import annotations

import ipaddress

from isthmus.ipam.pool import Pool
from isthmus.model.network import VNI_MAX, Subnet

VNI_FIRST = 4096  # lower VNIs stay free for networks that name theirs
VNI_POOL = Pool("vni", ((1, VNI_MAX),), "the VNI range", first=VNI_FIRST)


def subnet_pool(subnet: Subnet) -> Pool:
    """A subnet's allocation pools as offsets from its network address; keyed by the subnet's uid."""
    spec = subnet.spec
    base = int(spec.cidr.network_address)

    def show(offset: int) -> str:
        return str(ipaddress.ip_address(base + offset))

    label = f"subnet {subnet.metadata.namespace}/{subnet.metadata.name} ({spec.cidr})"
    return Pool(f"subnet/{subnet.metadata.uid}", tuple(spec.offset_ranges()), label, show)
