"""Isthmus policy: ordered allow/deny rules between networks, label selectors and CIDRs.

Kubernetes NetworkPolicy objects are kept as declared (see kube.py) and compiled with their own semantics.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from isthmus.model.meta import Cidr, Model, Port, Ref, Resource
from isthmus.model.selector import LabelSelector


class PortRange(Model):
    port: Port
    end_port: Port | None = None

    @model_validator(mode="after")
    def _ascending(self) -> PortRange:
        if self.end_port is not None and self.end_port < self.port:
            raise ValueError(f"endPort {self.end_port} is below port {self.port}")
        return self


class Peer(Model):
    """Traffic matches a peer when it matches every field given; an empty peer matches anything."""

    network: Ref | None = None
    service: Ref | None = Field(None, description="a ServiceVIP: its VIP, and its backends after DNAT")
    selector: LabelSelector | None = None
    cidr: Cidr | None = None
    except_: list[Cidr] = Field([], alias="except")

    @model_validator(mode="after")
    def _except_inside(self) -> Peer:
        if self.except_ and self.cidr is None:
            raise ValueError("except needs a cidr")
        for hole in self.except_:
            if self.cidr is not None and (hole.version != self.cidr.version or not hole.subnet_of(self.cidr)):  # type: ignore[arg-type]
                raise ValueError(f"except {hole} is not inside cidr {self.cidr}")
        return self


class PolicyRule(Model):
    action: Literal["allow", "deny"]
    protocol: Literal["TCP", "UDP", "SCTP", "ICMP", "any"] = "any"
    ports: list[PortRange] = []
    source: Peer = Peer()
    destination: Peer = Peer()

    @model_validator(mode="after")
    def _ports_need_l4(self) -> PolicyRule:
        if self.ports and self.protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"ports need protocol TCP, UDP or SCTP, not {self.protocol}")
        return self


class PolicySpec(Model):
    priority: int = Field(1000, ge=0, le=65535, description="lower runs first")
    rules: list[PolicyRule]


class Policy(Resource):
    KIND: ClassVar[str] = "Policy"
    PLURAL: ClassVar[str] = "policies"
    SHORT: ClassVar[tuple[str, ...]] = ("pol",)
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec
