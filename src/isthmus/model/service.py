"""Service VIPs, floating IPs and egress addresses."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from isthmus.model.meta import (
    IPAddress,
    Model,
    Name,
    Port,
    Protocol,
    Ref,
    RefTo,
    Resource,
    first_of,
    ref_to,
    split_ref,
)


class ServicePort(Model):
    name: str = ""
    protocol: Protocol = "TCP"
    port: Port
    target_port: Port | str | None = Field(None, description="number, or a port name resolved per backend")
    node_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="allocated for NodePort"
    )

    def target_for(self, named: dict[str, int]) -> int | None:
        """The backend port: numeric, the service port by default, or the backend's port of that name."""
        if self.target_port is None:
            return self.port
        if isinstance(self.target_port, int):
            return self.target_port
        return named.get(self.target_port)


Family = Literal["IPv4", "IPv6"]
FAMILY: dict[Family, int] = {"IPv4": 4, "IPv6": 6}


class Backend(Model):
    """A backend is an endpoint (its addresses, node and network filled in from it) or plain addresses.
    `address` is the first of `addresses` (one of each family)."""

    address: IPAddress | None = None
    addresses: list[IPAddress] = Field([], max_length=2, description="dual stack: one of each family")
    endpoint: Ref | None = None
    node: Name | None = None
    network: Ref | None = Field(None, description="the endpoint's virtual network, NAMESPACE/NAME")
    ready: bool = True
    ports: dict[str, Port] = Field({}, description="the backend's named ports")

    @model_validator(mode="after")
    def _names_something(self) -> Backend:
        if self.address is None and not self.addresses and self.endpoint is None:
            raise ValueError("a backend needs an address or an endpoint")
        first_of(self, "address", "addresses")
        return self


class _DualStack(Model):
    """Addresses of one owner, one of each family: a field (`FIELDS[0]`), its plural (the singular is its
    first) and the families asked for."""

    FIELDS: ClassVar[tuple[str, str]]
    ip_families: list[Family] = Field(
        [],
        max_length=2,
        description="the families of its addresses; those of the addresses given, else the network's first",
    )

    @model_validator(mode="after")
    def _families(self) -> _DualStack:
        first_of(self, *self.FIELDS)
        if len(set(self.ip_families)) != len(self.ip_families):
            raise ValueError(f"ipFamilies repeat a family: {', '.join(self.ip_families)}")
        given = getattr(self, self.FIELDS[1])
        stray = [str(a) for a in given if self.ip_families and f"IPv{a.version}" not in self.ip_families]
        if stray:
            raise ValueError(f"{', '.join(stray)} of no family in ipFamilies ({', '.join(self.ip_families)})")
        return self

    def families(self) -> list[int]:
        """The families as asked, in order; empty: the network's first."""
        return [FAMILY[f] for f in self.ip_families] or [a.version for a in getattr(self, self.FIELDS[1])]


class ServiceVIPSpec(_DualStack):
    FIELDS = ("vip", "vips")
    network: Ref = Field(description="the virtual network whose subnet provides the VIP")
    vip: IPAddress | None = Field(None, description="allocated when absent; the first of vips")
    vips: list[IPAddress] = Field([], max_length=2, description="dual stack: one of each family")
    ports: list[ServicePort]
    backends: list[Backend] = []
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    external_ips: list[IPAddress] = Field([], alias="externalIPs")
    session_affinity: Literal["None", "ClientIP"] = "None"
    affinity_timeout: Annotated[int, Field(ge=1, le=86400)] = 10800
    publish_not_ready: bool = Field(False, description="send traffic to backends that are not ready")
    external_traffic_policy: Literal["Cluster", "Local"] = Field(
        "Cluster",
        description="flows from outside to an external or floating IP: Local, only to a backend on the node "
        "they reach (keeping the client's address); Cluster, to one there if any, else to another node's, "
        "source NATed to the node's address",
    )

    @model_validator(mode="after")
    def _unique_ports(self) -> ServiceVIPSpec:
        seen: set[tuple[str, int]] = set()
        for port in self.ports:
            if (port.protocol, port.port) in seen:
                raise ValueError(f"port {port.port}/{port.protocol} is listed twice")
            seen.add((port.protocol, port.port))
        names = [p.name for p in self.ports]
        if len(self.ports) > 1 and (not all(names) or len(set(names)) != len(names)):
            raise ValueError("ports of a multi-port service need unique names")
        return self


