"""Names, metadata and the base of every Isthmus kind.

Invariants: every object has a DNS-1123 name; Isthmus objects of a namespaced kind live in a namespace that
is their tenant; uid, resourceVersion and changedAt are assigned by the ledger, never trusted from input.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION: Final = "isthmus.io/v1"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_REF = re.compile(r"^(?:([a-z0-9]([-a-z0-9.]*[a-z0-9])?)/)?([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _name(value: str) -> str:
    if len(value) > 253 or not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (lower-case letters, digits, '-' and '.', at most 253)"
        )
    return value


def _ref(value: str) -> str:
    if not _REF.match(value):
        raise ValueError(f"{value!r} is not a valid reference (NAME or NAMESPACE/NAME)")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, val in value.items():
        if len(key) > 316 or not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not valid")
        if len(val) > 63 or not _LABEL_VALUE.match(val):
            raise ValueError(f"label value {val!r} of {key!r} is not valid")
    return value


def _cidr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR: {exc}") from None
            raise ValueError(f"{value!r} has host bits set; did you mean {loose}?") from None
    return value


Name = Annotated[str, AfterValidator(_name)]
Ref = Annotated[str, AfterValidator(_ref)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Cidr = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_cidr)]
Protocol = Literal["TCP", "UDP", "SCTP"]
Port = Annotated[int, Field(ge=1, le=65535)]


RefTo = tuple[str, str | None, str]  # (kind, namespace, name) of a referenced object


def split_ref(ref: str, namespace: str | None) -> tuple[str | None, str]:
    """A reference is NAME (in the referrer's namespace) or NAMESPACE/NAME."""
    ns, _, name = ref.rpartition("/")
    return (ns or namespace), name


def ref_to(kind: str, ref: str, namespace: str | None) -> RefTo:
    return (kind, *split_ref(ref, namespace))


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def first_of(model: Model, singular: str, plural: str) -> None:
    """Keep a field and its plural (one address of each family) as Kubernetes does: the singular is the
    plural's first."""
    one, many = getattr(model, singular), getattr(model, plural)
    versions = [a.version for a in many]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{plural}: one address of each family, got {', '.join(map(str, many))}")
    if many and one is not None and one != many[0]:
        raise ValueError(f"{singular} {one} is not the first of {plural} ({', '.join(map(str, many))})")
    if one is not None and not many:
        object.__setattr__(model, plural, [one])
    elif many and one is None:
        object.__setattr__(model, singular, many[0])


class ObjectMeta(Model):
    name: Name
    namespace: Name | None = None
    uid: str | None = None
    resource_version: int | None = None
    changed_at: float | None = Field(
        None, description="when the ledger took the object's last change (seconds since the epoch)"
    )
    labels: Labels = {}
    annotations: dict[str, str] = {}


class Resource(Model):
    """Base of every Isthmus kind: apiVersion isthmus.io/v1, kind, metadata, spec."""

    KIND: ClassVar[str]
    NAMESPACED: ClassVar[bool] = True
    PLURAL: ClassVar[str]
    SHORT: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["isthmus.io/v1"] = API_VERSION
    kind: str
    metadata: ObjectMeta

    def refs(self) -> list[RefTo]:
        """The objects this one names: (kind, namespace, name); they must exist while it does."""
        return []
