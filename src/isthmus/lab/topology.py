"""A lab's topology file: its name, the underlay subnet, the nodes, and manifests to apply once it is up.

Every namespace of the lab is named `<name>-...`; the nodes get underlay addresses in order from .10.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from isthmus.model.manifest import describe
from isthmus.model.meta import Model, Name

DEFAULT = Path(__file__).resolve().parents[3] / "examples" / "lab" / "three-nodes.yaml"


class TopologyError(Exception):
    pass


class LabNode(Model):
    name: Name
    address: ipaddress.IPv4Address | None = Field(None, description="on the underlay; next free when absent")


class Topology(Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,11}$", description="prefix of the lab's netns")]
    underlay: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.77.0/24")
    nodes: list[LabNode] = Field(min_length=1)
    manifests: list[str] = Field([], description="files or directories, relative to the topology file")

    @field_validator("underlay")
    @classmethod
    def _private(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if not value.is_private or value.prefixlen > 28:
            raise ValueError(f"{value} must be a private subnet of at least 16 addresses")
        return value

    @model_validator(mode="after")
    def _nodes(self) -> Topology:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names repeat: {', '.join(names)}")
        for node in self.nodes:
            if node.address is not None and node.address not in self.underlay:
                raise ValueError(f"node {node.name}: {node.address} is not in the underlay {self.underlay}")
        self.addresses()
        return self

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
    manifests = [path.parent / m for m in topology.manifests]
    missing = [str(m) for m in manifests if not m.exists()]
    if missing:
        raise TopologyError(f"{path}: manifests not found: {', '.join(missing)}")
    return topology.model_copy(update={"manifests": [str(m) for m in manifests]})