class ServiceVIP(Resource):
    KIND: ClassVar[str] = "ServiceVIP"
    PLURAL: ClassVar[str] = "servicevips"
    SHORT: ClassVar[tuple[str, ...]] = ("vip", "vips")
    kind: Literal["ServiceVIP"] = "ServiceVIP"
    spec: ServiceVIPSpec

    def refs(self) -> list[RefTo]:
        ns = self.metadata.namespace
        backends = [ref_to("Endpoint", b.endpoint, ns) for b in self.spec.backends if b.endpoint]
        return [ref_to("VirtualNetwork", self.spec.network, ns), *backends]

    def reached_from_outside(self) -> bool:
        """Whether flows from outside the cluster reach it on any node (node ports, external IPs)."""
        return bool(self.spec.external_ips) or any(p.node_port is not None for p in self.spec.ports)

    def backend_networks(self) -> set[tuple[str, str]]:
        """The networks of its backends, as (namespace, name)."""
        found: set[tuple[str, str]] = set()
        for backend in self.spec.backends:
            if backend.network:
                namespace, name = split_ref(backend.network, self.metadata.namespace)
                found.add((namespace or "", name))
        return found


class FloatingIPSpec(_DualStack):
    FIELDS = ("address", "addresses")
    pool: Ref = Field(description="an external virtual network, usually NAMESPACE/NAME of the admin's pool")
    address: IPAddress | None = Field(None, description="allocated when absent; the first of addresses")
    addresses: list[IPAddress] = Field([], max_length=2, description="dual stack: one of each family")
    endpoints: list[Ref] = Field([], description="endpoints the address maps to; ECMP when several")
    service: Ref | None = Field(None, description="a ServiceVIP whose backends the address follows")


class FloatingIP(Resource):
    KIND: ClassVar[str] = "FloatingIP"
    PLURAL: ClassVar[str] = "floatingips"
    SHORT: ClassVar[tuple[str, ...]] = ("fip", "fips")
    kind: Literal["FloatingIP"] = "FloatingIP"
    spec: FloatingIPSpec

    def refs(self) -> list[RefTo]:
        ns = self.metadata.namespace
        service = [] if self.spec.service is None else [ref_to("ServiceVIP", self.spec.service, ns)]
        endpoints = [ref_to("Endpoint", ref, ns) for ref in self.spec.endpoints]
        return [ref_to("VirtualNetwork", self.spec.pool, ns), *endpoints, *service]


class EgressIPSpec(_DualStack):
    FIELDS = ("address", "addresses")
    pool: Ref = Field(description="an external virtual network, usually NAMESPACE/NAME of the admin's pool")
    address: IPAddress | None = Field(None, description="allocated when absent; the first of addresses")
    addresses: list[IPAddress] = Field(
        [], max_length=2, description="dual stack: one of each family, each the source of flows of its family"
    )
    node: Name | None = Field(
        None, description="the node that owns it; else one of the nodes announcing egressIPs, by hash"
    )


class EgressIP(Resource):
    """The source address of every endpoint of its tenant towards the outside: their flows leave through
    the owner node, source NATed to it, and the owner announces it. One per tenant."""

    KIND: ClassVar[str] = "EgressIP"
    PLURAL: ClassVar[str] = "egressips"
    SHORT: ClassVar[tuple[str, ...]] = ("egress",)
    kind: Literal["EgressIP"] = "EgressIP"
    spec: EgressIPSpec

    def refs(self) -> list[RefTo]:
        pool = ref_to("VirtualNetwork", self.spec.pool, self.metadata.namespace)
        return [pool] if self.spec.node is None else [pool, ("Node", None, self.spec.node)]
