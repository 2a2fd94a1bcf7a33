"""Real connections from pods: `probe` runs one prober per source pod, in the pod's sandbox, all at once;
each prober tries every destination in parallel (an answer within the timeout, one retry) and prints
what answered. Run inside a sandbox: python -m isthmus.lab.probe PROTOCOL PORT TIMEOUT HOST..."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ATTEMPTS = 2


def connect(host: str, port: int, protocol: str, timeout: float) -> str:
    """The name the server at host:port answers, or "" when nothing answers."""
    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    for _ in range(ATTEMPTS):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as conn:
            conn.settimeout(timeout)
            try:
                conn.connect((host, port))
                conn.send(b"?")  # the lab's server answers at once when asked
                answer = conn.recv(256).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return ""  # refused or unreachable: an answer, not worth a retry
            if answer:
                return answer
    return ""


def probe(
    sandboxes: dict[str, str], targets: dict[str, str], port: int, protocol: str, timeout: float = 1.0
) -> dict[str, dict[str, str]]:
    """source -> target -> what answered, for every source pod's sandbox and every target address."""
    hosts = list(targets.values())
    argv = [sys.executable, "-m", "isthmus.lab.probe", protocol, str(port), str(timeout), *hosts]
    running = {
        source: subprocess.Popen(
            ["ip", "netns", "exec", sandbox, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for source, sandbox in sandboxes.items()
    }
    found: dict[str, dict[str, str]] = {}
    for source, process in running.items():
        out, _ = process.communicate(timeout=30 + ATTEMPTS * timeout)
        answers: list[str] = json.loads(out) if process.returncode == 0 else [""] * len(hosts)
        found[source] = dict(zip(targets, answers, strict=True))
    return found


def as_matrix(
    answers: dict[str, dict[str, str]],
    port: int,
    protocol: str,
    to: str,
    sources: list[str],
    targets: list[str],
) -> dict[str, Any]:
    """The answers in the shape of `isthmus matrix -o json`."""
    return {
        "port": port,
        "protocol": protocol,
        "to": to,
        "sources": sources,
        "destinations": targets,
        "allowed": {s: {t: bool(answers.get(s, {}).get(t)) for t in targets} for s in sources},
    }


def main() -> None:
    protocol, port, timeout, *hosts = sys.argv[1:]
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        answers = list(pool.map(lambda h: connect(h, int(port), protocol, float(timeout)), hosts))
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
