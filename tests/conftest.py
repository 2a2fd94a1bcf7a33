"""Shared fixtures: every ledger backend, and manifests built from small dicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.store import Ledger, MemoryLedger, SqliteLedger
from tests.etcdenv import EtcdCluster


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A new empty ledger on each backend; etcd's is a fresh single-member cluster of its own."""
    if request.param == "etcd":
        cluster = EtcdCluster(tmp_path)
        store: Ledger = cluster.ledger()
        yield store
        store.close()
        cluster.stop()
        return
    store = MemoryLedger() if request.param == "memory" else SqliteLedger(tmp_path / "ledger.sqlite")
    yield store
    store.close()


def manifest(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs))


def obj(
    kind: str, name: str, namespace: str | None = None, spec: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    doc: dict[str, Any] = {"apiVersion": "isthmus.io/v1", "kind": kind, "metadata": metadata}
    if spec is not None:
        doc["spec"] = spec
    return doc


def tenant_net(tenant: str = "acme", network: str = "red", cidr: str = "10.1.0.0/24") -> list[dict[str, Any]]:
    """A tenant with one overlay network and one subnet."""
    return [
        obj("Tenant", tenant),
        obj("VirtualNetwork", network, tenant),
        obj("Subnet", f"{network}-v4", tenant, {"network": network, "cidr": cidr}),
    ]
