"""The CNI plugin as a runtime runs it: the lab's plugin binary exec'd in the node's namespace with the
CNI_* variables and the config on stdin, against the node's real agent. Every error code the plugin gives
(JSON on stdout, exit status 1) and every command's success, checked by what a runtime and a user see:
exit status, JSON, and interfaces appearing and vanishing in the namespaces."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isthmus.dataplane.kernel.plan import veth_name
from isthmus.dataplane.kernel.ruleset import GATEWAY
from isthmus.lab.fabric import Fabric, ip
from tests.integration.runtime import NODE, Answer, Runtime, declare, destroy, node_has

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nftables (scripts/bootstrap)"
)


@dataclass
class Lab:
    fabric: Fabric
    run: Runtime
    endpoints: dict[str, dict[str, Any]]  # pod name -> its Endpoint's spec

    def sandbox(self, name: str) -> str:
        """A new, empty network namespace of the lab (removed with it); its path."""
        netns = f"{self.fabric.prefix}s-{name}"
        ip("netns", "add", netns)
        return f"/run/netns/{netns}"

    def host_veth(self, pod: str) -> bool:
        """Whether node-1 holds the pod's host-side veth."""
        return node_has(self.fabric, veth_name(f"web/{pod}"))


def _inside(netns: str) -> list[str]:
    """The IPv4 addresses (CIDR) on eth0 in the sandbox at path `netns`; [] when it has no eth0."""
    done = ip("-n", Path(netns).name, "-4", "-j", "addr", "show", "dev", "eth0", check=False)
    if done.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(done.stdout) for a in link["addr_info"]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """node-1 with its agent; pods a and b scheduled to it, far to node-2 (which runs no agent)."""
    tmp = tmp_path_factory.mktemp("cni")
    nodes = {NODE: "192.168.77.10", "node-2": "192.168.77.11"}
    endpoints = declare(tmp / "state", nodes, {"a": NODE, "b": NODE, "far": "node-2"})
    fabric = Fabric(f"ist{uuid.uuid4().hex[:6]}-", tmp / "state", tmp / "lab")
    try:
        fabric.build([NODE])
        fabric.start_agent(NODE)
        yield Lab(fabric, Runtime(fabric), endpoints)
    finally:
        destroy(fabric)


