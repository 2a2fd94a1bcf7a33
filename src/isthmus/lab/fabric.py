"""The lab's namespaces and processes: an underlay switch, nodes running the real agent, pod sandboxes
attached through the real CNI plugin. Nothing links to the machine's own namespace; everything made is
named with the lab's prefix and removed by name or PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN = "isthmus"  # the CNI plugin's executable name, in the lab's CNI_PATH


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_exec(netns: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    argv = ("ip", "netns", "exec", netns, *argv)
    return subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)


@dataclass
class Fabric:
    """A lab of `prefix`: state (ledger) in `state`, its own files in `work`."""

    prefix: str
    state: Path
    work: Path
    subnet: str = "192.168.77"
    nodes: dict[str, str] = field(default_factory=dict)  # name -> underlay address
    processes: dict[str, int] = field(default_factory=dict)  # what -> pid

    @property
    def underlay(self) -> str:
        return f"{self.prefix}underlay"

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def socket(self, node: str) -> Path:
        return self.work / node / "cni.sock"

    def build(self, nodes: list[str]) -> None:
        """The switch and the nodes' namespaces, each node on the switch at SUBNET.(10 + i)/24."""
        self.work.mkdir(parents=True, exist_ok=True)
        ip("netns", "add", self.underlay)
        ip("-n", self.underlay, "link", "add", "br0", "type", "bridge")
        ip("-n", self.underlay, "link", "set", "br0", "up")
        for i, node in enumerate(nodes):
            netns, address = self.node_netns(node), f"{self.subnet}.{10 + i}"
            ip("netns", "add", netns)
            ip(
                "-n",
                self.underlay,
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            ip("-n", self.underlay, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            self.nodes[node] = address
        self._install_plugin()
        self.save()

    def _install_plugin(self) -> None:
        binary = self.work / "cni-bin" / PLUGIN
        binary.parent.mkdir(exist_ok=True)
        binary.write_text(f"#!{sys.executable}\nfrom isthmus.cni.plugin import main\nmain()\n")
        binary.chmod(0o755)

    def start_agent(self, node: str) -> None:
        log = (self.work / node).with_suffix(".agent.log")
        (self.work / node).mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(self.state), "agent", "run"]
        argv += ["--node", node, "--socket", str(self.socket(node)), "--work", str(self.work / node)]
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.node_netns(node), *argv], stdout=out, stderr=out
            )
        self.processes[f"agent/{node}"] = process.pid
        self.save()
        deadline = time.monotonic() + 30
        while not self.socket(node).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent of {node} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self, what: str, sig: int = signal.SIGTERM) -> None:
        pid = self.processes.pop(what, None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.save()

    def cni(self, node: str, command: str, container: str, netns: str = "", **args: str) -> dict[str, Any]:
        """Run the plugin in the node's namespace as a runtime does; its JSON answer (raises on error)."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.work / "cni-bin"),
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in {"IgnoreUnknown": "1", **args}.items()),
            "PATH": os.environ.get("PATH", ""),
        }
        config = {"cniVersion": "1.1.0", "name": "isthmus", "type": PLUGIN, "socket": str(self.socket(node))}
        done = netns_exec(
            self.node_netns(node), str(self.work / "cni-bin" / PLUGIN), input=json.dumps(config), env=env
        )
        answer: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        if done.returncode != 0:
            raise RuntimeError(f"CNI {command} of {container} on {node}: {answer or done.stderr}")
        return answer

    def pod(self, node: str, namespace: str, name: str, ports: list[str]) -> str:
        """A sandbox for the pod, attached through the plugin, serving its name on `ports`; its netns."""
        sandbox = f"{self.prefix}p-{namespace}-{name}"[:60]
        ip("netns", "add", sandbox)
        self.cni(
            node, "ADD", sandbox, f"/run/netns/{sandbox}", K8S_POD_NAMESPACE=namespace, K8S_POD_NAME=name
        )
        server = [sys.executable, "-m", "isthmus.lab.server", f"{namespace}/{name}", *ports]
        process = subprocess.Popen(["ip", "netns", "exec", sandbox, *server], stdout=subprocess.DEVNULL)
        self.processes[f"pod/{sandbox}"] = process.pid
        self.save()
        return sandbox

    def save(self) -> None:
        (self.work / "fabric.json").write_text(
            json.dumps({"prefix": self.prefix, "nodes": self.nodes, "processes": self.processes})
        )

    def destroy(self) -> None:
        """Every process and namespace of the lab, also those of a lab that crashed (by its prefix)."""
        saved = self.work / "fabric.json"
        if saved.exists():
            self.processes.update(json.loads(saved.read_text()).get("processes", {}))
        for what in list(self.processes):
            self.stop(what)
        for netns in ip("netns", "list").stdout.split("\n"):
            name = netns.split(" ")[0]
            if name.startswith(self.prefix):
                ip("netns", "del", name, check=False)
