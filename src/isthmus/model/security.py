"""Security groups (Neutron's): stateful allow-lists for the endpoints that are members.

An endpoint is a member of group G when it carries the label `security-group.isthmus.io/G` (value "").
Members are isolated both ways: only what a rule of one of their groups allows passes, and replies.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from isthmus.model.meta import Cidr, Model, Name, Resource

MEMBER = "security-group.isthmus.io/"  # + group name: the label of its members


def member_label(group: str) -> str:
    return MEMBER + group


class SecurityGroupRule(Model):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    direction: Literal["ingress", "egress"]
    ethertype: Literal["IPv4", "IPv6"] = "IPv4"
    protocol: Literal["TCP", "UDP", "SCTP", "ICMP"] | None = Field(None, description="any when absent")
    port_range_min: Annotated[int, Field(ge=0, le=65535)] | None = None
    port_range_max: Annotated[int, Field(ge=0, le=65535)] | None = None
    remote_ip_prefix: Cidr | None = None
    remote_group: Name | None = Field(None, description="a group whose members are the peers")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> SecurityGroupRule:
        if self.remote_ip_prefix is not None and self.remote_group is not None:
            raise ValueError("a rule has a remote IP prefix or a remote group, not both")
        if self.remote_ip_prefix is not None and self.remote_ip_prefix.version != int(self.ethertype[-1]):
            raise ValueError(f"remote IP prefix {self.remote_ip_prefix} is not {self.ethertype}")
        low, high = self.port_range_min, self.port_range_max
        if (low is not None or high is not None) and self.protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError("port ranges need protocol tcp, udp or sctp")
        if low is not None and high is not None and low > high:
            raise ValueError(f"port range {low}-{high} is not ascending")
        return self


class SecurityGroupSpec(Model):
    description: str = ""
    rules: list[SecurityGroupRule] = []

    @model_validator(mode="after")
    def _unique(self) -> SecurityGroupSpec:
        ids = [r.id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("rule ids repeat")
        return self


class SecurityGroup(Resource):
    """Enforced as a NetworkPolicy selecting its members, with both policy types (`compile/security.py`)."""

    KIND: ClassVar[str] = "SecurityGroup"
    PLURAL: ClassVar[str] = "securitygroups"
    SHORT: ClassVar[tuple[str, ...]] = ("sg",)
    kind: Literal["SecurityGroup"] = "SecurityGroup"
    spec: SecurityGroupSpec = SecurityGroupSpec()
