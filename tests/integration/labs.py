"""Driving `isthmus lab` from tests: its commands through the CLI, and a lab that is up for the length of a
`with`, then brought down and checked to have left no namespace and no process."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from isthmus.cli.main import cli

STREAM = """
import json, socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
answered = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1.0)
    s.connect((host, 80))
    for i in range(count):
        s.send(str(i).encode())
        try:
            s.recv(100)
            answered += 1
        except OSError:
            pass
        time.sleep(0.01)
print(json.dumps({"sent": count, "answered": answered}))
"""  # a UDP client, one datagram every 10 ms to HOST:80, each waiting up to 1 s for its answer
ASK = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), 1) as conn:
        conn.sendall(b"?")
        print(conn.recv(64).decode())
except OSError as exc:
    print("failed: " + type(exc).__name__)
"""  # one TCP connection to HOST PORT: the answer (a lab server's name), or "failed: ERROR"


def ask(work: Path, source: str, address: str, port: int) -> str:
    """What ADDRESS:PORT answers a connection from `source` (a pod, VM or node of the lab)."""
    return lab_exec(work, source, "python3", "-c", ASK, address, str(port)).stdout.strip()


def until(what: Callable[[], Any], expected: Any, seconds: float = 15) -> float:
    """Seconds until `what()` == `expected` (fails after `seconds`, showing the last value)."""
    started = time.monotonic()
    while (got := what()) != expected:
        assert time.monotonic() - started < seconds, f"still {got!r}, expected {expected!r}"
        time.sleep(0.05)
    return time.monotonic() - started


def lab(work: Path, *args: str) -> Result:
    """`isthmus lab --dir WORK ARGS`, failing the test (with its output) unless it succeeds."""
    result = CliRunner().invoke(cli, ["lab", "--dir", str(work), *args])
    if result.exit_code != 0:
        pytest.fail(
            f"`isthmus lab {' '.join(args)}` exited {result.exit_code}:\n{result.output}", pytrace=False
        )
    return result


def isthmus(work: Path, *args: str) -> Result:
    """`isthmus ARGS` on the lab's ledger, asserting it succeeds."""
    result = CliRunner().invoke(cli, ["--state", str(work / "state"), *args])
    assert result.exit_code == 0, result.output
    return result


def lab_exec(work: Path, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    """`isthmus lab exec NAME -- COMMAND` in a process of its own (exec replaces the process)."""
    argv = [sys.executable, "-m", "isthmus.cli.main", "lab", "--dir", str(work), "exec", name, "--", *command]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextmanager
def running(base: Path, topology: dict[str, Any], *up: str) -> Iterator[tuple[Path, Result]]:
    """A lab of `topology` (its name made unique, files in `base`) and the output of its `lab up UP`;
    afterwards `lab down`, and no namespace or process of it may be left."""
    name = f"{topology.get('name', 't')[:5]}{uuid.uuid4().hex[:6]}"
    (base / "topology.yaml").write_text(yaml.safe_dump({**topology, "name": name}))
    work = base / "lab"
    try:
        yield work, lab(work, "up", "-f", str(base / "topology.yaml"), *up)
    finally:
        down = CliRunner().invoke(cli, ["lab", "--dir", str(work), "down"])
        assert down.exit_code == 0, down.output
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"{name}-" not in netns  # no namespace left
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(work) not in processes  # no agent, kubelet or BIRD left
