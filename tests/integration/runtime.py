"""Running the lab's CNI plugin as a container runtime does, for the CNI and podman tests: a ledger with
pods declared, the plugin exec'd in node-1's namespace, and what it answers."""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.lab.fabric import PLUGIN, Fabric, ip, netns_exec
from tests.conftest import manifest

NODE = "node-1"


@dataclass(frozen=True)
class Answer:
    """What a runtime gets back: the exit status and stdout, decoded ({} when empty)."""

    status: int
    out: dict[str, Any]

    def error(self, code: int, *words: str) -> None:
        """A CNI error of `code` in the spec's shape, whose message names every one of `words`."""
        assert self.status == 1, self
        assert set(self.out) == {"cniVersion", "code", "msg", "details"}, self.out
        assert self.out["code"] == code, self.out
        assert all(word in self.out["msg"] for word in words), (words, self.out)


class Runtime:
    """Runs the lab's plugin in node-1's namespace as a container runtime does."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric

    def __call__(
        self,
        command: str,
        container: str = "c0",
        netns: str = "/run/netns/none",
        *,
        env: dict[str, str | None] | None = None,
        config: dict[str, Any] | None = None,
        stdin: str | None = None,
    ) -> Answer:
        """One invocation. `env` changes variables (None unsets one), `config` the network config (None
        drops a key); `stdin` replaces the config."""
        variables: dict[str, str | None] = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.fabric.work / "cni-bin"),
            "CNI_ARGS": "IgnoreUnknown=1",
            "PATH": os.environ.get("PATH", ""),
        }
        variables.update(env or {})
        network = {
            "cniVersion": "1.1.0",
            "name": "isthmus",
            "type": PLUGIN,
            "socket": str(self.fabric.socket(NODE)),
        } | (config or {})
        if stdin is None:
            stdin = json.dumps({k: v for k, v in network.items() if v is not None})
        done = netns_exec(
            self.fabric.node_netns(NODE),
            str(self.fabric.work / "cni-bin" / PLUGIN),
            input=stdin,
            env={k: v for k, v in variables.items() if v is not None},
            timeout=30,
        )
        assert not done.stderr, done.stderr
        return Answer(done.returncode, json.loads(done.stdout) if done.stdout.strip() else {})

    def add(self, container: str, netns: str, pod: str, config: dict[str, Any] | None = None) -> Answer:
        """ADD as a Kubernetes runtime names the pod: in CNI_ARGS."""
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME={pod};K8S_POD_UID={uuid.uuid4()}"
        return self("ADD", container, netns, env={"CNI_ARGS": args}, config=config)


def declare(state: Path, nodes: dict[str, str], pods: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Nodes (name -> underlay address), namespace web and its pods (name -> node) applied to the
    ledger in `state` as `isthmus apply` does; the pods' Endpoint specs by name."""
    docs = [
        {"apiVersion": "isthmus.io/v1", "kind": "Node", "metadata": {"name": n}, "spec": {"address": a}}
        for n, a in nodes.items()
    ]
    docs += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}}]
    docs += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "web"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        }
        for name, node in pods.items()
    ]
    declared = state.with_suffix(".yaml")
    declared.write_text(manifest(*docs))
    applied = CliRunner().invoke(cli, ["--state", str(state), "apply", "-f", str(declared)])
    assert applied.exit_code == 0, applied.output
    listed = CliRunner().invoke(cli, ["--state", str(state), "get", "endpoints", "-n", "web", "-o", "json"])
    return {e["metadata"]["name"]: e["spec"] for e in json.loads(listed.output)["items"]}


def node_has(fabric: Fabric, device: str) -> bool:
    """Whether node-1's namespace holds `device`."""
    links = json.loads(ip("-n", fabric.node_netns(NODE), "-j", "link", "show").stdout)
    return any(link["ifname"] == device for link in links)


def destroy(fabric: Fabric) -> None:
    """The lab, and the tail of node-1's agent log on stderr (shown when a test failed)."""
    fabric.destroy()
    log = fabric.work / f"{NODE}.agent.log"
    if log.exists():
        sys.stderr.write(log.read_text()[-3000:])
