"""Benchmarks of the kernel dataplane on a real lab (lab/fabric.py: two node namespaces on a switch, the
real agent in each, pods attached through the real CNI plugin), in a dual-stack cluster: TCP throughput
across nodes over VXLAN in each family and through a node's routing, against a bare veth pair; connect
latency to a service VIP of each family with 10 and 10,000 dual-stack services programmed; CNI ADD to a
reachable pod. Needs root, nftables and iperf3 (scripts/bootstrap).
Everything made is named with the lab's prefix (isd<hex>-) and removed at the end, also on failure."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import Figures, Goal, benchmark
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler, reconcile
from isthmus.lab.fabric import Fabric, ip, netns_exec
from isthmus.model import Endpoint, Resource, ServiceVIP, lookup_kind, parse_object
from isthmus.store import objects, open_ledger

R = TypeVar("R", bound=Resource)
NODES = {"node-1": "192.168.77.10", "node-2": "192.168.77.11"}  # underlay addresses
NAMESPACE = "bench"
IPERF_SECONDS, IPERF_OMIT, ROUNDS = 2, 1, 3
SERVICES, FEW = 10_000, 10
CONNECTS, WARMUP, BATCH = 20_000, 200, 100
PODS = 50
DUAL = KubeConfig.model_validate(
    {
        "podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"],
        "serviceCidrs": ["10.254.0.0/16", "fd00:10:254::/112"],
        "externalPools": ["203.0.113.0/24", "2001:db8:113::/64"],
    }
)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _node(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "isthmus.io/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"address": address},
    }


def _pod(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"pod": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _service(name: str, port: int, target: int, pod: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"pod": pod},
            "ports": [{"port": port, "targetPort": target}],
            "ipFamilyPolicy": "PreferDualStack",
        },
    }


NAMESPACE_DOC = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def _apply(state: Path, docs: list[dict[str, Any]]) -> None:
    """Into the lab's ledger as `isthmus apply -f` does: Kubernetes objects through the reconciler."""
    ledger = open_ledger(state)
    try:
        reconcile(ledger, KubeConfig(), [parse_object(d) for d in docs])
    finally:
        ledger.close()


def _admitted(fabric: Fabric, model: type[R], name: str) -> R:
    """An object of the bench namespace as admitted into the lab's ledger (its addresses, its VIP)."""
    ledger = open_ledger(fabric.state)
    try:
        found = objects.list_one(ledger, lookup_kind(model.KIND), NAMESPACE, name)
    finally:
        ledger.close()
    if not isinstance(found, model):
        raise LookupError(f"{model.KIND} {NAMESPACE}/{name} is not in the ledger")
    return found


@contextlib.contextmanager
def _lab(docs: list[dict[str, Any]]) -> Iterator[Fabric]:
    """A lab of both nodes with `docs` in its ledger and the agents running; destroyed on the way out."""
    with tempfile.TemporaryDirectory(prefix="isd-") as tmp:
        fabric = Fabric(f"isd{secrets.token_hex(3)}-", Path(tmp) / "state", Path(tmp) / "lab")
        try:
            _apply(fabric.state, [_node(n, a) for n, a in NODES.items()])
            ledger = open_ledger(fabric.state)
            try:
                Reconciler(ledger, KubeConfig()).configure(DUAL)
            finally:
                ledger.close()
            _apply(fabric.state, docs)
            fabric.build(NODES)
            for node in NODES:
                fabric.start_agent(node)
            yield fabric
        finally:
            fabric.destroy()


def _spawn(fabric: Fabric, what: str, netns: str, *argv: str) -> None:
    """A process in `netns`, held by the fabric so that destroy() ends it."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    fabric.processes[what] = process.pid
    fabric.save()


def _enter(netns: str) -> None:
    """Move the calling thread (namespaces are per thread) into the named network namespace."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


def _thread(netns: str) -> ThreadPoolExecutor:
    """A worker thread of this process inside `netns`: the sockets it makes live there."""
    return ThreadPoolExecutor(1, initializer=_enter, initargs=(netns,))


