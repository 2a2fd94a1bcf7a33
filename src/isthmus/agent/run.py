"""Running the agent as a process: the node's sysctls, the CNI socket, the metrics endpoint, signals."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from isthmus.agent.bgp import Announcer
from isthmus.agent.cni import Service, serve
from isthmus.agent.flows import Recorder
from isthmus.agent.metrics import FlowCollector
from isthmus.agent.node import Agent
from isthmus.dataplane.kernel.driver import Driver
from isthmus.observe import metrics as exposition
from isthmus.store import Ledger

SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/fwmark_reflect": "1",  # resets and ICMP errors the node sends go back in the pod's table
    "net/ipv4/fib_multipath_hash_policy": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv6/fwmark_reflect": "1",
    "net/ipv6/fib_multipath_hash_policy": "1",
}


def _record(recorder: Recorder, stop: threading.Event) -> None:
    try:
        recorder.run(stop)
    except OSError as exc:  # a kernel without NFLOG: the node forwards, and keeps no records
        logging.getLogger("isthmus.agent").warning("no flow records: %s", exc)


def run(
    ledger: Ledger, node: str, socket: Path, work: Path, metrics: str | None, records: bool = True
) -> None:
    """Program the node and serve the plugin until SIGTERM or SIGINT; the kernel keeps its state."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name, value in SYSCTLS.items():
        Path("/proc/sys", name).write_text(value)
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    announcer = Announcer(work / "bgp")
    agent = Agent(ledger, node, Driver(), announcer)
    agent.control = str(socket)
    server = serve(Service(agent, work), socket)
    if metrics:
        exposition.serve(agent.metrics.registry, metrics)
    stop = threading.Event()
    if records:
        agent.recorder = Recorder(node, agent.names, agent.words)
        agent.metrics.watch(FlowCollector(node, agent.recorder.tally))
        threading.Thread(target=_record, args=(agent.recorder, stop), name="flows", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("isthmus.agent").info("node %s programmed at revision %d", node, agent.revision)
    agent.run(stop)
    server.shutdown()
    with agent.lock:
        announcer.stop(withdraw=True)  # a clean stop withdraws; a killed agent's BIRD keeps announcing
