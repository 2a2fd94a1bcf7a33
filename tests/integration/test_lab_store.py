"""The lab on a 3-member etcd (TLS, roles) under faults, with real packets: the leader killed, the quorum
lost, a node cut from the store while the store compacts, and an agent's credentials refused intent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from isthmus.agent.slice import held
from isthmus.cli.main import cli
from isthmus.dataplane.kernel.driver import drift
from isthmus.dataplane.kernel.plan import Planner, veth_name
from isthmus.lab.fabric import Fabric, ip
from isthmus.store import Credentials, Refused, open_ledger, open_store
from tests.integration.labs import STREAM, isthmus, lab, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("etcd"),
    reason="needs root, nftables and etcd (scripts/bootstrap)",
)
NODES = ("n1", "n2", "n3")
SEEDS = Path(__file__).resolve().parents[2] / "examples" / "seeds"
TOPOLOGY = {
    "name": "store",
    "store": {"etcd": 3},
    "nodes": [{"name": n} for n in NODES],
    "manifests": [str(SEEDS)],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("store")
    echoes = [_pod_doc(f"echo-{node}", node, [{"containerPort": 80, "protocol": "UDP"}]) for node in NODES]
    (base / "echo.yaml").write_text(yaml.safe_dump_all(echoes))
    topology = TOPOLOGY | {"manifests": [*TOPOLOGY["manifests"], str(base / "echo.yaml")]}  # type: ignore[list-item]
    with running(base, topology) as (work, _):
        yield work


def _status(work: Path) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(lab(work, "status", "-o", "json").output)
    return shown


def _leader(work: Path) -> str:
    return next(m["member"] for m in _status(work)["store"] if m["leader"] == "yes")


def _pods(work: Path) -> dict[str, tuple[str, str]]:
    """NAMESPACE/NAME -> (node, address) of the running pods."""
    return {f"{p['namespace']}/{p['name']}": (p["node"], p["address"]) for p in _status(work)["pods"]}


def _pod_doc(name: str, node: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "ports": ports}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name.partition("-")[0]}},
        "spec": {"nodeName": node, "containers": [container]},
    }


def _pod(path: Path, name: str, node: str) -> str:
    """A manifest of one pod bound to `node`."""
    path.write_text(yaml.safe_dump(_pod_doc(name, node, [])))
    return str(path)


def _source(work: Path) -> str:
    """A pod with a UDP echo pod on another node."""
    pods = _pods(work)
    echoes = {node for name, (node, _) in pods.items() if "/echo-" in name}
    return next(name for name, (node, _) in sorted(pods.items()) if echoes - {node})


def _stream(work: Path, source: str, count: int) -> tuple[subprocess.Popen[str], str]:
    """UDP datagrams from pod `source` to an echo pod on another node, each answered; the process and the
    target's node."""
    pods, fabric = _pods(work), Fabric.load(work)
    node = pods[source][0]
    target = next(v for k, v in pods.items() if "/echo-" in k and v[0] != node)
    sandbox = fabric.sandbox(*source.split("/"))
    argv = ["ip", "netns", "exec", sandbox, "python3", "-c", STREAM, target[1], str(count)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True), target[0]


def _answered(stream: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = stream.communicate(timeout=120)
    answer: dict[str, int] = json.loads(out)
    return answer


def _members_healthy(work: Path) -> list[str]:
    return sorted(m["health"] for m in _status(work)["store"])


def _store_problems(work: Path) -> dict[str, str]:
    nodes = _status(work)["nodes"]
    return {n: v["agent"].get("problems", {}).get("store", "") for n, v in nodes.items()}


def _store_up(work: Path) -> dict[str, float]:
    """Each agent's metric isthmus_agent_store_up."""
    found = {}
    for node, shown in _status(work)["nodes"].items():
        lines = shown["agent"]["metrics"].splitlines()
        found[node] = float(next(x for x in lines if x.startswith("isthmus_agent_store_up")).split()[-1])
    return found


def test_leader_killed_under_traffic_and_applies(work: Path, tmp_path: Path) -> None:
    """SIGKILL to the leader while pods stream UDP across nodes and pods are added: nothing is lost."""
    fabric = Fabric.load(work)
    stream, _ = _stream(work, _source(work), 800)
    time.sleep(1)
    leader = _leader(work)
    fabric.stop(leader, signal.SIGKILL)
    for i, node in enumerate(NODES):
        isthmus(work, "apply", "-f", _pod(tmp_path / f"a{i}.yaml", f"after-kill-{i}", node))
    assert _answered(stream) == {"sent": 800, "answered": 800}
    lab(work, "apply", "-f", str(tmp_path / "a0.yaml"))  # settles: every agent has every change
    fabric.start_member("", leader)
    until(lambda: _members_healthy(work), ["healthy"] * 3, 30)
    assert all(f"default/after-kill-{i}" in _pods(work) for i in range(3))


def test_quorum_lost_refuses_writes_and_keeps_forwarding(work: Path, tmp_path: Path) -> None:
    """Two of three members killed: apply fails in under 10 s naming the store, nothing is written, flows
    keep going, a CNI ADD gets code 11 and a DEL still detaches; the members back, everything converges with
    no process restarted."""
    fabric = Fabric.load(work)
    lab(work, "apply", "-f", _pod(tmp_path / "detach.yaml", "detach-me", "n1"))
    detached = fabric.sandbox("default", "detach-me")
    stream, _ = _stream(work, _source(work), 1500)
    time.sleep(1)
    leader = _leader(work)
    lost = [next(m for m in fabric.stores[""] if m != leader), leader]
    for member in lost:
        fabric.stop(member, signal.SIGKILL)
    started = time.monotonic()
    refused = CliRunner().invoke(
        cli,
        ["--state", str(work / "state"), "apply", "-f", _pod(tmp_path / "q.yaml", "in-quorum-loss", "n1")],
    )
    took = time.monotonic() - started
    assert refused.exit_code == 1 and took < 10, (refused.output, took)
    assert "store etcd+unix://" in refused.output and "quorum" in refused.output, refused.output
    until(lambda: all(_store_problems(work).values()), True, 20)
    assert _store_up(work) == dict.fromkeys(NODES, 0)
    with pytest.raises(RuntimeError, match=r"'code': 11.*store"):
        fabric.cni("n1", "ADD", "ghost", "/run/netns/none", K8S_POD_NAMESPACE="default", K8S_POD_NAME="ghost")
    host = veth_name("default/detach-me")
    assert ip("-n", fabric.node_netns("n1"), "link", "show", host, check=False).returncode == 0
    args = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "detach-me"}
    fabric.cni("n1", "DEL", detached, f"/run/netns/{detached}", **args)  # needs no store
    assert ip("-n", fabric.node_netns("n1"), "link", "show", host, check=False).returncode != 0
    assert _answered(stream) == {"sent": 1500, "answered": 1500}
    for member in lost:
        fabric.start_member("", member)
    until(lambda: _members_healthy(work), ["healthy"] * 3, 30)
    until(lambda: any(_store_problems(work).values()), False, 20)
    assert _store_up(work) == dict.fromkeys(NODES, 1)
    assert "default/in-quorum-loss" not in _pods(work)
    assert (
        "not found"
        in CliRunner().invoke(cli, ["--state", str(work / "state"), "get", "pod", "in-quorum-loss"]).output
    )
    lab(work, "delete", "-f", str(tmp_path / "detach.yaml"))
    lab(work, "apply", "-f", str(tmp_path / "q.yaml"))
    assert _pods(work)["default/in-quorum-loss"][0] == "n1"


