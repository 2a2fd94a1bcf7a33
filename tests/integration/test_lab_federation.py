"""Two clusters in one lab, each its own ledger, nodes and federation speaker (BGP VPNv4): a VM of the main
cluster reaches a VM of the other only while their networks' route targets match, straight from node to
node over VXLAN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.lab.fabric import Fabric
from isthmus.store import Ledger, open_ledger
from isthmus.store.election import controllers
from tests.integration.labs import ask, isthmus, lab, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("bird"),
    reason="needs root, nftables and BIRD 2 (scripts/bootstrap)",
)
TOPOLOGY = {
    "name": "fed",
    "clusters": [{"name": "os", "asn": 64601}],
    "nodes": [{"name": "a1"}, {"name": "b1", "cluster": "os"}],
}


def _side(
    tenant: str, network: str, cidr: str, vm: str, node: str, targets: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """A tenant's network with route targets, its subnet and a VM on `node` at the subnet's .10."""
    address = cidr.replace("0/24", "10")
    docs: list[dict[str, Any]] = [
        {"kind": "Tenant", "metadata": {"name": tenant}},
        {"kind": "VirtualNetwork", "metadata": {"name": network, "namespace": tenant}, "spec": targets},
        {
            "kind": "Subnet",
            "metadata": {"name": f"{network}-v4", "namespace": tenant},
            "spec": {"network": network, "cidr": cidr},
        },
        {
            "kind": "Endpoint",
            "metadata": {"name": vm, "namespace": tenant},
            "spec": {"kind": "vm", "network": network, "node": node, "addresses": [address]},
        },
    ]
    return [{"apiVersion": "isthmus.io/v1", **d} for d in docs]


def _joined(tmp_path: Path) -> list[dict[str, Any]]:
    """Web's network `front` (client on a1) and leonardo's `leonardodb` (pg-1 on b1), each importing the
    other's export target; written to main.yaml and other.yaml in `tmp_path`; leonardo's side."""
    main = _side(
        "web",
        "front",
        "10.61.0.0/24",
        "client",
        "a1",
        {"importTargets": ["64600:1"], "exportTargets": ["64600:2"]},
    )
    other = _side(
        "leonardo",
        "leonardodb",
        "10.62.0.0/24",
        "pg-1",
        "b1",
        {"exportTargets": ["64600:1"], "importTargets": ["64600:2"]},
    )
    (tmp_path / "main.yaml").write_text(yaml.safe_dump_all(main))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump_all(other))
    return other


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("federation")
    with running(base, TOPOLOGY, "--timeout", "60") as (work, _):
        yield work


def test_route_targets_join_two_clusters_node_to_node(work: Path, tmp_path: Path) -> None:
    fabric = Fabric.load(work)
    other = _joined(tmp_path)
    lab(work, "apply", "-f", str(tmp_path / "main.yaml"))
    started = time.monotonic()
    lab(work, "apply", "--cluster", "os", "-f", str(tmp_path / "other.yaml"))
    until(lambda: ask(work, "leonardo/pg-1", "10.61.0.10", 22), "web/client")
    print(f"route targets set: first connection after {time.monotonic() - started:.2f} s")
    assert ask(work, "web/client", "10.62.0.10", 5432) == "leonardo/pg-1"
    status = json.loads(lab(work, "status", "-o", "json").output)
    assert {n: s["cluster"] for n, s in status["nodes"].items()} == {"a1": "main", "b1": "os"}
    machines = {m["ref"]: (m["cluster"], m["node"], m["up"]) for m in status["machines"]}
    assert machines == {"web/client": ("main", "a1", True), "leonardo/pg-1": ("os", "b1", True)}
    assert "leonardo/pg-1" in lab(work, "status").output
    network = json.loads(
        subprocess.run(
            ["ip", "-n", fabric.node_netns("a1"), "-j", "route", "show", "table", "all", "10.62.0.10"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [(r.get("gateway"), r.get("dev", "")[:3]) for r in network] == [
        (fabric.nodes["b1"], "isx")
    ]  # node to node
    changed = {**other[1], "spec": {"exportTargets": ["64600:9"], "importTargets": ["64600:2"]}}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    started = time.monotonic()
    lab(work, "apply", "--cluster", "os", "-f", str(tmp_path / "changed.yaml"))
    until(lambda: ask(work, "web/client", "10.62.0.10", 5432), "failed: OSError")
    print(f"route target changed: disconnected after {time.monotonic() - started:.2f} s")


def test_a_kubernetes_pod_reaches_a_vm_of_the_other_cluster_only_while_targets_match(
    work: Path, tmp_path: Path
) -> None:
    def shop(targets: str) -> list[dict[str, Any]]:
        annotations = {"isthmus.io/isolation": "namespace", "isthmus.io/route-targets": f"pods={targets}"}
        return [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "shop", "annotations": annotations},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "buyer", "namespace": "shop"},
                "spec": {"nodeName": "a1", "containers": [{"name": "buyer", "image": "buyer"}]},
            },
        ]

    both = {"exportTargets": ["64600:3"], "importTargets": ["64600:3"]}
    (tmp_path / "vm.yaml").write_text(
        yaml.safe_dump_all(_side("stock", "db", "10.63.0.0/24", "pg", "b1", both))
    )
    lab(work, "apply", "--cluster", "os", "-f", str(tmp_path / "vm.yaml"))
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump_all(shop("64600:3")))
    lab(work, "apply", "-f", str(tmp_path / "shop.yaml"))
    until(lambda: ask(work, "shop/buyer", "10.63.0.10", 5432), "stock/pg")  # pod -> VM, cluster to cluster
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump_all(shop("64600:4")))
    lab(work, "apply", "-f", str(tmp_path / "shop.yaml"))
    until(lambda: ask(work, "shop/buyer", "10.63.0.10", 5432), "failed: OSError")  # targets differ: cut


def test_two_speakers_per_cluster_keep_routes_flowing_across_a_kill(tmp_path: Path) -> None:
    """`controllers: 2`: each cluster runs two federation speakers, both announcing, the elected one
    importing; SIGKILL to the main cluster's leading speaker: the VMs keep reaching each other, the standby
    leads the imports, and a VM the other cluster adds afterwards is imported by it."""
    other = _joined(tmp_path)
    later = {**other[3], "metadata": {"name": "pg-2", "namespace": "leonardo"}}
    later = {**later, "spec": {**later["spec"], "addresses": ["10.62.0.11"]}}
    (tmp_path / "later.yaml").write_text(yaml.safe_dump(later))
    with running(tmp_path, TOPOLOGY | {"controllers": 2}, "--timeout", "60") as (work, _):
        fabric = Fabric.load(work)
        lab(work, "apply", "-f", str(tmp_path / "main.yaml"))
        lab(work, "apply", "--cluster", "os", "-f", str(tmp_path / "other.yaml"))
        until(lambda: ask(work, "web/client", "10.62.0.10", 5432), "leonardo/pg-1", 30)
        ledger = open_ledger(work / "state")
        leader = until_value(lambda: _leader(ledger), 15)
        standby = {"main": "main-2", "main-2": "main"}[leader]
        assert [c.standbys for c in controllers(ledger)] == [[standby]]
        fabric.stop(f"federation/{leader}", signal.SIGKILL)
        for _ in range(20):  # 10 s of answers across the takeover
            assert ask(work, "web/client", "10.62.0.10", 5432) == "leonardo/pg-1"
            time.sleep(0.5)
        until(lambda: _leader(ledger), standby, 15)
        lab(work, "apply", "--cluster", "os", "-f", str(tmp_path / "later.yaml"))
        until(lambda: ask(work, "web/client", "10.62.0.11", 5432), "leonardo/pg-2", 30)


def _leader(ledger: Ledger) -> str | None:
    found = controllers(ledger)
    return found[0].leader if found else None


def until_value(what: Callable[[], str | None], seconds: float) -> str:
    """The first non-empty value of `what()` within `seconds`."""
    deadline = time.monotonic() + seconds
    while not (got := what()):
        assert time.monotonic() < deadline, "nothing within the time"
        time.sleep(0.1)
    return got


def test_two_clusters_federate_an_ipv6_network(work: Path, tmp_path: Path) -> None:
    """IPv6 endpoints travel as VPNv6 routes (next hop: the node's IPv4 address embedded in 64:ff9b::/96)
    and are reached node to node over VXLAN, with the IPv4 underlay."""
    sides = {
        "main": _side("web6", "front6", "10.63.0.0/24", "client", "a1", {"exportTargets": ["64600:6"]}),
        "os": _side("db6", "back6", "10.64.0.0/24", "pg-6", "b1", {"importTargets": ["64600:6"]}),
    }
    for cluster, docs in sides.items():
        tenant = docs[0]["metadata"]["name"]
        network = docs[1]["metadata"]["name"]
        six = f"fd00:{63 if cluster == 'main' else 64}::"
        docs.insert(3, {**docs[2], "metadata": {"name": f"{network}-v6", "namespace": tenant}})
        docs[3]["spec"] = {"network": network, "cidr": f"{six}/64"}
        docs[4]["spec"]["addresses"].append(f"{six}10")
        docs[1]["spec"] = {"importTargets": ["64600:6"], "exportTargets": ["64600:6"]}
        (tmp_path / f"{cluster}.yaml").write_text(yaml.safe_dump_all(docs))
        lab(
            work,
            "apply",
            *(["--cluster", cluster] if cluster != "main" else []),
            "-f",
            str(tmp_path / f"{cluster}.yaml"),
        )
    until(lambda: ask(work, "web6/client", "fd00:64::10", 5432), "db6/pg-6", 30)
    assert ask(work, "db6/pg-6", "fd00:63::10", 22) == "web6/client"
    learned = isthmus(work, "get", "importedroutes", "-o", "json").output
    assert "fd00:64::10/128" in learned and "10.64.0.10/32" in learned