def _listening(netns: str, port: int) -> bool:
    return bool(netns_exec(netns, "ss", "-Hltn", f"sport = :{port}").stdout.strip())


def _wait(what: str, done: Callable[[], bool], seconds: float = 120, every: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds} s")
        time.sleep(every)


def _percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value that `share` of the values do not exceed."""
    return sorted(values)[math.ceil(share * len(values)) - 1]


def _veth_pair(fabric: Fabric) -> tuple[str, str]:
    """Two namespaces joined by a bare veth pair (10.99.0.1 and .2/30, default MTU, nothing else)."""
    a, b = f"{fabric.prefix}raw-a", f"{fabric.prefix}raw-b"
    ip("netns", "add", a)
    ip("netns", "add", b)
    ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
    for netns, address in ((a, "10.99.0.1/30"), (b, "10.99.0.2/30")):
        ip("-n", netns, "addr", "add", address, "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
    return a, b


def _gbps(client: str, server: str) -> float:
    """One single-stream TCP run of iperf3 from the namespace `client` to `server`: received Gbit/s."""
    done = netns_exec(client, "iperf3", "-c", server, "-t", str(IPERF_SECONDS), "-O", str(IPERF_OMIT), "-J")
    report = json.loads(done.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3 from {client} to {server}: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


@benchmark(
    "dataplane-throughput",
    units={
        "veth_gbps": "Gbit/s",
        "same_node_gbps": "Gbit/s",
        "vxlan_gbps": "Gbit/s",
        "vxlan6_gbps": "Gbit/s",
    },
    ratios={
        "vxlan_vs_veth": ("vxlan_gbps", "veth_gbps"),
        "same_node_vs_veth": ("same_node_gbps", "veth_gbps"),
        "vxlan6_vs_vxlan": ("vxlan6_gbps", "vxlan_gbps"),
    },
    goals=(
        Goal("vxlan_vs_veth", ">=", 0.6),
        Goal("same_node_vs_veth", ">=", 0.9),
        Goal("vxlan6_vs_vxlan", ">=", 0.95),
    ),
)
def throughput() -> Figures:
    """Single-stream TCP (iperf3, 2 s after 1 s omitted) from a pod on node-1 to a pod on node-2 over
    VXLAN in IPv4 and in IPv6 (vxlan6: the same pods, their IPv6 addresses), to a pod on node-1 through the
    node's routing (routed veths, nftables, conntrack), and over a bare veth pair between two namespaces:
    three rounds of the four, interleaved (in turned order) so that the machine's other load touches each
    alike; each figure is its median over the rounds."""
    if not shutil.which("iperf3"):
        raise RuntimeError("iperf3 is missing: scripts/bootstrap installs it")
    docs = [NAMESPACE_DOC, _pod("client", "node-1"), _pod("local", "node-1"), _pod("remote", "node-2")]
    with _lab(docs) as fabric:
        raw_client, raw_server = _veth_pair(fabric)
        client = fabric.pod("node-1", NAMESPACE, "client", [])
        paths = {  # name -> (the client's namespace, the server's, the server's address)
            "veth": (raw_client, raw_server, "10.99.0.2"),
            "same_node": (
                client,
                fabric.pod("node-1", NAMESPACE, "local", []),
                str(_admitted(fabric, Endpoint, "local").spec.addresses[0]),
            ),
            "vxlan": (
                client,
                fabric.pod("node-2", NAMESPACE, "remote", []),
                str(_admitted(fabric, Endpoint, "remote").spec.addresses[0]),
            ),
        }
        paths["vxlan6"] = (
            client,
            paths["vxlan"][1],
            str(_admitted(fabric, Endpoint, "remote").spec.addresses[1]),
        )
        for name, (_, server, _) in paths.items():
            if name != "vxlan6":  # the vxlan server answers both families
                _spawn(fabric, f"iperf3/{name}", server, "iperf3", "-s")
        for _, server, _ in paths.values():
            _wait(f"iperf3 in {server}", functools.partial(_listening, server, 5201), 10)
        rounds = [  # the order turns round by round, so that no path always follows the same one
            {n: _gbps(*paths[n][::2]) for n in (list(paths) if i % 2 else list(paths)[::-1])}
            for i in range(ROUNDS)
        ]
        return {f"{name}_gbps": statistics.median(r[name] for r in rounds) for name in paths}


def _programmed(fabric: Fabric, count: int) -> bool:
    """Whether every node's nftables maps of service ports (VIP . protocol . port : chain), of each family,
    hold `count`."""
    for node in NODES:
        for name in ("services", "services6"):
            done = netns_exec(fabric.node_netns(node), "nft", "-j", "list", "map", "inet", "isthmus", name)
            listed = json.loads(done.stdout)["nftables"] if done.returncode == 0 else []
            if sum(len(item["map"].get("elem", [])) for item in listed if "map" in item) != count:
                return False
    return True


def _sockets(count: int, family: socket.AddressFamily) -> list[socket.socket]:
    """`count` TCP sockets of `family`, made in the calling thread's network namespace."""
    return [socket.socket(family) for _ in range(count)]


