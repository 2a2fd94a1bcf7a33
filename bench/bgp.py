"""Benchmarks of LoadBalancer floating IPs on a 3-node lab with a BIRD gateway router and an outside client,
driven through the CLI as a user would: how soon the router holds and drops a service's floating IP, and TCP
throughput from outside to a pod through the floating IP against the same path to the node's own address.
Needs root, nftables, BIRD 2 and iperf3 (scripts/bootstrap). The lab is brought down at the end, also on
failure, and checked to have left no namespace and no process."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.dataplane import IPERF_OMIT, IPERF_SECONDS, _listening, _wait
from bench.harness import Figures, Goal, benchmark
from bench.labs import lab, run
from isthmus.lab.fabric import Fabric, netns_exec

NODES = ("node-1", "node-2", "node-3")
ROUNDS, ANNOUNCES = 3, 5
SERVICE_PORT, POD_PORT = 5201, 5202  # the lab server binds declared TCP ports; iperf3 an undeclared one
NODE_PORT = 5203  # nothing on the node listens on the service port: only DNAT to the pod can answer it


def _lab(pods: list[dict[str, Any]]) -> contextlib.AbstractContextManager[tuple[Path, Fabric]]:
    """A lab of 3 nodes, the router and the outside client with `pods` applied and settled."""
    topology = {
        "router": {"asn": 64500},
        "outside": {"address": "198.51.100.10"},
        "nodes": [{"name": n} for n in NODES],
    }
    return lab("bgp", topology, pods)


def _pod(node: str) -> dict[str, Any]:
    """An explicit pod on `node` labelled for the services; the lab's server answers on port 80."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"iperf-{node[-1]}", "labels": {"app": "iperf", "node": node}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}],
        },
    }


def _service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "selector": selector,
            "ports": [{"port": SERVICE_PORT, "targetPort": POD_PORT}],
        },
    }


def _put(work: Path, verb: str, doc: dict[str, Any]) -> None:
    """`isthmus apply|delete -f` of one manifest on the lab's ledger."""
    manifest = work.parent / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    run("--state", str(work / "state"), verb, "-f", str(manifest))


