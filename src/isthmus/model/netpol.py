"""Kubernetes NetworkPolicy (networking.k8s.io/v1) as typed data, with the API server's defaulting.

Invariants after parsing: every port has a protocol (TCP by default); policy_types() is what the API server
would store (legacy policies: Ingress, plus Egress when egress rules exist). ipBlock CIDRs are accepted with
host bits set, as upstream tests send them, and normalised to their network. JSON null reads as the API
server decodes it: a null field is absent (so a null spec.podSelector, like a missing one, is `{}`: every
pod; a null peer podSelector is no podSelector) and a null list item is an empty object.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from isthmus.model.meta import Model, Port
from isthmus.model.selector import LabelSelector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _lenient_cidr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR") from None
    return value


LenientCidr = Annotated[Network, BeforeValidator(_lenient_cidr)]


class IPBlock(Model):
    cidr: LenientCidr
    except_: list[LenientCidr] = Field([], alias="except")

    @model_validator(mode="after")
    def _inside(self) -> IPBlock:
        for hole in self.except_:
            if hole.version != self.cidr.version or not hole.subnet_of(self.cidr):  # type: ignore[arg-type]
                raise ValueError(f"except {hole} is not inside cidr {self.cidr}")
        return self


class NetworkPolicyPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
    _family: int | None = PrivateAttr(
        None
    )  # a security group's remote group of one ethertype; not in the API

    def only(self, family: int) -> NetworkPolicyPeer:
        """This peer, matching addresses of `family` only (security groups' ethertype)."""
        copy = self.model_copy()
        copy._family = family
        return copy

    @property
    def family(self) -> int | None:
        return self._family

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        selects = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selects:
            raise ValueError("a peer with ipBlock may not also have podSelector or namespaceSelector")
        if self.ip_block is None and not selects:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(Model):
    protocol: Literal["TCP", "UDP", "SCTP", "ICMP"] = Field(
        "TCP", description="ICMP only from security groups: Kubernetes has no ICMP ports"
    )
    port: Port | str | None = None
    end_port: Port | None = None

    @model_validator(mode="after")
    def _range(self) -> NetworkPolicyPort:
        if self.protocol == "ICMP" and (self.port is not None or self.end_port is not None):
            raise ValueError("ICMP has no ports")
        numeric = isinstance(self.port, int)
        if self.end_port is not None and not (numeric and self.end_port >= self.port):  # type: ignore[operator]
            raise ValueError(
                f"endPort {self.end_port} needs a numeric port at or below it, got {self.port!r}"
            )
        return self


class IngressRule(Model):
    from_: list[NetworkPolicyPeer] = Field([], alias="from")
    ports: list[NetworkPolicyPort] = []


class EgressRule(Model):
    to: list[NetworkPolicyPeer] = []
    ports: list[NetworkPolicyPort] = []


class NetworkPolicySpec(Model):
    pod_selector: LabelSelector = LabelSelector()
    ingress: list[IngressRule] = []
    egress: list[EgressRule] = []
    policy_types: list[Literal["Ingress", "Egress"]] | None = None

    def effective_types(self) -> list[str]:
        if self.policy_types is not None:
            return list(self.policy_types)
        return ["Ingress", "Egress"] if self.egress else ["Ingress"]


class _Declared(Model):
    model_config = ConfigDict(extra="ignore")
    spec: NetworkPolicySpec = NetworkPolicySpec()


def _null_is_absent(value: Any) -> Any:
    """`value` as Go decodes JSON null: a null field is left out, a null list item is the zero object."""
    if isinstance(value, dict):
        return {k: _null_is_absent(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [{} if v is None else _null_is_absent(v) for v in value]
    return value


def parse_network_policy(body: dict[str, Any]) -> NetworkPolicySpec:
    """The spec of a NetworkPolicy's declared body; pydantic.ValidationError names the bad field."""
    return _Declared.model_validate(_null_is_absent(body)).spec