def _connect(conn: socket.socket, address: str, port: int) -> float:
    """Microseconds `conn` takes to connect to address:port; closed after."""
    with conn:
        conn.settimeout(2)
        started = time.perf_counter()
        conn.connect((address, port))
        return (time.perf_counter() - started) * 1e6


@benchmark(
    "service-latency",
    units={
        **{
            f"{label}{six}_{m}_us": "us"
            for label in ("few", "many")
            for six in ("", "6")
            for m in ("median", "p99")
        },
        "program_many_s": "s",
    },
    ratios={
        f"{m}_many_vs_few{six}": (f"many{six}_{m}_us", f"few{six}_{m}_us")
        for six in ("", "6")
        for m in ("median", "p99")
    },
    goals=tuple(Goal(f"{m}_many_vs_few{six}", "<=", 1.1) for six in ("", "6") for m in ("median", "p99")),
)
def service_latency() -> Figures:
    """TCP connect latency from a pod on node-1 to a service VIP whose backend is a pod on node-2, in two
    dual-stack labs side by side: one with 10 Kubernetes services (few), one with 10,000 (many: each
    PreferDualStack, so a VIP of each family, a DNAT chain per family and its own target port; the 9,990
    added through the reconciler to the running agents, checked by the size of each node's nftables
    service maps of both families; program_many_s is from their commit to every map holding 10,000).
    20,000 connects per lab and family (the IPv6 figures are named with a 6) after 200 untimed, one at a
    time, alternating between the labs and families connect by connect, so that the machine's other load
    touches all alike."""
    target = _service("target", 8080, 80, "server")
    others = [_service(f"other-{i:05d}", 80, 1024 + i, "server") for i in range(SERVICES - 1)]
    docs = [NAMESPACE_DOC, _pod("client", "node-1"), _pod("server", "node-2"), target, *others[: FEW - 1]]
    with _lab(docs) as few, _lab(docs) as many:
        clients: dict[str, str] = {}
        vips: dict[str, str] = {}
        for label, fabric in (("few", few), ("many", many)):
            clients[label] = fabric.pod("node-1", NAMESPACE, "client", [])
            server = fabric.pod("node-2", NAMESPACE, "server", ["80/TCP"])
            four, six = _admitted(fabric, ServiceVIP, "target").spec.vips
            vips[label], vips[f"{label}6"] = str(four), str(six)
            _wait("the pod server", functools.partial(_listening, server, 80), 10)
        _wait(f"{FEW} services programmed", functools.partial(_programmed, few, FEW), every=0.5)
        _apply(many.state, others[FEW - 1 :])
        applied = time.perf_counter()
        _wait(f"{SERVICES} services programmed", functools.partial(_programmed, many, SERVICES), every=0.5)
        programmed = time.perf_counter() - applied
        took: dict[str, list[float]] = {label: [] for label in vips}
        families = {"": socket.AF_INET, "6": socket.AF_INET6}
        with _thread(clients["few"]) as in_few, _thread(clients["many"]) as in_many:
            threads = {"few": in_few, "many": in_many}
            for _ in range((WARMUP + CONNECTS) // BATCH):
                made = {
                    f"{label}{six}": threads[label].submit(_sockets, BATCH, family).result()
                    for label in threads
                    for six, family in families.items()
                }
                for i in range(BATCH):
                    order = ["few", "many", "few6", "many6"]
                    for label in order if i % 2 else order[::-1]:
                        took[label].append(_connect(made[label][i], vips[label], 8080))
    figures = {"program_many_s": programmed}
    for label, values in took.items():
        figures[f"{label}_median_us"] = statistics.median(values[WARMUP:])
        figures[f"{label}_p99_us"] = _percentile(values[WARMUP:], 0.99)
    return figures


def _agent_knows(fabric: Fabric, node: str, endpoint: str) -> bool:
    """Whether the node's agent has compiled `endpoint` (its report over the plugin's socket, the
    AGENT request `isthmus lab status` uses)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(fabric.socket(node)))
        conn.sendall(json.dumps({"command": "AGENT"}).encode())
        conn.shutdown(socket.SHUT_WR)
        answer = json.loads(b"".join(iter(lambda: conn.recv(65536), b"")))
    return endpoint in answer["result"]["endpoints"]


def _listen() -> socket.socket:
    """A socket listening on port 80 (the kernel completes handshakes without accept())."""
    server = socket.socket()
    server.bind(("0.0.0.0", 80))
    server.listen(16)
    return server


def _reach(address: str, port: int, deadline: float) -> float:
    """perf_counter() at the first TCP connect to address:port that succeeds; attempts of 10 ms."""
    while True:
        with socket.socket() as conn:
            conn.settimeout(0.01)
            try:
                conn.connect((address, port))
                return time.perf_counter()
            except OSError:
                if time.perf_counter() > deadline:
                    raise
        time.sleep(0.001)


@benchmark(
    "cni-ready",
    units={"add_p50_ms": "ms", "add_p99_ms": "ms", "ready_p50_ms": "ms", "ready_p99_ms": "ms"},
    goals=(Goal("ready_p99_ms", "<", 100),),
)
def cni_ready() -> Figures:
    """50 pods, alternately on node-1 and node-2, each in turn: the pod into the ledger and compiled by
    its node's agent (not timed), its sandbox made with a socket listening on port 80 in it, then from
    invoking the CNI plugin ADD as a runtime does (Fabric.cni) to the plugin's answer (add) and to the
    first TCP connection to the new pod that succeeds from a pod on node-1 (ready; attempts of 10 ms
    from the moment ADD returned); p99 of 50 is the slowest."""
    docs = [NAMESPACE_DOC, _pod("prober", "node-1")]
    with _lab(docs) as fabric:
        prober = fabric.pod("node-1", NAMESPACE, "prober", [])
        added: list[float] = []
        ready: list[float] = []
        with _thread(prober) as probe, contextlib.ExitStack() as listeners:
            for i in range(PODS):
                name, node = f"pod-{i:02d}", list(NODES)[i % len(NODES)]
                _apply(fabric.state, [_pod(name, node)])
                _wait(
                    f"{name} on {node}", functools.partial(_agent_knows, fabric, node, f"{NAMESPACE}/{name}")
                )
                sandbox = fabric.sandbox(NAMESPACE, name)
                ip("netns", "add", sandbox)
                with _thread(sandbox) as inside:
                    listeners.enter_context(inside.submit(_listen).result())
                started = time.perf_counter()
                result = fabric.cni(
                    node,
                    "ADD",
                    sandbox,
                    f"/run/netns/{sandbox}",
                    K8S_POD_NAMESPACE=NAMESPACE,
                    K8S_POD_NAME=name,
                )
                returned = time.perf_counter()
                address = result["ips"][0]["address"].split("/")[0]
                reached = probe.submit(_reach, address, 80, returned + 10).result()
                added.append((returned - started) * 1000)
                ready.append((reached - started) * 1000)
    return {
        "add_p50_ms": statistics.median(added),
        "add_p99_ms": _percentile(added, 0.99),
        "ready_p50_ms": statistics.median(ready),
        "ready_p99_ms": _percentile(ready, 0.99),
    }