NO_SOCKET = {"socket": "/run/isthmus-none/cni.sock"}
POD_A = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a"}
ERRORS: list[tuple[str, str, dict[str, Any], int, tuple[str, ...]]] = [
    # (id, command, changes: env / config / stdin, code, words the message must name)
    ("gc-config-1.0.0", "GC", {"config": {"cniVersion": "1.0.0"}}, 1, ("incompatible", "GC", "1.1.0")),
    (
        "status-config-1.0.0",
        "STATUS",
        {"config": {"cniVersion": "1.0.0"}},
        1,
        ("incompatible", "STATUS", "1.1.0"),
    ),
    ("unsupported-version", "ADD", {"config": {"cniVersion": "0.3.1"}}, 1, ("incompatible", "0.3.1")),
    ("unknown-container", "CHECK", {"env": {"CNI_CONTAINERID": "ghost"}}, 3, ("ghost",)),
    ("missing-env", "ADD", {"env": {"CNI_NETNS": None, "CNI_PATH": None}}, 4, ("CNI_NETNS", "CNI_PATH")),
    ("missing-command", "ADD", {"env": {"CNI_COMMAND": None}}, 4, ("CNI_COMMAND",)),
    ("bad-command", "FROB", {}, 4, ("CNI_COMMAND", "FROB")),
    ("bad-container", "ADD", {"env": {"CNI_CONTAINERID": "-bad/id"}}, 4, ("CNI_CONTAINERID", "-bad/id")),
    ("long-ifname", "ADD", {"env": {"CNI_IFNAME": "eth0123456789abc"}}, 4, ("CNI_IFNAME",)),
    ("slash-ifname", "DEL", {"env": {"CNI_IFNAME": "a/b"}}, 4, ("CNI_IFNAME", "a/b")),
    ("dot-ifname", "CHECK", {"env": {"CNI_IFNAME": ".."}}, 4, ("CNI_IFNAME",)),
    ("bad-args", "ADD", {"env": {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME"}}, 4, ("CNI_ARGS",)),
    ("config-not-json", "ADD", {"stdin": '{"cniVersion": "1.1.0", '}, 6, ("not JSON",)),
    ("config-not-object", "DEL", {"stdin": '["isthmus"]'}, 6, ("JSON object",)),
    ("bad-network-name", "ADD", {"config": {"name": "my net"}}, 7, ("name", "my net")),
    ("no-network-name", "DEL", {"config": {"name": None}}, 7, ("name",)),
    ("no-endpoint-named", "ADD", {}, 7, ("K8S_POD_NAME", "endpoint")),
    ("socket-absent", "ADD", {"env": POD_A, "config": NO_SOCKET}, 11, ("not available",)),
    ("status-socket-absent", "STATUS", {"config": NO_SOCKET}, 50, ("not available",)),
    (
        "scheduled-elsewhere",
        "ADD",
        {"env": {"CNI_ARGS": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=far"}},
        11,
        ("web/far", "node-2", NODE),
    ),
    (
        "config-endpoint-elsewhere",
        "ADD",
        {"config": {"endpoint": "far", "namespace": "web"}},
        11,
        ("web/far", "node-2"),
    ),
]


@pytest.mark.parametrize(
    ("command", "changes", "code", "words"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors(lab: Lab, command: str, changes: dict[str, Any], code: int, words: tuple[str, ...]) -> None:
    answer = lab.run(command, **changes)
    answer.error(code, *words)
    if "cniVersion" in changes.get("config", {}):
        assert (
            answer.out["cniVersion"] == changes["config"]["cniVersion"]
        )  # the error speaks the runtime's version


def test_version(lab: Lab) -> None:
    answer = lab.run("VERSION", stdin='{"cniVersion": "1.0.0"}', env={"CNI_CONTAINERID": None})
    assert answer == Answer(0, {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    assert lab.run("VERSION", stdin="").out["cniVersion"] == "1.1.0"


def test_status(lab: Lab) -> None:
    assert lab.run("STATUS", env={"CNI_CONTAINERID": None, "CNI_NETNS": None}) == Answer(0, {})


def test_add_check_del(lab: Lab) -> None:
    """ADD makes eth0 in the sandbox and the result says so; CHECK notices the veth going; DEL is
    idempotent."""
    netns, endpoint = lab.sandbox("add"), lab.endpoints["a"]
    answer = lab.run.add("c-add", netns, "a", {"cniVersion": "1.0.0"})
    assert answer.status == 0, answer
    address = f"{endpoint['addresses'][0]}/32"
    assert answer.out == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": veth_name("web/a"), "mac": answer.out["interfaces"][0]["mac"]},
            {"name": "eth0", "mac": endpoint["mac"], "sandbox": netns},
        ],
        "ips": [{"address": address, "gateway": GATEWAY, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    }
    assert _inside(netns) == [address]
    assert lab.host_veth("a")
    assert lab.run("CHECK", "c-add", netns) == Answer(0, {})

    ip("-n", Path(netns).name, "link", "del", "eth0")  # takes the host end with it
    lab.run("CHECK", "c-add", netns).error(100, "eth0 is gone", veth_name("web/a"))

    assert lab.run("DEL", "c-add", netns) == Answer(0, {})
    assert lab.run("DEL", "c-add", netns) == Answer(0, {})
    lab.run("CHECK", "c-add", netns).error(3, "c-add")
    assert not lab.host_veth("a")


def test_add_into_a_taken_ifname_fails_and_changes_nothing(lab: Lab) -> None:
    netns = lab.sandbox("taken")
    assert lab.run.add("c-first", netns, "a").status == 0
    lab.run.add("c-second", netns, "b").error(100, "eth0 already exists", netns)
    assert not lab.host_veth("b")
    assert lab.run("CHECK", "c-first", netns) == Answer(0, {})
    assert lab.run("DEL", "c-second", netns) == Answer(0, {})  # a runtime deletes after a failed ADD
    assert lab.run("DEL", "c-first", netns) == Answer(0, {})


def test_del_after_the_netns_is_gone(lab: Lab) -> None:
    netns = lab.sandbox("gone")
    assert lab.run.add("c-gone", netns, "a").status == 0
    ip("netns", "del", Path(netns).name)
    assert lab.run("DEL", "c-gone", netns) == Answer(0, {})
    assert lab.run("DEL", "c-gone", env={"CNI_NETNS": None}) == Answer(0, {})  # CNI_NETNS is optional
    assert not lab.host_veth("a")
    lab.run("CHECK", "c-gone", netns).error(3, "c-gone")


def test_a_new_sandbox_supersedes_the_old_and_its_del_keeps_the_new(lab: Lab) -> None:
    """A restarted pod's new sandbox may be added before the old one is deleted."""
    old, new = lab.sandbox("old"), lab.sandbox("new")
    assert lab.run.add("c-old", old, "a").status == 0
    assert lab.run.add("c-new", new, "a").status == 0
    assert _inside(old) == []
    assert lab.run("DEL", "c-old", old) == Answer(0, {})
    assert _inside(new) == [f"{lab.endpoints['a']['addresses'][0]}/32"]
    assert lab.run("CHECK", "c-new", new) == Answer(0, {})
    assert lab.run("DEL", "c-new", new) == Answer(0, {})


def test_gc_removes_only_attachments_not_listed(lab: Lab) -> None:
    keep, drop = lab.sandbox("keep"), lab.sandbox("drop")
    assert lab.run.add("c-keep", keep, "a").status == 0
    assert lab.run.add("c-drop", drop, "b").status == 0
    valid = [{"containerID": "c-keep", "ifname": "eth0"}]
    unset: dict[str, str | None] = {"CNI_CONTAINERID": None, "CNI_NETNS": None, "CNI_IFNAME": None}
    other = lab.run("GC", env=unset, config={"name": "other", "cni.dev/valid-attachments": []})
    assert other == Answer(0, {}) and lab.host_veth("a") and lab.host_veth("b")  # not that network's
    gc = lab.run("GC", env=unset, config={"cni.dev/valid-attachments": valid})
    assert gc == Answer(0, {})  # GC prints nothing on success
    assert _inside(drop) == [] and not lab.host_veth("b")
    assert _inside(keep) == [f"{lab.endpoints['a']['addresses'][0]}/32"]
    assert lab.run("CHECK", "c-keep", keep) == Answer(0, {})
    lab.run("CHECK", "c-drop", drop).error(3, "c-drop")
    assert lab.run("DEL", "c-drop", drop) == Answer(0, {})
    assert lab.run("DEL", "c-keep", keep) == Answer(0, {})


def test_agent_down_then_restarted(lab: Lab) -> None:
    """A stopped agent: STATUS says not available (50), the other commands try again later (11);
    attachments outlive the agent and it answers for them again once restarted."""
    netns = lab.sandbox("restart")
    assert lab.run.add("c-restart", netns, "a").status == 0
    lab.fabric.stop(f"agent/{NODE}")
    lab.run("STATUS").error(50, "not available")
    lab.run.add("c-late", lab.sandbox("late"), "b").error(11, "not available")
    lab.run("CHECK", "c-restart", netns).error(11, "not available")
    lab.fabric.socket(NODE).unlink(
        missing_ok=True
    )  # left by the stopped agent; start_agent waits for a new one
    lab.fabric.start_agent(NODE)
    assert lab.run("STATUS") == Answer(0, {})
    assert lab.run("CHECK", "c-restart", netns) == Answer(0, {})
    assert lab.run("DEL", "c-restart", netns) == Answer(0, {})
    assert _inside(netns) == []
