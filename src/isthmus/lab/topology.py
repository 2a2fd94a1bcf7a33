"""A lab's topology file: its name, the underlay subnet, the nodes, an optional gateway router with an
outside client behind it, and manifests to apply once it is up.

Every namespace of the lab is named `<name>-...`; the nodes get underlay addresses in order from .10, the
router the underlay's first host. Addresses outside the underlay come only from the documentation ranges:
the outside client's link is OUTSIDE, floating IPs are 203.0.113.0/24.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from isthmus.kube.config import KubeConfig
from isthmus.model.manifest import describe
from isthmus.model.meta import Model, Name
from isthmus.model.network import ASN

DEFAULT = Path(__file__).resolve().parents[3] / "examples" / "lab" / "three-nodes.yaml"
OUTSIDE = ipaddress.IPv4Interface("198.51.100.1/24")  # the router's side of the outside client's link
OUTSIDE6 = ipaddress.IPv6Interface("2001:db8:100::1/64")  # the same link's IPv6, with an IPv6 underlay
OUTSIDE6_CLIENT = ipaddress.IPv6Address("2001:db8:100::10")
PUBLIC = (OUTSIDE.network, ipaddress.IPv4Network("203.0.113.0/24"))  # the lab's "internet"
RESERVED = ("underlay", "router", "outside")  # namespaces of the lab that are not nodes


class TopologyError(Exception):
    pass


class LabNode(Model):
    name: Name
    address: ipaddress.IPv4Address | None = Field(None, description="on the underlay; next free when absent")
    asn: ASN = Field(64512, description="the AS of the node's BGP speaker, when the lab has a router")
    cluster: Name | None = Field(None, description="one of `clusters`; the lab's main cluster when absent")


class LabCluster(Model):
    """Another cluster in the lab: its own ledger (`state-NAME`), its own nodes, and a federation speaker
    (VPNv4) in AS `asn` peering with every other cluster's."""

    name: Name
    asn: ASN
    manifests: list[str] = Field([], description="applied to its ledger once it is up, relative to the file")
    kube: KubeConfig | None = Field(None, description="its Kubernetes configuration (address families...)")


class LabStore(Model):
    """Where each cluster's ledger lives: without it, a SQLite file in the lab's directory; with `etcd: N`,
    N members of Debian's etcd (TLS, etcd roles) in namespaces of their own on the underlay."""

    etcd: Literal[1, 3]


@dataclass(frozen=True)
class Speaker:
    """A federation speaker of the lab: its cluster ("" the main one), underlay address and AS."""

    cluster: str
    address: str
    asn: int


class LabRouter(Model):
    """The gateway router: BIRD 2 on the underlay's first host, an eBGP session with every node."""

    asn: ASN = 64500