def test_node_cut_from_the_store_converges_to_its_plan(work: Path, tmp_path: Path) -> None:
    """A node cut from every member for 30 s while pods come and go elsewhere and the store compacts: it
    keeps forwarding, then converges, and its kernel holds exactly the plan compiled from its slice of the
    ledger."""
    fabric = Fabric.load(work)
    members = ", ".join(fabric.stores[""].values())
    source = _source(work)
    cut_node = _pods(work)[source][0]
    netns = fabric.node_netns(cut_node)
    cut = f"""table ip cut {{
        chain out {{ type filter hook output priority 0; ip daddr {{ {members} }} drop; }}
        chain in {{ type filter hook input priority 0; ip saddr {{ {members} }} drop; }}
    }}"""
    other = next(n for n in NODES if n != cut_node)
    lab(work, "apply", "-f", _pod(tmp_path / "doomed.yaml", "doomed", other))  # deleted during the cut
    stream, _ = _stream(work, source, 3200)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=cut, text=True, check=True)
    ended = time.monotonic() + 30
    try:
        for i, node in enumerate(n for n in NODES if n != cut_node):
            isthmus(work, "apply", "-f", _pod(tmp_path / f"c{i}.yaml", f"during-cut-{i}", node))
        isthmus(work, "delete", "pod", "doomed")
        ledger = open_ledger(work / "state")
        ledger.compact(ledger.revision())
        time.sleep(max(0.0, ended - time.monotonic()))
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "ip", "cut"], check=True)
    cut_end = time.monotonic()
    revision = ledger.revision()
    agent = lambda: _status(work)["nodes"][cut_node]["agent"]  # noqa: E731
    until(lambda: int(agent().get("revision", 0)) >= revision and not agent().get("problems"), True, 30)
    converged = time.monotonic() - cut_end
    assert _answered(stream) == {"sent": 3200, "answered": 3200}
    assert drift(Planner(held(ledger, cut_node).node_state(cut_node)).plan, netns) == {}  # its slice's plan
    assert "compacted" in fabric.log("agent", cut_node).read_text()  # it relisted, not resumed
    print(f"{cut_node} converged {converged:.2f} s after the cut ended")


def test_agent_credentials_cannot_write_intent(work: Path) -> None:
    """The agent of n1 (its etcd user, over the members' sockets) reads the channels and nothing else,
    and writes its status only."""
    url = Fabric.load(work).store_url("", "agent-n1", unix=True)
    assert url is not None
    ledger = open_store(url, Credentials())
    assert ledger.list("/channels/cluster/")[0]  # what every node holds
    with pytest.raises(Refused, match="permission denied to user agent-n1"):
        ledger.list("/objects/")
    with pytest.raises(Refused, match="permission denied to user agent-n1"):
        ledger.commit({}, [("/objects/isthmus.io/Tenant/evil", b"{}")])
    with pytest.raises(Refused, match="permission denied to user agent-n1"):
        ledger.commit({}, [("/status/nodes/n2", b"{}")])
    mine = ledger.get("/status/nodes/n1")
    assert mine is not None
    ledger.commit({}, [("/status/nodes/n1", mine.value)])
    assert open_ledger(work / "state").get("/objects/isthmus.io/Tenant/evil") is None
