"""Endpoints: the pods, VMs and hosts attached to a virtual network."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from isthmus.model.meta import Cidr, IPAddress, Model, Name, Port, Protocol, Ref, RefTo, Resource, ref_to

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _mac(value: str) -> str:
    value = value.lower()
    if not _MAC.match(value):
        raise ValueError(f"{value!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address")
    return value


Mac = Annotated[str, AfterValidator(_mac)]


class Owner(Model):
    """What the endpoint stands for in its source system (a Kubernetes pod, a Neutron port)."""

    kind: str
    name: str = ""
    uid: str = ""


class NamedPort(Model):
    """A port the workload serves; Service target ports resolve against these names."""

    name: str = ""
    port: Port
    protocol: Protocol = "TCP"


class EndpointSpec(Model):
    kind: Literal["pod", "vm", "host"] = "pod"
    network: Ref
    node: Name | None = None
    addresses: list[IPAddress] = Field([], description="allocated from the network's subnets when empty")
    mac: Mac | None = Field(None, description="derived from the uid when absent")
    owner: Owner | None = None
    ports: list[NamedPort] = []
    allowed_addresses: list[Cidr] = Field(
        [],
        description="more addresses it may use (Neutron's allowed address pairs): routed to it, unallocated",
    )

    @model_validator(mode="after")
    def _unique(self) -> EndpointSpec:
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("addresses contain duplicates")
        return self


class Endpoint(Resource):
    KIND: ClassVar[str] = "Endpoint"
    PLURAL: ClassVar[str] = "endpoints"
    SHORT: ClassVar[tuple[str, ...]] = ("ep",)
    kind: Literal["Endpoint"] = "Endpoint"
    spec: EndpointSpec

    def refs(self) -> list[RefTo]:
        network = ref_to("VirtualNetwork", self.spec.network, self.metadata.namespace)
        return [network] if self.spec.node is None else [network, ("Node", None, self.spec.node)]
