"""A pod keeps the network, and so the address, it was admitted to for its UID's life, in the router lab
with the seeds in cluster mode while the outside client asks nginx through its floating IP: turning
namespace default to collection isolation moves no pod and drops no request (the pods say which network
they hold and which they declare now); a relabelled pod keeps its address and its open connections; a pod
made afterwards lands in its collection's network, from a new block, and serves through the ftleonardo
service; that the outside reaches it through the floating IP too is expected to fail (see its test)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.lab.control import Lab
from isthmus.lab.fabric import Fabric
from tests.integration.labs import isthmus, lab, lab_exec, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("bird"),
    reason="needs root, nftables and BIRD 2 (scripts/bootstrap)",
)
SEEDS = Path(__file__).resolve().parents[2] / "examples" / "seeds"
TOPOLOGY = {
    "name": "ident",
    "router": {"asn": 64500},
    "outside": {"address": "198.51.100.10"},
    "nodes": [{"name": f"node-{i}"} for i in (1, 2, 3)],
    "manifests": [str(SEEDS)],
}
HELD = "isthmus-system/pods"  # the seeds' network in cluster mode
COLLECTION = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "default", "annotations": {"isthmus.io/isolation": "collection"}},
}
REQUESTS = """
import collections, json, signal, socket, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
answered, failed = collections.Counter(), []
count = int(sys.argv[2]) if len(sys.argv) > 2 else -1
while not stop and count != 0:
    count, started, answer = count - 1, time.monotonic(), b""
    try:
        with socket.create_connection((sys.argv[1], 80), 1) as conn:
            conn.settimeout(1)
            conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            while chunk := conn.recv(4096):
                answer += chunk
        head, _, body = answer.decode().partition("\\r\\n\\r\\n")
        nginx = [h.split(":", 1)[1].strip() for h in head.split("\\r\\n") if h.startswith("X-Served-By:")]
        if not nginx or '"served_by": "default/leonardo-' not in body:
            raise ConnectionError(head.split("\\r\\n")[0] or "no answer")
        answered[nginx[0]] += 1
    except OSError as exc:
        failed.append(f"{time.time():.2f} {type(exc).__name__} {exc}")
    time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))
print(json.dumps({"answered": answered, "failed": failed}))
"""  # a request for / to HOST:80 every 50 ms, each given 1 s, COUNT times or until SIGTERM: the nginx pods
# that answered with what the ftleonardo service behind them said, and what failed
ECHO = """
import socket
with socket.create_server(("0.0.0.0", 7000)) as server:
    while True:
        conn, _ = server.accept()
        while data := conn.recv(64):
            conn.sendall(data)
        conn.close()
"""  # echoes what it is sent on port 7000, one connection at a time, for as long as it stays open
TALK = """
import json, signal, socket, sys, time
stop, times, error = [], [], None
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
with socket.create_connection((sys.argv[1], 7000), 1) as conn:
    conn.settimeout(1)
    print("connected", flush=True)
    while not stop:
        try:
            conn.sendall(b"%d" % len(times))
            if conn.recv(64) != b"%d" % len(times):
                raise ConnectionError("wrong echo")
        except OSError as exc:
            error = type(exc).__name__
            break
        times.append(time.time())
        time.sleep(0.05)
gaps = [b - a for a, b in zip(times, times[1:])]
print(json.dumps({"exchanged": len(times), "last": times[-1], "gap": max(gaps, default=0), "error": error}))
"""  # one TCP connection to HOST:7000, a message echoed every 50 ms until SIGTERM or a failure


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("identity")
    started = time.monotonic()
    with running(base, TOPOLOGY, "--timeout", "60") as (work, _):
        print(f"router lab with the seeds up: {time.monotonic() - started:.1f} s")
        yield work


def _pods(work: Path) -> dict[str, dict[str, Any]]:
    listed = json.loads(isthmus(work, "get", "pods", "-n", "default", "-o", "json").output)["items"]
    return {p["metadata"]["name"]: p for p in listed}


def _network(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's condition isthmus.io/NetworkAsDeclared."""
    found = [c for c in pod["status"].get("conditions", []) if c["type"] == "isthmus.io/NetworkAsDeclared"]
    assert len(found) == 1, pod["status"]
    return dict(found[0])


def _inside(work: Path, pod: str) -> str:
    """The IPv4 address the pod's sandbox has on eth0."""
    shown = lab_exec(work, pod, "ip", "-4", "-o", "addr", "show", "eth0")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split(" inet ", 1)[1].split("/", 1)[0]


