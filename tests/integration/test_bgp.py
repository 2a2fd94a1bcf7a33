"""The node speaker against a real router: BIRD 2 in a "router" namespace (eBGP, multipath into its kernel
table, as a physical gateway would be set up) and the Speaker driving its own BIRD inside each "node"
namespace, from a process started there as the agent would be. Figures are printed (pytest -s)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("bird"), reason="needs root and BIRD 2 (scripts/bootstrap)"
)

# The agent's part, in the node's namespace: one JSON command a line in, one JSON answer a line out.
NODE = """
import ipaddress, json, sys
from pathlib import Path
from isthmus.bgp import Settings, Speaker
from isthmus.model.network import BgpPeer

def settings(spec):
    peers = tuple(BgpPeer(address=a, asn=n) for a, n in spec["peers"])
    return Settings(ipaddress.ip_address(spec["address"]), spec["asn"], peers)

speaker = Speaker(Path(sys.argv[1]), settings(json.loads(sys.argv[2])))
for line in sys.stdin:
    name, *args = json.loads(line)
    try:
        if name == "start":
            result = speaker.start()
        elif name == "announce":
            result = speaker.announce(ipaddress.ip_network(p) for p in args[0])
        elif name == "configure":
            result = speaker.configure(settings(args[0]))
        elif name == "stop":
            result = speaker.stop(withdraw=args[0])
        else:
            state = speaker.state()
            peers = {str(p.address): [p.state, p.since.timestamp(), p.error, p.exported] for p in state.peers}
            result = {"peers": peers, "announced": sorted(map(str, state.announced))}
        print(json.dumps({"ok": result}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""

ROUTER = """\
router id 10.201.1.1;
timeformat protocol "%s.%3f";
protocol device { }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; merge paths on; }
protocol kernel { ipv6 { import none; export where source = RTS_BGP; }; merge paths on; }
template bgp node { local as 65000; connect delay time 1; }
protocol bgp n1 from node { neighbor 10.201.1.2 as 65001; ipv4 { import all; export none; }; }
protocol bgp n1v6 from node { neighbor 2001:db8:201:1::2 as 65001; ipv6 { import all; export none; }; }
protocol bgp n2 from node { neighbor 10.201.2.2 as 65001; ipv4 { import all; export none; }; }
"""
N1: dict[str, Any] = {
    "address": "10.201.1.2",
    "asn": 65001,
    "peers": [["10.201.1.1", 65000], ["2001:db8:201:1::1", 65000]],
}
N2: dict[str, Any] = {"address": "10.201.2.2", "asn": 65001, "peers": [["10.201.2.1", 65000]]}
VIP, VIP6 = "203.0.113.10/32", "2001:db8:ffff::10/128"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition` held, polled every 2 ms."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)
    return time.monotonic() - start


class Node:
    """A process in a node namespace driving that node's Speaker (the agent's stand-in)."""

    def __init__(self, netns: str, directory: Path, spec: dict[str, Any]) -> None:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", NODE, str(directory), json.dumps(spec)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.directory = directory

    def call(self, *command: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        assert "ok" in answer, answer["error"]
        return answer["ok"]

    def peer(self, address: str) -> list[Any]:
        """[BGP state, since, last error, routes exported] of one session."""
        peer: list[Any] = self.call("state")["peers"][address]
        return peer

    def established(self, *addresses: str, timeout: float = 10.0) -> None:
        wait(lambda: all(self.peer(a)[0] == "Established" for a in addresses), timeout, f"{addresses} up")

    def exit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(5) == 0

    def kill(self) -> None:
        """The agent SIGKILLed: its BIRD goes on."""
        self.process.kill()
        self.process.wait()

    def bird_pid(self) -> int:
        return int((self.directory / "bird.pid").read_text())


@dataclass
class Lab:
    prefix: str
    tmp: Path
    nodes: list[Node]

    def node(self, name: str, spec: dict[str, Any], directory: str | None = None) -> Node:
        started = Node(self.prefix + name, self.tmp / (directory or name), spec)
        self.nodes.append(started)
        return started

    def routes(self, prefix: str) -> list[dict[str, Any]]:
        family = "-6" if ":" in prefix else "-4"
        routes: list[dict[str, Any]] = json.loads(
            run("ip", family, "-j", "-n", self.prefix + "rtr", "route", "show", prefix)
        )
        return routes

    def next_hops(self, prefix: str) -> set[str]:
        """The router's kernel next hops for `prefix` (empty: no route)."""
        return {hop["gateway"] for route in self.routes(prefix) for hop in route.get("nexthops", [route])}

    def router_since(self, protocol: str) -> str:
        shown = run("birdc", "-s", str(self.tmp / "rtr.ctl"), "show", "protocols", protocol)
        return shown.splitlines()[-1].split()[4]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Namespaces rtr, n1, n2 (links rtr-n1, rtr-n2; none to the machine's namespace) and the router's
    BIRD. Afterwards every process in them and every namespace is gone, whatever the outcome."""
    prefix = f"isg{uuid.uuid4().hex[:6]}-"
    found = Lab(prefix, tmp_path, [])
    rtr = prefix + "rtr"
    try:
        for name in ("rtr", "n1", "n2"):
            run("ip", "netns", "add", prefix + name)
            run("ip", "-n", prefix + name, "link", "set", "lo", "up")
        for i, name in ((1, "n1"), (2, "n2")):
            node = prefix + name
            run("ip", "-n", rtr, "link", "add", name, "type", "veth", "peer", "uplink", "netns", node)
            for netns, device, host in ((rtr, name, 1), (node, "uplink", 2)):
                run("ip", "-n", netns, "addr", "add", f"10.201.{i}.{host}/24", "dev", device)
                run("ip", "-n", netns, "addr", "add", f"2001:db8:201:{i}::{host}/64", "dev", device, "nodad")
                run("ip", "-n", netns, "link", "set", device, "up")
        (tmp_path / "rtr.conf").write_text(ROUTER)
        conf, ctl, pid = (str(tmp_path / f"rtr.{suffix}") for suffix in ("conf", "ctl", "pid"))
        run("ip", "netns", "exec", rtr, "bird", "-c", conf, "-s", ctl, "-P", pid)
        yield found
    finally:
        for started in found.nodes:
            if started.process.poll() is None:
                started.kill()
        for name in ("rtr", "n1", "n2"):
            pids = subprocess.run(["ip", "netns", "pids", prefix + name], capture_output=True, check=False)
            for process in pids.stdout.split():
                os.kill(int(process), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", prefix + name], capture_output=True, check=False)


def test_an_announced_address_reaches_the_router_and_a_withdrawn_one_leaves_it(lab: Lab) -> None:
    n1 = lab.node("n1", N1)
    assert n1.call("start") is False
    n1.established("10.201.1.1", "2001:db8:201:1::1")

    assert n1.call("announce", [VIP, VIP6]) is True
    wait(lambda: lab.next_hops(VIP) == {"10.201.1.2"}, 1.0, "the /32 at the router")
    wait(lambda: lab.next_hops(VIP6) == {"2001:db8:201:1::2"}, 1.0, "the /128 at the router")
    assert n1.call("announce", [VIP6, VIP]) is False
    state = n1.call("state")
    assert state["announced"] == sorted([VIP, VIP6])
    assert [p[3] for p in state["peers"].values()] == [1, 1]  # each peer was sent its family's prefix

    assert n1.call("announce", [VIP6]) is True
    wait(lambda: not lab.next_hops(VIP), 1.0, "the /32 withdrawn")
    assert lab.next_hops(VIP6) == {"2001:db8:201:1::2"}  # the other family's announcement stays

    def timed(prefixes: list[str], vip: str, present: bool) -> float:
        """Seconds from announce(prefixes) to `vip` present or gone in the router's kernel."""
        start = time.monotonic()
        n1.call("announce", prefixes)
        wait(lambda: bool(lab.next_hops(vip)) == present, 1.0, f"{vip} present: {present}")
        return time.monotonic() - start

    ups, downs = [], []
    for vip in (f"203.0.113.{last}/32" for last in range(20, 30)):
        ups.append(timed([VIP6, vip], vip, True))
        time.sleep(0.05)
        downs.append(timed([VIP6], vip, False))
    print(
        f"\nfrom announce() to the router's kernel: median {statistics.median(ups) * 1000:.1f} ms, "
        f"max {max(ups) * 1000:.1f} ms; withdrawal: median {statistics.median(downs) * 1000:.1f} ms, "
        f"max {max(downs) * 1000:.1f} ms (10 rounds)"
    )
    assert n1.call("announce", []) is True
    wait(lambda: not lab.next_hops(VIP6), 1.0, "the /128 withdrawn")
    assert n1.call("state")["announced"] == []


def test_two_nodes_give_two_next_hops_and_a_stopped_speaker_withdraws_at_once(lab: Lab) -> None:
    n1, n2 = lab.node("n1", N1), lab.node("n2", N2)
    for node, peer in ((n1, "10.201.1.1"), (n2, "10.201.2.1")):
        node.call("start")
        node.established(peer)
        node.call("announce", [VIP])
    wait(lambda: lab.next_hops(VIP) == {"10.201.1.2", "10.201.2.2"}, 1.0, "one route, two next hops")

    pid = n1.bird_pid()
    start = time.monotonic()
    n1.call("stop", True)
    stopped = time.monotonic() - start
    wait(lambda: lab.next_hops(VIP) == {"10.201.2.2"}, 1.0, "n1's path withdrawn")
    gone = time.monotonic() - start
    print(
        f"\nstop(withdraw=True): returned in {stopped * 1000:.0f} ms, n1's path gone in {gone * 1000:.0f} ms"
    )
    assert not Path(f"/proc/{pid}/cmdline").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert gone < 0.1

    n2.call("stop", True)
    wait(lambda: not lab.next_hops(VIP), 0.5, "the route withdrawn")


def test_a_restarted_agent_adopts_its_bird_without_flapping_the_session(lab: Lab) -> None:
    n1 = lab.node("n1", N1)
    n1.call("start")
    n1.established("10.201.1.1")
    n1.call("announce", [VIP])
    wait(lambda: bool(lab.next_hops(VIP)), 1.0, "announced")
    since, router_since, pid = n1.peer("10.201.1.1")[1], lab.router_since("n1"), n1.bird_pid()

    n1.kill()
    time.sleep(1.0)
    assert lab.next_hops(VIP) == {"10.201.1.2"}

    again = lab.node("n1", N1)
    assert again.call("start") is True
    assert again.call("state")["announced"] == [VIP]
    assert again.peer("10.201.1.1")[:2] == [
        "Established",
        pytest.approx(since, abs=0.01),
    ]  # BIRD: wall from monotonic
    assert again.call("announce", [VIP]) is False
    assert again.call("announce", ["203.0.113.11/32"]) is True
    wait(lambda: not lab.next_hops(VIP) and bool(lab.next_hops("203.0.113.11/32")), 1.0, "changed")

    again.call("stop", False)  # the agent stops without withdrawing (an upgrade): BIRD goes on
    again.exit()
    assert again.bird_pid() == pid and Path(f"/proc/{pid}").exists()
    assert lab.router_since("n1") == router_since
    assert lab.next_hops("203.0.113.11/32") == {"10.201.1.2"}


def test_a_bird_that_died_is_started_again_and_told_again(lab: Lab) -> None:
    n1 = lab.node("n1", N1)
    n1.call("start")
    n1.call("announce", [VIP])
    os.kill(n1.bird_pid(), signal.SIGKILL)
    with pytest.raises(AssertionError, match=r"BgpError: BIRD at .*bird\.ctl does not answer"):
        n1.call("state")
    assert n1.call("start") is False  # a new BIRD, announcing nothing yet
    assert n1.call("state")["announced"] == []
    assert n1.call("announce", [VIP]) is True
    n1.established("10.201.1.1")
    wait(lambda: lab.next_hops(VIP) == {"10.201.1.2"}, 1.0, "announced again")


def test_an_unreachable_peer_shows_its_reason_while_the_others_work(lab: Lab) -> None:
    n1 = lab.node("n1", N1)
    n1.call("start")
    n1.established("10.201.1.1")
    since = n1.peer("10.201.1.1")[1]

    absent = {**N1, "peers": [*N1["peers"], ["10.201.1.9", 65000]]}  # on the link, nobody there
    assert n1.call("configure", absent) is True
    wait(lambda: n1.peer("10.201.1.9")[2] is not None, 10.0, "an error for the absent peer")
    state, _, error, _ = n1.peer("10.201.1.9")
    assert state != "Established" and error == "Socket: No route to host"
    assert n1.peer("10.201.1.1")[:2] == ["Established", pytest.approx(since, abs=0.01)]  # no other restarts

    n1.call("announce", [VIP])
    wait(lambda: lab.next_hops(VIP) == {"10.201.1.2"}, 1.0, "announced through the working peer")
    assert n1.call("configure", N1) is True
    wait(lambda: "10.201.1.9" not in n1.call("state")["peers"], 2.0, "the removed peer gone")  # shut down


def test_a_bird_of_another_namespace_is_not_adopted(lab: Lab) -> None:
    n1 = lab.node("n1", N1, directory="shared")
    n1.call("start")
    intruder = lab.node("n2", N2, directory="shared")
    with pytest.raises(AssertionError, match="runs in another network namespace"):
        intruder.call("start")