class LabOutside(Model):
    """A client outside the cluster, behind the router on OUTSIDE."""

    address: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.10")

    @field_validator("address")
    @classmethod
    def _on_the_link(cls, value: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        link = OUTSIDE.network
        if value not in link or value in (link.network_address, link.broadcast_address, OUTSIDE.ip):
            raise ValueError(f"{value} must be a host of {link} other than the router's {OUTSIDE.ip}")
        return value


class Topology(Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,11}$", description="prefix of the lab's netns")]
    underlay: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.77.0/24")
    underlay6: ipaddress.IPv6Network | None = Field(
        None,
        description="IPv6 on the underlay too: each node, the router and the outside client get an address "
        "of it (the host number of their IPv4 one), and the BGP sessions with the router run over both",
    )
    tunnel: Literal[4, 6] = Field(
        4,
        description="the underlay family VXLAN runs over (6 needs underlay6): each node's tunnel endpoint "
        "is its address of that family, its first",
    )
    nodes: list[LabNode] = Field(min_length=1)
    router: LabRouter | None = None
    outside: LabOutside | None = None
    clusters: list[LabCluster] = Field(
        [], description="other clusters, joined to the main one by route targets"
    )
    asn: ASN = Field(64600, description="the main cluster's AS for federation, when there are clusters")
    manifests: list[str] = Field([], description="files or directories, relative to the topology file")
    store: LabStore | None = None
    kube: KubeConfig | None = Field(
        None, description="the main cluster's Kubernetes configuration: its address families and CIDRs"
    )
    controllers: Literal[1, 2] = Field(
        1, description="replicas of each singleton controller per cluster (the federation speaker)"
    )

    @field_validator("underlay")
    @classmethod
    def _private(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if not value.is_private or value.prefixlen > 28 or any(value.overlaps(p) for p in PUBLIC):
            raise ValueError(
                f"{value} must be a private subnet of at least 16 addresses, apart from the lab's public "
                f"{' and '.join(map(str, PUBLIC))}"
            )
        return value

    @field_validator("underlay6")
    @classmethod
    def _local(cls, value: ipaddress.IPv6Network | None) -> ipaddress.IPv6Network | None:
        if value is not None and (
            not value.is_private or value.prefixlen > 120 or value.overlaps(OUTSIDE6.network)
        ):
            raise ValueError(
                f"{value} must be a private IPv6 subnet (fd00::/8) of at least 256 addresses, apart from the "
                f"outside link {OUTSIDE6.network}"
            )
        return value

    @model_validator(mode="after")
    def _nodes(self) -> Topology:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names repeat: {', '.join(names)}")
        for node in self.nodes:
            if node.name in RESERVED:
                raise ValueError(f"node {node.name}: the names {', '.join(RESERVED)} are the lab's own")
            if node.address is not None and node.address not in self.underlay:
                raise ValueError(f"node {node.name}: {node.address} is not in the underlay {self.underlay}")
            if self.router and node.address == next(self.underlay.hosts()):
                raise ValueError(f"node {node.name}: {node.address} is the router's address")
            if self.router and node.asn == self.router.asn:
                raise ValueError(f"node {node.name}: asn {node.asn} is the router's; the sessions are eBGP")
        if self.outside and not self.router:
            raise ValueError("outside: the outside client needs a router to reach the lab through")
        if self.tunnel == 6 and self.underlay6 is None:
            raise ValueError("tunnel: VXLAN over IPv6 needs an IPv6 underlay (underlay6)")
        if self.tunnel == 6 and self.clusters:
            raise ValueError("tunnel: federation carries IPv4 next hops; clusters need tunnel 4")
        clusters = {c.name: c.asn for c in self.clusters}
        if len(clusters) != len(self.clusters) or "main" in clusters:
            raise ValueError(
                f"cluster names repeat or use `main`: {', '.join(c.name for c in self.clusters)}"
            )
        if self.asn in clusters.values() or len(set(clusters.values())) != len(clusters):
            raise ValueError("every cluster needs an AS of its own, the main one's included (`asn`)")
        speakers = {s.address for s in self.speakers().values()}
        for node in self.nodes:
            if node.cluster is not None and node.cluster not in clusters:
                raise ValueError(f"node {node.name}: cluster {node.cluster} is not one of `clusters`")
            if str(node.address) in speakers:
                raise ValueError(f"node {node.name}: {node.address} is a federation speaker's address")
        members = {a for addresses in self.members().values() for a in addresses}
        taken = {*self.addresses().values(), *speakers, self.router_address() if self.router else ""}
        if members & taken:
            raise ValueError(f"the underlay {self.underlay} has too few addresses for the etcd members")
        return self

    def speakers(self) -> dict[str, Speaker]:
        """Each federation speaker by name: its cluster's (`main` for the main one), then NAME-2 for a
        second replica; underlay addresses from .2 in that order; none without other clusters."""
        if not self.clusters:
            return {}
        hosts = list(self.underlay.hosts())
        named = [("", self.asn), *((c.name, c.asn) for c in self.clusters)]
        found: dict[str, Speaker] = {}
        for replica in range(self.controllers):
            for cluster, asn in named:
                name = (cluster or "main") + (f"-{replica + 1}" if replica else "")
                found[name] = Speaker(cluster, str(hosts[1 + len(found)]), asn)
        return found

    def kube_configs(self) -> dict[str, KubeConfig]:
        """Each cluster's Kubernetes configuration ("" the main one), where the topology gives one."""
        given = {"": self.kube, **{c.name: c.kube for c in self.clusters}}
        return {cluster: kube for cluster, kube in given.items() if kube is not None}

    def members(self) -> dict[str, list[str]]:
        """Each cluster's etcd members ("" the main one): their underlay addresses, from the last host down;
        none without `store`."""
        if self.store is None:
            return {}
        hosts = list(self.underlay.hosts())[::-1]
        clusters = ["", *(c.name for c in self.clusters)]
        size = self.store.etcd
        return {c: [str(a) for a in hosts[i * size : (i + 1) * size]] for i, c in enumerate(clusters)}

    def router_address(self) -> str:
        """The router's underlay address, the nodes' default gateway: the underlay's first host."""
        return str(next(self.underlay.hosts()))

    def addresses6(self) -> dict[str, str]:
        """With `underlay6`, each node's and the router's (`router`) IPv6 underlay address: the host number
        of its IPv4 one; without it, none."""
        if self.underlay6 is None:
            return {}
        base = int(self.underlay.network_address)
        four = {**self.addresses(), **({"router": self.router_address()} if self.router else {})}
        return {n: str(self.underlay6[int(ipaddress.IPv4Address(a)) - base]) for n, a in four.items()}

    def addresses(self) -> dict[str, str]:
        """Each node's underlay address: its own, or the next free one from .10."""
        taken = {n.address for n in self.nodes if n.address}
        free = (a for a in list(self.underlay.hosts())[9:] if a not in taken)
        try:
            return {n.name: str(n.address or next(free)) for n in self.nodes}
        except StopIteration:
            raise ValueError(f"the underlay {self.underlay} has too few addresses for the nodes") from None


def load(path: Path) -> Topology:
    """The topology in `path`, with manifest paths made absolute; TopologyError names what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
        topology = Topology.model_validate(raw)
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not YAML: {exc}") from None
    except ValidationError as exc:
        raise TopologyError(f"{path}: {describe(exc)}") from None
    listed = [*topology.manifests, *(m for c in topology.clusters for m in c.manifests)]
    missing = [str(path.parent / m) for m in listed if not (path.parent / m).exists()]
    if missing:
        raise TopologyError(f"{path}: manifests not found: {', '.join(missing)}")
    clusters = [
        c.model_copy(update={"manifests": [str(path.parent / m) for m in c.manifests]})
        for c in topology.clusters
    ]
    manifests = [str(path.parent / m) for m in topology.manifests]
    return topology.model_copy(update={"manifests": manifests, "clusters": clusters})
