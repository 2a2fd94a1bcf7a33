"""A real Kubernetes control plane for tests (scripts/kube-testenv), the parts of a node it lacks, the
manager as a real process, and a TCP proxy that can cut the manager off the API server.

The testenv has no scheduler and no kubelet: `NodeStandIn` plays their roles for networking only (binds
pods to nodes; confirms the deletion of terminating pods, as a kubelet does once containers stop).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client, config, utils

ROOT = Path(__file__).parents[2]
ISTHMUS = ROOT / ".venv" / "bin" / "isthmus"
TESTENV = ROOT / "scripts" / "kube-testenv"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 45.0, what: str = "") -> T:
    """The first truthy result of `check`, polled until `timeout` (AssertionError then)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, IndexError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what or check.__name__}: not so after {timeout} s (last: {last!r})")


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        env = dict(line.split("=", 1) for line in (directory / "env").read_text().split())
        self.kubeconfig = Path(env["KUBECONFIG"])
        self.etcd = env["ETCD_ENDPOINT"]
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def create(self, namespace: str, *paths: Path) -> None:
        for path in paths:
            utils.create_from_yaml(self.api, str(path), namespace=namespace)

    def namespace(self, name: str, isolation: str | None = None) -> None:
        annotations = {"isthmus.io/isolation": isolation} if isolation else {}
        self.core.create_namespace({"metadata": {"name": name, "annotations": annotations}})

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision; the revision."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        status = subprocess.run(
            ["etcdctl", f"--endpoints={self.etcd}", "endpoint", "status", "-w", "json"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        revision = int(json.loads(status.stdout)[0]["Status"]["header"]["revision"])
        subprocess.run(
            ["etcdctl", f"--endpoints={self.etcd}", "compact", str(revision)],
            check=True,
            capture_output=True,
            env=env,
        )
        return revision

    def restart_apiserver(self) -> None:
        """A new kube-apiserver process on the same port and etcd, its watch cache started afresh."""
        subprocess.run(
            [str(TESTENV), "restart-apiserver", str(self.directory)], check=True, capture_output=True
        )

    def kubeconfig_via(self, port: int, path: Path) -> Path:
        """A copy of the kubeconfig that reaches the API server through 127.0.0.1:`port`."""
        data = yaml.safe_load(self.kubeconfig.read_text())
        for entry in data["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(data))
        return path

    def api_port(self) -> int:
        data = yaml.safe_load(self.kubeconfig.read_text())
        return int(data["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1])


class NodeStandIn:
    """Two nodes, and the scheduler's and kubelet's networking roles, every 0.2 s until stopped."""

    NODES = {"node-a": "192.0.2.11", "node-b": "192.0.2.12"}

    def __init__(self, cluster: Cluster) -> None:
        self.core = cluster.core
        self.stop = threading.Event()
        for name, address in self.NODES.items():
            self.core.create_node(
                {
                    "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": address}]},
                }
            )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        names = sorted(self.NODES)
        turn = 0
        while not self.stop.wait(0.2):
            try:
                for pod in self.core.list_pod_for_all_namespaces().items:
                    meta = pod.metadata
                    if meta.deletion_timestamp is not None:
                        self.core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0)
                    elif not pod.spec.node_name:
                        turn += 1
                        binding = {
                            "target": {"kind": "Node", "name": names[turn % len(names)]},
                            "metadata": {"name": meta.name},
                        }
                        self.core.create_namespaced_binding(meta.namespace, binding, _preload_content=False)
            except (client.exceptions.ApiException, urllib3.exceptions.HTTPError):
                continue  # gone or bound meanwhile, or the API server restarting: the next round sees it

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class Manager:
    """`isthmus kube watch` as a process of its own."""

    def __init__(
        self, state: Path, kubeconfig: Path, store: str | None = None, replica: str = "", metrics: str = ""
    ) -> None:
        """On the ledger of `state`, or of `store` (a URL) as the replica `replica` of the election;
        serving its metrics on `metrics` (HOST:PORT) when given."""
        self.state = state
        self.log = (state.parent / f"{state.name}.log").open("ab")
        where = ["--store", store] if store else []
        named = ["--replica", replica] if replica else []
        named += ["--metrics", metrics] if metrics else []
        self.process = subprocess.Popen(
            [
                *(str(ISTHMUS), "--state", str(state), *where, "kube", "watch"),
                *("--kubeconfig", str(kubeconfig), "--resync", "120", *named),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """What the manager has logged so far."""
        self.log.flush()
        return (self.state.parent / f"{self.state.name}.log").read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self) -> int:
        """SIGTERM; the exit code (0 for a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.log.close()
        return code


class Proxy:
    """A TCP proxy on 127.0.0.1 to `port`; `cut()` drops every connection and refuses new ones until
    `mend()`: a network partition between a client and the API server."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _shut(s)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for s in self.sockets:
                _shut(s)
                s.close()
            self.sockets.clear()

    def mend(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
