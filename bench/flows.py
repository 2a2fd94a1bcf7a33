"""Flow records (issue 19) on a real two-node lab: what recording costs forwarding, and what a flood of
dropped packets does to the agent. The same lab is measured with the agents recording and with them
started `--no-flow-records` (the kernel's log statements then find no reader), in alternating rounds:
single-stream TCP throughput across nodes and new TCP connections a second (each one recorded on both
nodes). Then, recording, a UDP flood to a port the destination's NetworkPolicy drops, each datagram from
a random source port, so a new flow (logged up to the rule's limit, the rest counted by its twin):
trafgen (netsniff-ng) writes whole frames into a packet socket's ring on one CPU, from a pod beside the
destination (across nodes, the sender's CPU also carries both nodes' forwarding and VXLAN, about 40,000
packets a second); the packets a second sent, the records a second the agent took, the messages the
kernel dropped unread, the agent's memory before and after, and TCP throughput across the nodes during
the flood. Apart from the lab, the records
a second one recorder turns logged packets into. Needs root, nftables, iperf3 and trafgen
(scripts/bootstrap dev)."""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.dataplane import (
    NAMESPACE,
    NAMESPACE_DOC,
    NODES,
    _admitted,
    _gbps,
    _lab,
    _listening,
    _pod,
    _spawn,
    _wait,
)
from bench.harness import Figures, Goal, benchmark
from isthmus.agent.cni import ask
from isthmus.agent.flows import Named, Names, Recorder
from isthmus.dataplane.kernel.nflog import Logged
from isthmus.lab.fabric import Fabric, netns_exec
from isthmus.model import Endpoint

ROUNDS, CONNECTS, FLOOD_SECONDS, RECORDS = 2, 1000, 5, 50_000
POLICY = {  # the remote pod takes iperf3 and the connection target only: anything else is dropped
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "remote", "namespace": NAMESPACE},
    "spec": {
        "podSelector": {"matchLabels": {"pod": "remote"}},
        "ingress": [{"ports": [{"port": 5201}, {"port": 8080}]}],
    },
}
CONNECT = """
import socket, sys, time
started = time.monotonic()
for _ in range(int(sys.argv[3])):
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()
print(int(sys.argv[3]) / (time.monotonic() - started))
"""
LISTEN = """
import socket
server = socket.create_server(("0.0.0.0", 8080), backlog=512)
while True:
    server.accept()[0].close()
"""


def _restart(fabric: Fabric, record: bool) -> None:
    """Both agents again, recording or not (the kernel keeps its state meanwhile)."""
    for node in NODES:
        fabric.stop(f"agent/{node}")
        fabric.start_agent(node, "--flow-records" if record else "--no-flow-records")


def _connects(client: str, address: str) -> float:
    done = netns_exec(client, "python3", "-c", CONNECT, address, "8080", str(CONNECTS))
    if done.returncode != 0:
        raise RuntimeError(f"connections from {client}: {done.stderr.strip()}")
    return float(done.stdout)


def _flows(fabric: Fabric, node: str) -> dict[str, Any]:
    answer = ask(fabric.socket(node), {"command": "FLOWS", "since": 1 << 62})
    result: dict[str, Any] = answer["result"]
    return result


def _sent(netns: str) -> int:
    """Packets the namespace's eth0 has sent."""
    shown = netns_exec(netns, "ip", "-j", "-s", "link", "show", "eth0").stdout
    return int(json.loads(shown)[0]["stats64"]["tx"]["packets"])


def _frame(netns: str, source: str, destination: str) -> str:
    """trafgen's description of the flood's frame from the pod `netns`: UDP from a random port to port 9,
    36 bytes of payload, to its gateway's MAC (the host side of its veth)."""
    link = json.loads(netns_exec(netns, "ip", "-j", "link", "show", "eth0").stdout)[0]
    netns_exec(netns, "ping", "-c", "1", "-W", "1", destination)  # the gateway's MAC into the neighbours
    neighbours = json.loads(netns_exec(netns, "ip", "-j", "neigh", "show", "dev", "eth0").stdout)
    gateway = next(n["lladdr"] for n in neighbours if "lladdr" in n)

    def octets(text: str, sep: str, base: int) -> str:
        return ", ".join(str(int(part, base)) for part in text.split(sep))

    ips = f"{octets(source, '.', 10)}, {octets(destination, '.', 10)}"
    return (
        f"{{ {octets(gateway, ':', 16)}, {octets(link['address'], ':', 16)}, const16(0x0800),\n"
        f"  0x45, 0, const16(64), const16(0), 0x40, 0, 64, 17, csumip(14, 33), {ips},\n"
        "  drnd(2), const16(9), const16(44), const16(0), fill(0x41, 36) }\n"
    )


