"""The agent's side of the CNI plugin: a root-only Unix socket, one JSON request per connection. The
attachments it made are kept in a file, so DEL, CHECK and GC work after an agent restart."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from isthmus.agent.node import Agent
from isthmus.dataplane.kernel import netlink
from isthmus.dataplane.kernel.plan import Veth, veth_name
from isthmus.dataplane.kernel.ruleset import GATEWAY, GATEWAY6
from isthmus.files import replace_text
from isthmus.model import Endpoint

BROKEN = 100  # plugin-specific CNI code: an attachment could not be made, or is no longer whole


class Refused(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


class Attachments:
    """(container, ifname) -> what ADD made; written whole on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        replace_text(self.path, json.dumps(self.held, indent=1))


class Service:
    """Answers ADD, DEL, CHECK, GC and STATUS for the plugin."""

    def __init__(self, agent: Agent, state: Path, wait: float = 10.0) -> None:
        self.agent, self.wait = agent, wait
        self.attachments = Attachments(state / "attachments.json")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        commands = {
            "ADD": self.add,
            "DEL": self.remove,
            "CHECK": self.check,
            "GC": self.gc,
            "STATUS": self.status,
            "AGENT": self.report,
            "FLOWS": self.flows,
        }
        try:
            command = commands.get(request.get("command", ""))
            if command is None:
                raise Refused(4, f"unknown command {request.get('command')!r}")
            return {"result": command(request)}
        except Refused as exc:
            return {"error": {"code": exc.code, "msg": exc.msg}}
        except Exception as exc:
            return {"error": {"code": 999, "msg": f"{type(exc).__name__}: {exc}"}}

    def add(self, request: dict[str, Any]) -> dict[str, Any]:
        args, config = request["args"], request["config"]
        name = args.get("K8S_POD_NAME") or config.get("endpoint")
        namespace = args.get("K8S_POD_NAMESPACE") or config.get("namespace", "default")
        if not name:
            raise Refused(7, "no endpoint named: CNI_ARGS K8S_POD_NAME or config 'endpoint' is required")
        veth = self._scheduled(namespace, name)
        host = veth_name(veth.endpoint)
        with self.agent.lock:
            try:
                made = self.agent.driver.attach(veth, host, request["netns"], request["ifname"])
            except (netlink.AttachError, OSError) as exc:
                raise Refused(BROKEN, f"cannot attach {veth.endpoint} in {request['netns']}: {exc}") from None
            for superseded in [k for k, v in self.attachments.held.items() if v["host"] == host]:
                del self.attachments.held[superseded]  # attach replaced its veth: its DEL must not undo ours
            self.attachments.held[_id(request)] = {
                "endpoint": veth.endpoint,
                "host": host,
                "netns": request["netns"],
                "network": request["config"].get("name", ""),
            }
            self.attachments.save()
            self.agent.reconcile()
        stuck = {k: v for k, v in self.agent.problems.items() if host in k}
        if stuck:
            raise Refused(11, f"{veth.endpoint}: attached but not programmed: {stuck}")
        interfaces = [made["host"], made["sandbox"] | {"sandbox": request["netns"]}]
        gateways = {4: ("0.0.0.0/0", GATEWAY), 6: ("::/0", GATEWAY6)}
        addresses = [ipaddress.ip_address(a) for a in veth.addresses]
        return {
            "interfaces": interfaces,
            "ips": [
                {"address": f"{a}/{a.max_prefixlen}", "gateway": gateways[a.version][1], "interface": 1}
                for a in addresses
            ],
            "routes": [
                {"dst": gateways[v][0], "gw": gateways[v][1]} for v in sorted({a.version for a in addresses})
            ],
            "dns": {},
        }

    def _scheduled(self, namespace: str, name: str) -> Veth:
        """The endpoint's attachment on this node. An endpoint the ledger places on another node is
        refused at once, as is one not known here while the store cannot be reached; one not (yet) known
        here is waited for, since the runtime may call ADD before the ledger's change reaches this agent.
        An endpoint known here attaches from the agent's state even while the store is away."""
        deadline = time.monotonic() + self.wait
        while (veth := self.agent.endpoint(namespace, name)) is None:
            with self.agent.lock:
                found = self.agent.compiler.objects["Endpoint"].get((namespace, name))
            elsewhere = found.spec.node if isinstance(found, Endpoint) else None
            if elsewhere and elsewhere != self.agent.node:
                raise Refused(11, f"endpoint {namespace}/{name} is on {elsewhere}, not {self.agent.node}")
            if problem := self.agent.store_problem:
                raise Refused(11, f"endpoint {namespace}/{name} is not known here: {problem}")
            if time.monotonic() > deadline:
                raise Refused(11, f"endpoint {namespace}/{name} is not scheduled to {self.agent.node} yet")
            time.sleep(0.05)
        return veth

    def _forget(self, key: str) -> None:
        held = self.attachments.held.pop(key, None)
        if held is not None:
            with self.agent.lock:
                self.agent.driver.detach(held["host"])
            self.attachments.save()

    def remove(self, request: dict[str, Any]) -> None:
        self._forget(_id(request))

    def check(self, request: dict[str, Any]) -> None:
        held = self.attachments.held.get(_id(request))
        if held is None:
            raise Refused(3, f"container {request['containerID']} ({request['ifname']}) is not attached here")
        with self.agent.lock:
            problems = netlink.attached(
                self.agent.driver.ipr, held["host"], request["netns"], request["ifname"]
            )
        if problems:
            raise Refused(BROKEN, f"attachment of {held['endpoint']} is broken: {'; '.join(problems)}")

    def gc(self, request: dict[str, Any]) -> None:
        """Forget the attachments of this network (the config's name) that the runtime does not list."""
        network = request["config"].get("name", "")
        valid = {
            f"{a['containerID']}/{a['ifname']}"
            for a in request["config"].get("cni.dev/valid-attachments", [])
        }
        for key, held in list(self.attachments.held.items()):
            if key not in valid and held.get("network", network) == network:
                self._forget(key)

    def report(self, request: dict[str, Any]) -> dict[str, Any]:
        """Not CNI: the agent's status and metrics, for `isthmus lab status`."""
        return self.agent.status() | {"metrics": self.agent.metrics_text()}

    def flows(self, request: dict[str, Any]) -> dict[str, Any]:
        """Not CNI: the node's flow records after sequence number `since`."""
        if self.agent.recorder is None:
            raise Refused(51, f"node {self.agent.node} keeps no flow records")
        return self.agent.recorder.since(int(request.get("since", 0)))

    def status(self, request: dict[str, Any]) -> None:
        if not self.agent.driver.current:
            raise Refused(50, "the agent has not programmed its node yet")


def _id(request: dict[str, Any]) -> str:
    return f"{request['containerID']}/{request['ifname']}"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(service: Service, path: Path) -> Server:
    """Listen on `path` (mode 0600, in a 0700 directory) in a background thread."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.read() or b"{}")
            self.wfile.write(json.dumps(service.handle(request)).encode())

    old = os.umask(0o177)
    try:
        server = Server(str(path), Handler)
    finally:
        os.umask(old)
    threading.Thread(target=server.serve_forever, name="cni", daemon=True).start()
    return server


def ask(path: Path, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request to an agent's socket (the CNI plugin's protocol); its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(json.dumps(request).encode())
        conn.shutdown(socket.SHUT_WR)
        answer: dict[str, Any] = json.loads(b"".join(iter(lambda: conn.recv(65536), b"")))
    return answer