def _fip(work: Path) -> str:
    service = json.loads(isthmus(work, "get", "service", "nginx", "-o", "json").output)
    return str(service["status"]["loadBalancer"]["ingress"][0]["ip"])


def _answers(work: Path, fip: str, count: int) -> dict[str, int]:
    """Who answers `count` connections from the outside client to the floating IP, one after another."""
    done = lab_exec(work, "outside", "python3", "-c", REQUESTS, fip, str(count))
    found = json.loads(done.stdout)
    return {**found["answered"], **({"failed": len(found["failed"])} if found["failed"] else {})}


@contextmanager
def _requests(work: Path, fip: str) -> Iterator[dict[str, Any]]:
    """The outside client asks the floating IP 20 times a second for the length of the `with`; afterwards
    the dict holds who answered and what failed."""
    fabric, found = Fabric.load(work), dict[str, Any]()
    stream = subprocess.Popen(
        ["ip", "netns", "exec", f"{fabric.prefix}outside", "python3", "-c", REQUESTS, fip],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        yield found
    finally:
        stream.send_signal(signal.SIGTERM)
        out, _ = stream.communicate(timeout=5)
    found.update(json.loads(out))
    print(f"outside requests: answered {dict(found['answered'])}, failed {found['failed']}")


def test_the_seeds_in_cluster_mode_answer_the_outside_through_the_floating_ip(work: Path) -> None:
    pods = _pods(work)
    assert len(pods) == 6 and {p["status"]["phase"] for p in pods.values()} == {"Running"}, pods
    for name, pod in pods.items():
        assert _network(pod) == {"type": "isthmus.io/NetworkAsDeclared", "status": "True", "message": HELD}
        assert _inside(work, name) == pod["status"]["podIP"]
    fip = _fip(work)
    nginx = {f"default/{n}" for n in pods if n.startswith("nginx")}
    until(lambda: sorted(_answers(work, fip, 30)), sorted(nginx), 20)  # ECMP over the nodes, DNAT to each pod


def test_turning_the_namespace_to_collection_moves_no_pod_and_drops_no_request(
    work: Path, tmp_path: Path
) -> None:
    before = {name: pod["status"]["podIP"] for name, pod in _pods(work).items()}
    (tmp_path / "namespace.yaml").write_text(yaml.safe_dump(COLLECTION))
    with _requests(work, _fip(work)) as requests:
        started = time.monotonic()
        lab(work, "apply", "-f", str(tmp_path / "namespace.yaml"))
        print(f"namespace default to collection applied and settled: {time.monotonic() - started:.1f} s")
        pods = _pods(work)
        assert {name: pod["status"]["podIP"] for name, pod in pods.items()} == before
        for name, address in before.items():
            assert _inside(work, name) == address
        time.sleep(1)
    assert requests["failed"] == [] and sum(requests["answered"].values()) >= 20, requests
    for name, pod in pods.items():
        declared = name.split("-")[0]  # the name label of leonardo's and nginx's pods
        condition = _network(pod)
        assert (condition["status"], condition["reason"]) == ("False", "NetworkChanged"), condition
        assert condition["message"].startswith(f"{HELD}, declares {declared}: a pod keeps its network")
        endpoint = json.loads(isthmus(work, "get", "endpoint", name, "-o", "json").output)
        assert endpoint["spec"]["network"] == HELD
        assert endpoint["metadata"]["annotations"]["isthmus.io/declared-network"] == declared
    wide = isthmus(work, "get", "pods", "-o", "wide").output.splitlines()
    assert "NETWORK" in wide[0].split()
    for name, address in before.items():
        line = next(line for line in wide if line.startswith(f"{name} "))
        assert f" {address} " in line and f" {HELD}, declares {name.split('-')[0]}: " in line, line
    status = lab(work, "status").output
    assert "NETWORK" in status and status.count(f"{HELD}, declares ") == len(before), status


def test_a_relabelled_pod_keeps_its_address_and_its_connections(work: Path, tmp_path: Path) -> None:
    pods = _pods(work)
    server = next(n for n, p in pods.items() if n.startswith("nginx") and _network(p)["status"] == "False")
    client = next(n for n in pods if n.startswith("leonardo"))
    address = pods[server]["status"]["podIP"]
    running_lab = Lab.open(work)
    echo = subprocess.Popen(["ip", "netns", "exec", running_lab.netns(server), "python3", "-c", ECHO])
    talk = None
    try:
        time.sleep(0.3)
        talk = subprocess.Popen(
            ["ip", "netns", "exec", running_lab.netns(client), "python3", "-c", TALK, address],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert talk.stdout is not None and talk.stdout.readline() == "connected\n"
        relabelled = {k: v for k, v in pods[server].items() if k != "status"}
        relabelled["metadata"]["labels"]["name"] = "other"
        (tmp_path / "pod.yaml").write_text(yaml.safe_dump(relabelled))
        with _requests(work, _fip(work)) as requests:
            lab(work, "apply", "-f", str(tmp_path / "pod.yaml"))
            relabelled_at = time.time()
            time.sleep(1)
        talk.send_signal(signal.SIGTERM)
        out, _ = talk.communicate(timeout=5)
    finally:
        for process in (talk, echo):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    talked = json.loads(out)
    print(f"one connection {client} -> {server} across the relabel: {talked}")
    assert talked["error"] is None and talked["last"] > relabelled_at + 0.5 and talked["gap"] < 1, talked
    assert requests["failed"] == [], requests
    pod = _pods(work)[server]
    assert pod["metadata"]["labels"]["name"] == "other" and pod["status"]["podIP"] == address
    assert _inside(work, server) == address
    assert _network(pod)["message"].startswith(f"{HELD}, declares other: ")
    endpoint = json.loads(isthmus(work, "get", "endpoint", server, "-o", "json").output)
    assert endpoint["spec"]["network"] == HELD and endpoint["metadata"]["labels"]["name"] == "other"
    assert endpoint["metadata"]["annotations"]["isthmus.io/declared-network"] == "other"


def _blocks(work: Path, network: str) -> list[ipaddress.IPv4Network]:
    namespace, _, name = network.rpartition("/")
    listed = json.loads(isthmus(work, "get", "subnets", "-n", namespace, "-o", "json").output)["items"]
    return [ipaddress.IPv4Network(s["spec"]["cidr"]) for s in listed if s["spec"]["network"] == name]


def test_a_pod_made_afterwards_lands_in_its_collection_network(work: Path, tmp_path: Path) -> None:
    before = {name: pod["status"]["podIP"] for name, pod in _pods(work).items()}
    scaled = yaml.safe_load((SEEDS / "nginx-rc.yaml").read_text())
    scaled["spec"]["replicas"] = 4
    (tmp_path / "nginx-rc.yaml").write_text(yaml.safe_dump(scaled))
    with _requests(work, _fip(work)) as requests:
        lab(work, "apply", "-f", str(tmp_path / "nginx-rc.yaml"))
        time.sleep(1)
    pods = _pods(work)
    (new,) = set(pods) - set(before)
    assert {name: pods[name]["status"]["podIP"] for name in before} == before
    kept = {f"default/{n}" for n in before if n.startswith("nginx")}
    assert kept <= set(requests["answered"]), requests  # the failures: test_the_outside_reaches_the_new_pod
    endpoint = json.loads(isthmus(work, "get", "endpoint", new, "-o", "json").output)
    assert endpoint["spec"]["network"] == "nginx" and endpoint["metadata"]["namespace"] == "default"
    assert "isthmus.io/declared-network" not in endpoint["metadata"].get("annotations", {})
    assert _network(pods[new]) == {
        "type": "isthmus.io/NetworkAsDeclared",
        "status": "True",
        "message": "nginx",
    }
    address = ipaddress.IPv4Address(pods[new]["status"]["podIP"])
    assert _inside(work, new) == str(address)
    assert any(address in block for block in _blocks(work, "default/nginx"))
    assert all(address not in block for block in _blocks(work, HELD))  # a block of its own network
    # its nginx serves, through the ftleonardo service to the leonardo pods that stayed in the old network
    served = json.loads(lab_exec(work, new, "python3", "-c", REQUESTS, "127.0.0.1", "20").stdout)
    assert served == {"answered": {f"default/{new}": 20}, "failed": []}, served


def test_the_outside_reaches_the_new_pod_through_the_floating_ip(work: Path) -> None:
    """The service's backends now span two networks: the pods that kept the cluster's and the new one."""
    (new,) = (n for n, p in _pods(work).items() if n.startswith("nginx") and _network(p)["status"] == "True")
    answered = _answers(work, _fip(work), 60)  # its node's flows go to it or to the other pod there
    print(f"60 requests to the floating IP: {answered}")
    assert "failed" not in answered and f"default/{new}" in answered, answered