def _rss_mb(fabric: Fabric, node: str) -> float:
    """The agent's resident memory (its process is the child of `ip netns exec`, which execs it)."""
    status = Path(f"/proc/{fabric.processes[f'agent/{node}']}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def _recorder_rate() -> float:
    """Logged packets turned into records a second by one recorder (no kernel: parsing, naming, ring)."""
    names = Names({f"10.0.{i // 250}.{i % 250}": Named("ns", f"pod-{i}", "ns/pods") for i in range(10_000)})
    recorder = Recorder("node-1", lambda: names, {"dabc": "ns/deny"}.get)
    header = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0])
    packets = [
        Logged(
            "dabc",
            4,
            3,
            4,
            0,
            header + bytes([10, 0, i // 250 % 40, i % 250, 10, 0, 1, 1]) + i.to_bytes(2, "big") + bytes(18),
        )
        for i in range(RECORDS)
    ]
    started = time.perf_counter()
    for i, packet in enumerate(packets):
        recorder.add(packet, 1000.0 + i)
    return RECORDS / (time.perf_counter() - started)


@benchmark(
    "flow-records",
    units={
        "gbps_recording": "Gbit/s",
        "gbps_not_recording": "Gbit/s",
        "connects_recording": "conn/s",
        "connects_not_recording": "conn/s",
        "flood_pps": "packets/s",
        "flood_records_per_s": "records/s",
        "flood_lost": "messages",
        "agent_mb_before_flood": "MB",
        "agent_mb_after_flood": "MB",
        "gbps_during_flood": "Gbit/s",
        "recorder_records_per_s": "records/s",
    },
    ratios={
        "throughput_recording_vs_not": ("gbps_recording", "gbps_not_recording"),
        "connects_recording_vs_not": ("connects_recording", "connects_not_recording"),
        "memory_after_vs_before_flood": ("agent_mb_after_flood", "agent_mb_before_flood"),
    },
    goals=(
        Goal("throughput_recording_vs_not", ">=", 0.95),
        Goal("flood_pps", ">=", 100_000),
        Goal("memory_after_vs_before_flood", "<=", 1.1),
    ),
)
def flow_records() -> Figures:
    docs = [
        NAMESPACE_DOC,
        _pod("client", "node-1"),
        _pod("remote", "node-2"),
        _pod("flooder", "node-2"),
        POLICY,
    ]
    with _lab(docs) as fabric:
        client = fabric.pod("node-1", NAMESPACE, "client", [])
        remote = fabric.pod("node-2", NAMESPACE, "remote", [])
        flooder = fabric.pod("node-2", NAMESPACE, "flooder", [])
        address = str(_admitted(fabric, Endpoint, "remote").spec.addresses[0])
        _spawn(fabric, "iperf3/remote", remote, "iperf3", "-s")
        _spawn(fabric, "listen/remote", remote, "python3", "-c", LISTEN)
        for port in (5201, 8080):
            _wait(f"port {port} in {remote}", functools.partial(_listening, remote, port), 10)
        figures: dict[str, list[float]] = {}
        for i in range(2 * ROUNDS):
            record = i % 2 == 0
            _restart(fabric, record)
            what = "recording" if record else "not_recording"
            figures.setdefault(f"gbps_{what}", []).append(_gbps(client, address))
            figures.setdefault(f"connects_{what}", []).append(_connects(client, address))
        _restart(fabric, True)
        before, mb_before = _flows(fabric, "node-2"), _rss_mb(fabric, "node-2")
        frame = fabric.work / "flood.trafgen"
        source = str(_admitted(fabric, Endpoint, "flooder").spec.addresses[0])
        frame.write_text(_frame(flooder, source, address))
        sent_before = _sent(flooder)
        trafgen = ["trafgen", "--dev", "eth0", "--conf", str(frame), "--cpus", "1"]
        flood = subprocess.Popen(  # UDP to port 9, which the policy drops: every datagram a new flow
            ["ip", "netns", "exec", flooder, "timeout", "-s", "INT", str(FLOOD_SECONDS), *trafgen],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        during = _gbps(client, address)
        flood.wait(FLOOD_SECONDS + 30)
        sent = _sent(flooder) - sent_before
        after, mb_after = _flows(fabric, "node-2"), _rss_mb(fabric, "node-2")
        return {name: statistics.median(values) for name, values in figures.items()} | {
            "flood_pps": sent / FLOOD_SECONDS,
            "flood_records_per_s": (after["seq"] - before["seq"]) / FLOOD_SECONDS,
            "flood_lost": after["lost"] - before["lost"],
            "agent_mb_before_flood": mb_before,
            "agent_mb_after_flood": mb_after,
            "gbps_during_flood": during,
            "recorder_records_per_s": _recorder_rate(),
        }
