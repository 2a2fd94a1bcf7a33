"""Tenants, nodes, virtual networks and their subnets."""

from __future__ import annotations

import ipaddress
import itertools
import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from isthmus.model.meta import Cidr, IPAddress, Model, Name, Ref, RefTo, Resource, first_of, ref_to

VNI_MAX = 2**24 - 1
VNI = Annotated[int, Field(ge=1, le=VNI_MAX)]
_RT = re.compile(r"^(?:(\d+)|(\d+\.\d+\.\d+\.\d+)):(\d+)$")


Ipv6Mode = Literal["slaac", "dhcpv6-stateful", "dhcpv6-stateless"]
AUTOMATIC: tuple[Ipv6Mode, ...] = ("slaac", "dhcpv6-stateless")  # the address is the EUI-64 of the MAC


def eui64(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The address a host with `mac` forms in the /64 `prefix` by SLAAC (RFC 4291's modified EUI-64)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    interface = bytes([raw[0] ^ 2]) + raw[1:3] + b"\xff\xfe" + raw[3:]
    return ipaddress.IPv6Address(prefix.network_address.packed[:8] + interface)


def _route_target(value: str) -> str:
    """ASN:N (2- or 4-byte ASN) or IPv4:N, as BGP extended communities carry them."""
    match = _RT.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a route target (ASN:N or IPv4:N)")
    asn, ip, number = match.groups()
    if asn is not None:
        limit = 2**16 - 1 if int(asn) > 2**16 - 1 else 2**32 - 1
        if int(asn) > 2**32 - 1 or int(number) > limit:
            raise ValueError(f"route target {value!r} is out of range")
    else:
        ipaddress.IPv4Address(ip)
        if int(number) > 2**16 - 1:
            raise ValueError(f"route target {value!r} is out of range")
    return value


RouteTarget = Annotated[str, AfterValidator(_route_target)]


class TenantSpec(Model):
    description: str = ""


class Tenant(Resource):
    """An isolation domain: a Kubernetes namespace or an OpenStack project. Cluster-scoped."""

    KIND: ClassVar[str] = "Tenant"
    NAMESPACED: ClassVar[bool] = False
    PLURAL: ClassVar[str] = "tenants"
    kind: Literal["Tenant"] = "Tenant"
    spec: TenantSpec = TenantSpec()


ASN = Annotated[int, Field(ge=1, le=4_294_967_295)]
Announced = Literal["floatingIPs", "serviceVIPs", "egressIPs", "routedBlocks"]


class BgpPeer(Model):
    address: IPAddress
    asn: ASN


class NodeBgp(Model):
    """The node's BGP speaker: its AS, its peers (the routers), and what it announces: floating IPs and
    service VIPs only while it hosts a ready backend, egress addresses it owns, its blocks of routed
    networks."""

    asn: ASN
    peers: list[BgpPeer] = Field(min_length=1)
    announce: list[Announced] = ["floatingIPs", "egressIPs", "routedBlocks"]

    @model_validator(mode="after")
    def _unique(self) -> NodeBgp:
        addresses = [p.address for p in self.peers]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"peers repeat an address: {', '.join(map(str, addresses))}")
        return self


class NodeSpec(Model):
    address: IPAddress = Field(description="underlay address, also the VXLAN tunnel endpoint")
    addresses: list[IPAddress] = Field(
        [],
        max_length=2,
        description="a dual-stack underlay: one address of each family, the first `address`; pods reach "
        "the node, and flows it source NATs leave, at the address of their family",
    )
    bgp: NodeBgp | None = None

    @model_validator(mode="after")
    def _first(self) -> NodeSpec:
        first_of(self, "address", "addresses")
        return self


class Node(Resource):
    """A machine that runs the agent. Cluster-scoped."""

    KIND: ClassVar[str] = "Node"
    NAMESPACED: ClassVar[bool] = False
    PLURAL: ClassVar[str] = "nodes"
    SHORT: ClassVar[tuple[str, ...]] = ("no",)
    kind: Literal["Node"] = "Node"
    spec: NodeSpec


class VirtualNetworkSpec(Model):
    mode: Literal["overlay", "routed"] = Field(
        "overlay",
        description="overlay: VXLAN between nodes; routed: no encapsulation, each node owns blocks of the "
        "subnets (`Subnet.spec.node`), announces them by BGP, and traffic between nodes goes through the "
        "underlay's routers",
    )
    vni: VNI | None = Field(None, description="allocated when absent")
    import_targets: list[RouteTarget] = []
    export_targets: list[RouteTarget] = []
    external: bool = Field(False, description="a pool of public floating IPs, usable by every tenant")
    egress: bool = Field(
        False,
        description="endpoints reach addresses outside the cluster, source NATed to their node's address",
    )
    node_access: bool = Field(
        True,
        description="endpoints reach the nodes' addresses (host-network pods, the API server), source NATed "
        "to their node's address and subject to policy; false keeps the infrastructure out of their reach",
    )
    shared: bool = Field(False, description="other tenants may attach endpoints and VIPs to it")
    subnet_pool: Name | None = Field(
        None,
        description="grow by a block of this SubnetPool when subnets are full (the first of subnetPools)",
    )
    subnet_pools: list[Name] = Field(
        [],
        max_length=2,
        description="dual stack: a SubnetPool of each family to grow by, the network's first family first",
    )

    @model_validator(mode="after")
    def _inside(self) -> VirtualNetworkSpec:
        if self.external and self.egress:
            raise ValueError("an external network is outside already: egress applies to internal networks")
        if self.subnet_pools and self.subnet_pool not in (None, self.subnet_pools[0]):
            pools = ", ".join(self.subnet_pools)
            raise ValueError(f"subnetPool {self.subnet_pool} is not the first of subnetPools ({pools})")
        if len(set(self.subnet_pools)) != len(self.subnet_pools):
            raise ValueError(f"subnetPools repeat a pool: {', '.join(self.subnet_pools)}")
        return self

    def pools(self) -> list[str]:
        """The SubnetPools it grows by: subnetPools, or subnetPool alone."""
        return list(self.subnet_pools) or ([self.subnet_pool] if self.subnet_pool else [])


class VirtualNetwork(Resource):
    KIND: ClassVar[str] = "VirtualNetwork"
    PLURAL: ClassVar[str] = "virtualnetworks"
    SHORT: ClassVar[tuple[str, ...]] = ("vn", "network", "networks")
    kind: Literal["VirtualNetwork"] = "VirtualNetwork"
    spec: VirtualNetworkSpec = VirtualNetworkSpec()

    def refs(self) -> list[RefTo]:
        return [("SubnetPool", None, pool) for pool in self.spec.pools()]


class SubnetPoolSpec(Model):
    cidr: Cidr
    block_prefix_length: Annotated[int, Field(ge=1, le=128)] = Field(
        description="size of the blocks handed out"
    )

    @model_validator(mode="after")
    def _fits(self) -> SubnetPoolSpec:
        if not self.cidr.prefixlen <= self.block_prefix_length <= self.cidr.max_prefixlen:
            raise ValueError(f"blockPrefixLength {self.block_prefix_length} does not fit in {self.cidr}")
        return self

    def block(self, index: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        size = 2 ** (self.cidr.max_prefixlen - self.block_prefix_length)
        return ipaddress.ip_network((int(self.cidr.network_address) + index * size, self.block_prefix_length))

    def index_of(self, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int | None:
        if cidr.prefixlen != self.block_prefix_length or not cidr.subnet_of(self.cidr):  # type: ignore[arg-type]
            return None
        return (int(cidr.network_address) - int(self.cidr.network_address)) >> (
            self.cidr.max_prefixlen - self.block_prefix_length
        )

    def blocks(self) -> int:
        return int(2 ** (self.block_prefix_length - self.cidr.prefixlen))


class SubnetPool(Resource):
    """A supernet that hands out equal blocks to subnets that ask for one (as Neutron subnet pools)."""

    KIND: ClassVar[str] = "SubnetPool"
    NAMESPACED: ClassVar[bool] = False
    PLURAL: ClassVar[str] = "subnetpools"
    SHORT: ClassVar[tuple[str, ...]] = ("snp",)
    kind: Literal["SubnetPool"] = "SubnetPool"
    spec: SubnetPoolSpec


class AllocationPool(Model):
    start: IPAddress
    end: IPAddress

    @model_validator(mode="after")
    def _ordered(self) -> AllocationPool:
        if self.start.version != self.end.version or int(self.start) > int(self.end):
            raise ValueError(f"allocation pool {self.start}-{self.end} is not an ascending range")
        return self


class SubnetSpec(Model):
    network: Ref
    cidr: Cidr = Field(None, description="taken as a block of `pool` when absent")  # type: ignore[assignment]
    pool: Name | None = Field(None, description="a SubnetPool to take the CIDR from")
    gateway: IPAddress | None = Field(None, description="defaults to the first address of the CIDR")
    no_gateway: bool = Field(False, description="no gateway: every address may be allocated (VIP ranges)")
    allocation_pools: list[AllocationPool] = Field([], description="default: every usable address")
    node: Name | None = Field(
        None,
        description="routed networks and networks that grow from a subnet pool: the node whose block this is "
        "(its endpoints' addresses; other nodes route the block to it)",
    )
    ipv6_address_mode: Ipv6Mode | None = Field(
        None,
        description="as Neutron's: slaac and dhcpv6-stateless give an endpoint the EUI-64 address of its MAC "
        "(the agent puts it on the interface, as the host would form it), dhcpv6-stateful one from the pools",
    )
    ipv6_ra_mode: Ipv6Mode | None = Field(None, description="as Neutron's: how routers advertise the subnet")

    @model_validator(mode="after")
    def _consistent(self) -> SubnetSpec:
        modes = [m for m in (self.ipv6_address_mode, self.ipv6_ra_mode) if m]
        if modes and self.cidr is not None and self.cidr.version != 6:
            raise ValueError(f"ipv6AddressMode and ipv6RaMode are for IPv6 subnets, not {self.cidr}")
        if len(set(modes)) > 1:
            raise ValueError(
                f"ipv6RaMode {self.ipv6_ra_mode} with ipv6AddressMode {self.ipv6_address_mode} is not valid: "
                "when both are set, they are the same"
            )
        if self.automatic() and self.cidr is not None and self.cidr.prefixlen != 64:
            raise ValueError(
                f"{self.cidr} is not a /64: {modes[0]} addresses are EUI-64, which needs a /64 prefix"
            )
        if self.cidr is None:
            if self.pool is None:
                raise ValueError("give a cidr, or a pool to take one from")
            if self.gateway is not None or self.allocation_pools:
                raise ValueError("gateway and allocationPools need an explicit cidr")
            return self
        if self.no_gateway and self.gateway is not None:
            raise ValueError(f"gateway {self.gateway} is given with noGateway")
        if self.gateway is not None and self.gateway not in self.cidr:
            raise ValueError(f"gateway {self.gateway} is outside {self.cidr}")
        pools = sorted(self.allocation_pools, key=lambda p: int(p.start))
        gateway = self.effective_gateway()
        for pool in pools:
            if pool.start not in self.cidr or pool.end not in self.cidr:
                raise ValueError(f"allocation pool {pool.start}-{pool.end} is outside {self.cidr}")
            if gateway is not None and int(pool.start) <= int(gateway) <= int(pool.end):
                raise ValueError(f"allocation pool {pool.start}-{pool.end} contains the gateway {gateway}")
        for a, b in itertools.pairwise(pools):
            if int(b.start) <= int(a.end):
                raise ValueError(f"allocation pools {a.start}-{a.end} and {b.start}-{b.end} overlap")
        return self

    def automatic(self) -> bool:
        """Its endpoints' addresses are the EUI-64 of their MACs (SLAAC, stateless DHCPv6)."""
        return self.ipv6_address_mode in AUTOMATIC or self.ipv6_ra_mode in AUTOMATIC

    def effective_gateway(self) -> IPAddress | None:
        if self.no_gateway:
            return None
        if self.gateway is not None:
            return self.gateway
        return self.cidr[1] if self.cidr.num_addresses > 2 else None

    def offset_ranges(self) -> list[tuple[int, int]]:
        """Allocatable addresses as inclusive offsets from the network address."""
        base = int(self.cidr.network_address)
        if self.allocation_pools:
            return [
                (int(p.start) - base, int(p.end) - base)
                for p in sorted(self.allocation_pools, key=lambda p: p.start)
            ]
        size = self.cidr.num_addresses
        if size <= 2:
            return [(0, size - 1)]
        last = size - 2 if self.cidr.version == 4 else size - 1
        gateway = self.effective_gateway()
        if gateway is None:
            return [(1, last)]
        g = int(gateway) - base
        return [r for r in ((1, g - 1), (g + 1, last)) if r[0] <= r[1]]


class Subnet(Resource):
    KIND: ClassVar[str] = "Subnet"
    PLURAL: ClassVar[str] = "subnets"
    SHORT: ClassVar[tuple[str, ...]] = ("sn",)
    kind: Literal["Subnet"] = "Subnet"
    spec: SubnetSpec

    def refs(self) -> list[RefTo]:
        network = ref_to("VirtualNetwork", self.spec.network, self.metadata.namespace)
        pool: list[RefTo] = [] if self.spec.pool is None else [("SubnetPool", None, self.spec.pool)]
        node: list[RefTo] = [] if self.spec.node is None else [("Node", None, self.spec.node)]
        return [network, *pool, *node]


class ImportedRouteSpec(Model):
    prefix: Cidr
    next_hop: IPAddress = Field(description="the remote node holding it: its VTEP")
    vni: VNI = Field(description="the remote network's VNI")
    route_targets: list[RouteTarget] = Field(min_length=1)
    route_distinguisher: str = ""
    peer: str = Field("", description="the speaker it was learned from")


class ImportedRoute(Resource):
    """A route of another cluster's network, learned by BGP (VPNv4): networks whose import targets meet
    its route targets reach the prefix over VXLAN to its node, in its network's VNI. Cluster-scoped; the
    federation controller keeps them."""

    KIND: ClassVar[str] = "ImportedRoute"
    NAMESPACED: ClassVar[bool] = False
    PLURAL: ClassVar[str] = "importedroutes"
    SHORT: ClassVar[tuple[str, ...]] = ("ir",)
    kind: Literal["ImportedRoute"] = "ImportedRoute"
    spec: ImportedRouteSpec
