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
from isthmus.files import replace_text
from isthmus.lab.router import Bird
from isthmus.lab.topology import OUTSIDE, OUTSIDE6, OUTSIDE6_CLIENT, Speaker
from isthmus.store import Credentials, LedgerError, open_store
from isthmus.store.etcd_member import MemberTLS, member_argv
from isthmus.store.location import STORE_FILE

PLUGIN = "isthmus"  # the CNI plugin's executable name, in the lab's CNI_PATH
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"  # the deployment scripts docs/deploy.md uses


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
    stores: dict[str, dict[str, str]] = field(default_factory=dict)  # cluster -> etcd member -> address

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

    def speaker_netns(self, name: str) -> str:
        return f"{self.prefix}fed-{name}"

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
            stores=saved.get("stores", {}),
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

    def add_ipv6(self, addresses: dict[str, str], prefixlen: int) -> None:
        """IPv6 on the underlay: each node (by name) and the router (`router`) at its address, the nodes'
        IPv6 default route via the router's; the outside client, when there is one, on OUTSIDE6 behind it.
        Addresses skip duplicate address detection (every one is planned)."""
        router = addresses.get("router")
        for node in self.nodes:
            ip(
                "-n",
                self.node_netns(node),
                "addr",
                "add",
                f"{addresses[node]}/{prefixlen}",
                "dev",
                "eth0",
                "nodad",
            )
            if router:
                ip("-n", self.node_netns(node), "-6", "route", "add", "default", "via", router)
        if router is None:
            return
        ip("-n", self.router_netns, "addr", "add", f"{router}/{prefixlen}", "dev", "eth0", "nodad")
        sysctl = ("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.fib_multipath_hash_policy=1")
        done = netns_exec(self.router_netns, *sysctl)
        if done.returncode != 0:
            raise RuntimeError(f"router: {' '.join(sysctl)}: {done.stderr.strip()}")
        if self.outside:
            ip("-n", self.router_netns, "addr", "add", str(OUTSIDE6), "dev", "outside", "nodad")
            client = f"{OUTSIDE6_CLIENT}/{OUTSIDE6.network.prefixlen}"
            ip("-n", self.outside_netns, "addr", "add", client, "dev", "eth0", "nodad")
            ip("-n", self.outside_netns, "-6", "route", "add", "default", "via", str(OUTSIDE6.ip))

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

    def start_speaker(self, name: str, speaker: Speaker, prefixlen: int, peers: list[str]) -> None:
        """A federation speaker (`isthmus federation run`, replica `name`) of its cluster, in a namespace of
        its own on the switch at its address, peering with `peers` (ADDRESS:ASN)."""
        netns = self.speaker_netns(name)
        self._switch_port(netns, f"fed-{name}"[:15], f"{speaker.address}/{prefixlen}")
        cluster, work = speaker.cluster, self.work / f"federation-{name}"
        argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(self.state_of(cluster))]
        store = self.store_url(cluster, "federation")
        argv += ["--store", store] if store else []
        argv += ["federation", "run", "--address", speaker.address, "--asn", str(speaker.asn)]
        argv += ["--work", str(work), "--replica", name, *(f"--peer={peer}" for peer in peers)]
        self._spawn(f"federation/{name}", netns, argv, self.work / f"federation-{name}.log")

    @staticmethod
    def member_name(cluster: str, index: int) -> str:
        """An etcd member of a cluster: etcd-I for the main one's, etcd-CLUSTER-I for another's (I from 1)."""
        return f"etcd-{cluster}-{index}" if cluster else f"etcd-{index}"

    def pki(self, cluster: str) -> Path:
        """A cluster's certificates and etcd passwords (deploy/isthmus-pki's directory)."""
        return self.work / f"pki-{cluster or 'main'}"

    def member_socket(self, member: str) -> Path:
        """The member's unix socket: how the machine's own commands reach the store, linking no namespace."""
        return self.work / member / "client:2379"

    def store_url(self, cluster: str, user: str, unix: bool = False) -> str | None:
        """The URL of a cluster's store for the identity `user`: over the underlay with TLS, or (`unix`)
        over the members' sockets; None for a cluster whose ledger is a SQLite file."""
        members = self.stores.get(cluster)
        if not members:
            return None
        pki = self.pki(cluster)
        secret = f"user={user}&password-file={pki / user}.password"
        if unix:
            return "etcd+unix://" + ",".join(str(self.member_socket(m)) for m in members) + "?" + secret
        tls = f"ca={pki}/ca.crt&cert={pki / user}.crt&key={pki / user}.key"
        return "etcd://" + ",".join(f"{a}:2379" for a in members.values()) + f"?{tls}&{secret}"

    def start_store(self, cluster: str, addresses: list[str], prefixlen: int, nodes: list[str]) -> None:
        """The cluster's etcd members, each in a namespace of its own on the switch, with TLS between all
        and etcd's roles (deploy/isthmus-pki and deploy/isthmus-etcd-roles, as docs/deploy.md does); the
        cluster's state directory then leads the machine's commands to it over the members' sockets."""
        pki = self.pki(cluster)
        members = {self.member_name(cluster, i + 1): a for i, a in enumerate(addresses)}
        _deploy("isthmus-pki", str(pki), "ca")
        for member, address in members.items():
            _deploy("isthmus-pki", str(pki), "member", member, address)
        for user in ("root", "admin", "kubelet", "federation", *(f"agent-{n}" for n in nodes)):
            _deploy("isthmus-pki", str(pki), "client", user)
        self.stores[cluster] = members
        for member, address in members.items():
            (self.work / member).mkdir(exist_ok=True)
            port = f"e{len(self.stores)}{member.rsplit('-', 1)[1]}"
            self._switch_port(self.prefix + member, port, f"{address}/{prefixlen}")
            self.start_member(cluster, member)
        self._healthy(cluster)
        first = next(iter(members))
        roles = [str(pki), "writer", "admin", "kubelet", "federation", "node", *nodes]
        _deploy("isthmus-etcd-roles", f"https://{members[first]}:2379", *roles, netns=self.prefix + first)
        state = self.state_of(cluster)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state / STORE_FILE).write_text(f"{self.store_url(cluster, 'admin', unix=True)}\n")
        self.save()

    def start_member(self, cluster: str, member: str) -> None:
        """One etcd member of the cluster, in its namespace; again after a crash, from its data."""
        members, pki, directory = self.stores[cluster], self.pki(cluster), self.work / member
        peers = {m: f"https://{a}:2380" for m, a in members.items()}
        tls = MemberTLS(pki / "ca.crt", pki / f"{member}.crt", pki / f"{member}.key")
        urls = [f"https://{members[member]}:2379", "unix://client:2379"]
        argv = member_argv(member, directory / "data", urls, peers[member], peers, tls)
        self.member_socket(member).unlink(missing_ok=True)  # a killed member's
        self._spawn(member, self.prefix + member, argv, self.work / f"{member}.log", cwd=directory)

    def _healthy(self, cluster: str, timeout: float = 30.0) -> None:
        """Wait until the cluster's members have a leader (asked over the first member's socket)."""
        sockets = [str(self.member_socket(m)) for m in self.stores[cluster]]
        deadline = time.monotonic() + timeout
        for socket in sockets:
            while not Path(socket).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start: no {socket}")
                time.sleep(0.05)
        ledger = open_store("etcd+unix://" + ",".join(sockets), Credentials())
        try:
            while True:
                try:
                    ledger.revision()
                    return
                except LedgerError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"etcd of cluster {cluster or 'main'}: {exc}") from None
                    time.sleep(0.1)
        finally:
            ledger.close()

    def _install_plugin(self) -> None:
        binary = self.work / "cni-bin" / PLUGIN
        binary.parent.mkdir(exist_ok=True)
        binary.write_text(f"#!{sys.executable}\nfrom isthmus.cni.plugin import main\nmain()\n")
        binary.chmod(0o755)

    def log(self, what: str, node: str) -> Path:
        return self.work / f"{node}.{what}.log"

    def _start(self, what: str, node: str, *argv: str, inside: bool = True) -> subprocess.Popen[bytes]:
        """`isthmus ARGV` (in the node's namespace when `inside`), logged; recorded as WHAT/NODE. On etcd,
        as the identity agent-NODE over the underlay (`inside`) or kubelet over the members' sockets."""
        cluster = self.clusters.get(node, "")
        command = [sys.executable, "-m", "isthmus.cli.main", "--state", str(self.state_of(cluster))]
        store = self.store_url(cluster, f"agent-{node}" if inside else "kubelet", unix=not inside)
        command += ["--store", store] if store else []
        command += argv
        netns = self.node_netns(node) if inside else None
        return self._spawn(f"{what}/{node}", netns, command, self.log(what, node))

    def _spawn(
        self, what: str, netns: str | None, command: list[str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`command` (in `netns` when given), its output appended to `log`; its PID recorded as `what`."""
        if netns:
            command = ["ip", "netns", "exec", netns, *command]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out, cwd=cwd)
        self.processes[what] = process.pid
        self.save()
        return process

    def start_agent(self, node: str, *options: str) -> None:
        """The node's agent (with `options` of `isthmus agent run`), once its CNI socket answers."""
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
            *options,
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
            "stores": self.stores,
        }
        replace_text(self.work / "fabric.json", json.dumps(saved))

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


def _deploy(script: str, *argv: str, netns: str | None = None) -> None:
    """One of the deployment scripts (deploy/), as docs/deploy.md runs it; its error as a RuntimeError."""
    command = [str(DEPLOY / script), *argv]
    command = ["ip", "netns", "exec", netns, *command] if netns else command
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(argv)}: {done.stderr.strip()[-2000:]}")


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
