"""The lab's namespaces and processes: an underlay switch, nodes running the real agent, pod sandboxes
attached through the real CNI plugin, and optionally a gateway router (BIRD 2) with an outside client
behind it. Nothing links to the machine's own namespace; everything made is named with the lab's prefix
and removed by name or PID."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isthmus.bgp.bird import running
from isthmus.lab.router import Bird
from isthmus.lab.topology import OUTSIDE

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
    router: str | None = None  # its underlay address, when the lab has one
    outside: str | None = None  # the outside client's address, when the lab has one
    clusters: dict[str, str] = field(default_factory=dict)  # node -> its cluster, when not the main one

    @property
    def underlay(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def router_netns(self) -> str:
        return f"{self.prefix}router"

    @property
    def outside_netns(self) -> str:
        return f"{self.prefix}outside"

    @property
    def bird(self) -> Bird:
        """The router's BIRD: its files in the lab's `router/`."""
        return Bird(self.work / "router")

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def state_of(self, cluster: str) -> Path:
        """The ledger of a cluster ("" the main one)."""
        return self.state if not cluster else self.work / f"state-{cluster}"

    def speaker_netns(self, cluster: str) -> str:
        return f"{self.prefix}fed-{cluster or 'main'}"

    def socket(self, node: str) -> Path:
        return self.work / node / "cni.sock"

    @classmethod
    def load(cls, work: Path) -> Fabric:
        """The lab saved in `work`."""
        saved = json.loads((work / "fabric.json").read_text())
        return cls(
            saved["prefix"],
            work / "state",
            work,
            nodes=saved["nodes"],
            processes=saved["processes"],
            router=saved.get("router"),
            outside=saved.get("outside"),
            clusters=saved.get("clusters", {}),
        )

    def sandbox(self, namespace: str, name: str) -> str:
        """The netns of a pod."""
        return f"{self.prefix}p-{namespace}-{name}"[:60]

    @staticmethod
    def disk(sandbox: str) -> Path:
        """A sandbox's own files (a PostgreSQL VM's cluster, nginx's configuration), where a service
        user can reach them; removed with the sandbox."""
        return Path(tempfile.gettempdir()) / f"{sandbox}.disk"

    def build(
        self, nodes: list[str] | dict[str, str], prefixlen: int = 24, gateway: str | None = None
    ) -> None:
        """The switch and the nodes' namespaces on it: at the given addresses, or SUBNET.(10 + i); with a
        default route via `gateway` (the router's address) when given."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.save()
        addresses = (
            nodes if isinstance(nodes, dict) else {n: f"{self.subnet}.{10 + i}" for i, n in enumerate(nodes)}
        )
        ip("netns", "add", self.underlay)
        ip("-n", self.underlay, "link", "add", "br0", "type", "bridge")
        ip("-n", self.underlay, "link", "set", "br0", "up")
        for i, (node, address) in enumerate(addresses.items()):
            self._switch_port(self.node_netns(node), f"p{i}", f"{address}/{prefixlen}", gateway)
            self.nodes[node] = address
        self._install_plugin()
        self.save()

    def build_router(self, address: str, prefixlen: int, outside: str | None) -> None:
        """The router's namespace, a port on the switch at `address`, forwarding with a layer-4 multipath
        hash and no default route; the outside client's namespace behind it on OUTSIDE when `outside`."""
        self._switch_port(self.router_netns, "rtr", f"{address}/{prefixlen}")
        sysctl = ("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1")
        done = netns_exec(self.router_netns, *sysctl)
        if done.returncode != 0:
            raise RuntimeError(f"router: {' '.join(sysctl)}: {done.stderr.strip()}")
        if outside:
            at = f"{outside}/{OUTSIDE.network.prefixlen}"
            _plug(self.outside_netns, at, self.router_netns, "outside", str(OUTSIDE.ip))
            ip("-n", self.router_netns, "addr", "add", str(OUTSIDE), "dev", "outside")
        self.router, self.outside = address, outside
        self.save()

    def _switch_port(self, netns: str, port: str, address: str, gateway: str | None = None) -> None:
        """A new namespace `netns` on the switch's `port`, at `address` (CIDR)."""
        _plug(netns, address, self.underlay, port, gateway)
        ip("-n", self.underlay, "link", "set", port, "master", "br0")

    def start_router(self, config: str) -> None:
        """BIRD with `config`, inside the router's namespace (so `destroy` ends it even after a crash), once
        its control socket answers."""
        if not shutil.which("bird"):
            raise RuntimeError(
                "BIRD 2 is not installed (Debian package bird2; scripts/bootstrap installs it)"
            )
        bird = self.bird
        bird.directory.mkdir(exist_ok=True)
        bird.path("conf").write_text(config)
        with contextlib.suppress(FileNotFoundError):
            bird.path("ctl").unlink()  # a dead BIRD's; the new one's shows it is up
        process = self._spawn("bird/router", self.router_netns, bird.argv(), bird.path("log"))
        deadline = time.monotonic() + 10
        while not bird.path("ctl").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"BIRD did not start: {bird.path('log').read_text()[-2000:]}")
            time.sleep(0.05)

    def start_speaker(self, cluster: str, address: str, prefixlen: int, asn: int, peers: list[str]) -> None:
        """The cluster's federation speaker (`isthmus federation run`) in a namespace of its own on the
        switch at `address`, peering with `peers` (ADDRESS:ASN)."""
        netns = self.speaker_netns(cluster)
        self._switch_port(netns, f"fed-{cluster or 'main'}"[:15], f"{address}/{prefixlen}")
        work = self.work / f"federation-{cluster or 'main'}"
        argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(self.state_of(cluster))]
        argv += ["federation", "run", "--address", address, "--asn", str(asn), "--work", str(work)]
        argv += [f"--peer={peer}" for peer in peers]
        self._spawn(
            f"federation/{cluster or 'main'}", netns, argv, self.work / f"federation-{cluster or 'main'}.log"
        )

    def _install_plugin(self) -> None:
        binary = self.work / "cni-bin" / PLUGIN
        binary.parent.mkdir(exist_ok=True)
        binary.write_text(f"#!{sys.executable}\nfrom isthmus.cni.plugin import main\nmain()\n")
        binary.chmod(0o755)

    def log(self, what: str, node: str) -> Path:
        return self.work / f"{node}.{what}.log"

    def _start(self, what: str, node: str, *argv: str, inside: bool = True) -> subprocess.Popen[bytes]:
        """`isthmus ARGV` (in the node's namespace when `inside`), logged; recorded as WHAT/NODE."""
        state = self.state_of(self.clusters.get(node, ""))
        command = [sys.executable, "-m", "isthmus.cli.main", "--state", str(state), *argv]
        netns = self.node_netns(node) if inside else None
        return self._spawn(f"{what}/{node}", netns, command, self.log(what, node))

    def _spawn(self, what: str, netns: str | None, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        """`command` (in `netns` when given), its output appended to `log`; its PID recorded as `what`."""
        if netns:
            command = ["ip", "netns", "exec", netns, *command]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out)
        self.processes[what] = process.pid
        self.save()
        return process

    def start_agent(self, node: str) -> None:
        """The node's agent, once its CNI socket answers."""
        (self.work / node).mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket(node).unlink()  # a dead agent's; the new one's shows it is up
        argv = [
            "agent",
            "run",
            "--node",
            node,
            "--socket",
            str(self.socket(node)),
            "--work",
            str(self.work / node),
        ]
        process = self._start("agent", node, *argv)
        deadline = time.monotonic() + 30
        while not self.socket(node).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"agent of {node} did not start: {self.log('agent', node).read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def start_kubelet(self, node: str) -> None:
        """The node's lab kubelet: makes the sandboxes of the pods scheduled to the node. It runs in the
        machine's namespaces: pod namespaces made inside `ip netns exec` (its own mount namespace) could
        not be entered by the agent."""
        self._start("kubelet", node, "lab", "--dir", str(self.work), "kubelet", "--node", node, inside=False)

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

    def pod(
        self,
        node: str,
        namespace: str,
        name: str,
        ports: list[str],
        app: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """A sandbox for the pod, attached through the plugin, serving its name on `ports` (PORT/PROTOCOL),
        or running the lab app `app` (`isthmus.lab.apps`) with `env`; its netns. Its processes go with it
        (`unpod`, `destroy`)."""
        sandbox = self.sandbox(namespace, name)
        ip("netns", "add", sandbox)
        try:
            self.cni(
                node, "ADD", sandbox, f"/run/netns/{sandbox}", K8S_POD_NAMESPACE=namespace, K8S_POD_NAME=name
            )
        except Exception:
            ip("netns", "del", sandbox, check=False)
            raise
        if app:
            program = [sys.executable, "-m", "isthmus.lab.apps", *app]
        else:
            program = [sys.executable, "-m", "isthmus.lab.server", f"{namespace}/{name}", *ports]
        with (self.work / f"{sandbox}.log").open("ab") as log:
            subprocess.Popen(
                ["ip", "netns", "exec", sandbox, *program],
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        return sandbox

    def host_pod(self, node: str, namespace: str, name: str, ports: list[str]) -> None:
        """A host-network pod: its server in the node's namespace, on the node's address, serving its name
        on `ports`; its PID kept in a file for `unhost_pod` (and `destroy` ends it with the node)."""
        program = [sys.executable, "-m", "isthmus.lab.server", f"{namespace}/{name}", *ports]
        with self.log("hostpods", node).open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.node_netns(node), *program], stdout=log, stderr=log
            )
        self._host_pid(namespace, name).write_text(str(process.pid))

    def unhost_pod(self, namespace: str, name: str) -> None:
        """End a host-network pod's server; nothing left is not an error."""
        pidfile = self._host_pid(namespace, name)
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text())
            pidfile.unlink()
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)

    def _host_pid(self, namespace: str, name: str) -> Path:
        return self.work / f"hostpod-{namespace}-{name}.pid"

    def unpod(self, node: str, namespace: str, name: str) -> None:
        """Detach the pod (CNI DEL), end its processes, remove its sandbox; nothing left is not an error."""
        sandbox = self.sandbox(namespace, name)
        self.cni(
            node, "DEL", sandbox, f"/run/netns/{sandbox}", K8S_POD_NAMESPACE=namespace, K8S_POD_NAME=name
        )
        remove_netns(sandbox)
        shutil.rmtree(self.disk(sandbox), ignore_errors=True)

    def save(self) -> None:
        saved = {
            "prefix": self.prefix,
            "nodes": self.nodes,
            "processes": self.processes,
            "router": self.router,
            "outside": self.outside,
            "clusters": self.clusters,
        }
        (self.work / "fabric.json").write_text(json.dumps(saved))

    def namespaces(self) -> list[str]:
        """The lab's network namespaces that exist."""
        listed = (line.split(" ")[0] for line in ip("netns", "list").stdout.splitlines())
        return sorted(n for n in listed if n.startswith(self.prefix))

    def destroy(self) -> None:
        """Every process and namespace of the lab, also those of a lab that crashed: the processes it
        recorded, then every process in a namespace named with its prefix, then the namespaces."""
        saved = self.work / "fabric.json"
        if saved.exists():
            self.processes.update(json.loads(saved.read_text()).get("processes", {}))
        for what in list(self.processes):
            self.stop(what)
        for netns in self.namespaces():
            remove_netns(netns)
            shutil.rmtree(self.disk(netns), ignore_errors=True)


def _plug(netns: str, address: str, into: str, port: str, gateway: str | None = None) -> None:
    """A new namespace `netns` whose eth0, at `address` (CIDR), is the peer of `port` in `into`, with a
    default route via `gateway` when given; both ends up."""
    ip("netns", "add", netns)
    ip("-n", into, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("-n", into, "link", "set", port, "up")
    ip("-n", netns, "addr", "add", address, "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")
    if gateway:
        ip("-n", netns, "route", "add", "default", "via", gateway)


def remove_netns(netns: str) -> None:
    """End every process in `netns` (by PID: TERM, then KILL after 2 s), then remove it."""
    pids = [int(p) for p in ip("netns", "pids", netns, check=False).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if running(p)]
            time.sleep(0.02)
    ip("netns", "del", netns, check=False)