def _fip(work: Path, service: str) -> str | None:
    """The service's floating IP (status.loadBalancer), None while it has none."""
    shown = json.loads(run("--state", str(work / "state"), "get", "service", service, "-o", "json"))
    ingress = ((shown.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return str(ingress[0]["ip"]) if ingress else None


def _hops(fabric: Fabric, address: str) -> list[str]:
    """The router's kernel next hops to `address` (one for a plain route, several for multipath)."""
    shown = subprocess.run(
        ["ip", "-n", fabric.router_netns, "-j", "route", "show", address],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(h.get("gateway", "") for r in json.loads(shown or "[]") for h in (r.get("nexthops") or [r]))


def _until(what: str, done: Callable[[], bool], started: float, seconds: float = 30) -> float:
    """Seconds from `started` (perf_counter) until `done()`; polled every 10 ms."""
    while not done():
        if time.perf_counter() - started > seconds:
            raise TimeoutError(f"{what}: not within {seconds} s")
        time.sleep(0.01)
    return time.perf_counter() - started


def _cycle(work: Path, fabric: Fabric) -> tuple[float, float]:
    """One round: the service created selecting the 3 running pods, to the router's route with 3 next hops;
    its selector changed to match nothing, to the route gone from the router's kernel. Deleted after."""
    everyone = sorted(fabric.nodes.values())
    started = time.perf_counter()
    _put(work, "apply", _service("lb", {"app": "iperf"}))
    _until("the floating IP", lambda: _fip(work, "lb") is not None, started)
    fip = str(_fip(work, "lb"))
    announced = _until(f"{fip} over 3 nodes", lambda: _hops(fabric, fip) == everyone, started)
    started = time.perf_counter()
    _put(work, "apply", _service("lb", {"app": "nothing"}))
    withdrawn = _until(f"{fip} withdrawn", lambda: _hops(fabric, fip) == [], started)
    _put(work, "delete", _service("lb", {"app": "nothing"}))
    return announced, withdrawn


@contextlib.contextmanager
def _server(netns: str, port: int) -> Iterator[None]:
    """`iperf3 -s -p PORT` in `netns`, listening before the body runs, ended (by its PID) after."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, "iperf3", "-s", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"iperf3 in {netns}", functools.partial(_listening, netns, port), 10)
        yield
    finally:
        process.terminate()
        process.wait()


def _gbps(client: str, address: str, port: int) -> float:
    """One single-stream TCP run of iperf3 from the namespace `client` to address:port: received Gbit/s."""
    argv = ["-c", address, "-p", str(port), "-t", str(IPERF_SECONDS), "-O", str(IPERF_OMIT), "-J"]
    report = json.loads(netns_exec(client, "iperf3", *argv).stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3 from {client} to {address}:{port}: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


@benchmark(
    "bgp-floating-ip",
    units={
        "announce_median_s": "s",
        "announce_max_s": "s",
        "withdraw_median_s": "s",
        "withdraw_max_s": "s",
        "fip_pod_gbps": "Gbit/s",
        "node_gbps": "Gbit/s",
    },
    ratios={"fip_pod_vs_node": ("fip_pod_gbps", "node_gbps")},
    goals=(
        Goal("announce_max_s", "<", 2.0),
        Goal("withdraw_max_s", "<", 2.0),
        Goal("fip_pod_vs_node", ">=", 0.85),
    ),
)
def floating_ip() -> Figures:
    """In one 3-node lab with the BIRD router (`lab up`, pods iperf-1..3 with nodeName on each node applied
    and running): 5 rounds of a LoadBalancer service created with `isthmus apply` to its floating IP's
    route on the router with all 3 next hops (announce), then its selector changed to match nothing to
    the route gone from the router's kernel (withdraw); median and max of the 5. Then single-stream TCP
    (iperf3, 2 s after 1 s omitted) from the outside client through the router to a second service's
    floating IP, selecting iperf-1 alone (one next hop, node-1, DNAT to its pod), and to node-1's own
    address (iperf3 in the node's namespace on another port, no NAT): 3 rounds of the two interleaved,
    each figure their median."""
    if not (shutil.which("iperf3") and shutil.which("bird")):
        raise RuntimeError("iperf3 or BIRD is missing: scripts/bootstrap installs them")
    with _lab([_pod(n) for n in NODES]) as (work, fabric):
        cycles = [_cycle(work, fabric) for _ in range(ANNOUNCES)]
        announced, withdrawn = [a for a, _ in cycles], [w for _, w in cycles]
        started = time.perf_counter()
        _put(work, "apply", _service("one", {"node": "node-1"}))
        _until("the floating IP of one", lambda: _fip(work, "one") is not None, started)
        fip, node = str(_fip(work, "one")), fabric.nodes["node-1"]
        _until(f"{fip} via node-1", lambda: _hops(fabric, fip) == [node], started)
        pod, outside = fabric.sandbox("default", "iperf-1"), fabric.outside_netns
        with _server(pod, POD_PORT), _server(fabric.node_netns("node-1"), NODE_PORT):
            rounds = [
                {"fip_pod": _gbps(outside, fip, SERVICE_PORT), "node": _gbps(outside, node, NODE_PORT)}
                for _ in range(ROUNDS)
            ]
    return {
        "announce_median_s": statistics.median(announced),
        "announce_max_s": max(announced),
        "withdraw_median_s": statistics.median(withdrawn),
        "withdraw_max_s": max(withdrawn),
        "fip_pod_gbps": statistics.median(r["fip_pod"] for r in rounds),
        "node_gbps": statistics.median(r["node"] for r in rounds),
    }
