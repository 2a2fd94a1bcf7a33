"""Pods reach the nodes: a host-network pod served on its node's address, and a service whose endpoints are
a node's address (as the `kubernetes` service's are the API server's), from a pod on every node, with
`isthmus trace` agreeing; a NetworkPolicy ipBlock still keeps a pod from them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.labs import ask, isthmus, lab, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap)"
)
NODES = {"node-1": "192.168.77.10", "node-2": "192.168.77.11", "node-3": "192.168.77.12"}
APISERVER = NODES["node-1"]


def _pod(name: str, node: str, **spec: Any) -> dict[str, Any]:
    containers = [{"name": "c", "image": "agnhost", "ports": [{"name": "https", "containerPort": 6443}]}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": containers, **spec},
    }


MANIFESTS = [
    _pod("apiserver", "node-1", hostNetwork=True),  # served on node-1's own address
    *(_pod(f"client-{n[-1]}", n) for n in NODES),
    {  # as the `kubernetes` service: no selector, its endpoints the API server's host address
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
    },
    {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": APISERVER}], "ports": [{"name": "https", "port": 6443}]}],
    },
]
FENCE = {  # client-2 may leave only for 10.0.0.0/8: node addresses are outside it
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "fence", "namespace": "default"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "client-2"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
    },
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("hostnet")
    (base / "pods.yaml").write_text(yaml.safe_dump_all(MANIFESTS))
    topology = {"name": "h", "nodes": [{"name": n} for n in NODES], "manifests": ["pods.yaml"]}
    with running(base, topology, "--timeout", "60") as (work, _):
        yield work


def _trace(work: Path, source: str, address: str, port: int) -> str:
    shown = isthmus(work, "trace", source, address, "--port", str(port), "-o", "json").output
    return str(json.loads(shown)["verdict"])


def test_pods_on_every_node_reach_a_host_network_pod_and_a_service_of_node_addresses(work: Path) -> None:
    pods = {
        p["metadata"]["name"]: p
        for p in json.loads(isthmus(work, "get", "pods", "-o", "json").output)["items"]
    }
    assert pods["apiserver"]["status"]["podIP"] == APISERVER  # a host-network pod's address is its node's
    vip = json.loads(isthmus(work, "get", "service", "kubernetes", "-o", "json").output)["spec"]["clusterIP"]
    for node in NODES:
        client = f"default/client-{node[-1]}"
        assert ask(work, client, APISERVER, 6443) == "default/apiserver", client
        assert ask(work, client, vip, 443) == "default/apiserver", client
        assert _trace(work, client, APISERVER, 6443) == "allow"
        assert _trace(work, client, vip, 443) == "allow"
    # the node's infrastructure stays out of reach: BGP's port, whatever listens there
    assert _trace(work, "default/client-2", APISERVER, 179) == "deny"


def test_a_network_policy_ip_block_keeps_a_pod_from_the_nodes(work: Path, tmp_path: Path) -> None:
    (tmp_path / "fence.yaml").write_text(yaml.safe_dump(FENCE))
    lab(work, "apply", "-f", str(tmp_path / "fence.yaml"))
    vip = json.loads(isthmus(work, "get", "service", "kubernetes", "-o", "json").output)["spec"]["clusterIP"]
    until(lambda: ask(work, "default/client-2", APISERVER, 6443), "failed: TimeoutError")
    assert ask(work, "default/client-2", vip, 443) == "failed: TimeoutError"
    assert _trace(work, "default/client-2", APISERVER, 6443) == "deny"
    assert _trace(work, "default/client-2", vip, 443) == "deny"
    assert ask(work, "default/client-3", APISERVER, 6443) == "default/apiserver"  # others are not fenced
    lab(work, "delete", "-f", str(tmp_path / "fence.yaml"))
    until(lambda: ask(work, "default/client-2", APISERVER, 6443), "default/apiserver")
