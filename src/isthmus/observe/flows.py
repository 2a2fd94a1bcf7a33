"""The cluster's flow records: each node's agent keeps its own (`agent/flows.py`) and answers on its
control socket, which its status in the ledger names; this module asks every one, and filters."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isthmus.agent.cni import ask
from isthmus.store import Ledger, objects

VERDICTS = ("allowed", "dropped")
STATES = ("new", "established", "closed")
Asker = Callable[[Path, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Filter:
    """Records matching every field given: a namespace or pod (NAMESPACE/NAME, or NAME in `namespace`)
    at either end, a service, verdict, protocol, port at either end, node, state."""

    namespace: str | None = None
    pod: str | None = None
    service: str | None = None
    verdict: str | None = None
    protocol: str | None = None
    port: int | None = None
    node: str | None = None
    state: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        ends = (record.get("source") or {}, record.get("destination") or {})
        spaces = {e.get("namespace") for e in ends}
        if self.namespace is not None and self.pod is None and self.namespace not in spaces:
            return False
        if self.pod is not None:
            namespace, _, name = self.pod.rpartition("/")
            namespace = namespace or self.namespace or ""
            if not any(e.get("namespace") == namespace and e.get("name") == name for e in ends):
                return False
        return (
            (self.service is None or record.get("service") == self.service)
            and (self.verdict is None or record.get("verdict") == self.verdict)
            and (self.protocol is None or record.get("protocol") == self.protocol.upper())
            and (self.port is None or any(e.get("port") == self.port for e in ends))
            and (self.node is None or record.get("node") == self.node)
            and (self.state is None or record.get("state") == self.state)
        )


def agents(ledger: Ledger) -> dict[str, str]:
    """Each node's agent control socket, as its status names it."""
    reports = objects.statuses(ledger)
    return {node: report["control"] for node, report in reports.items() if report.get("control")}


class Observer:
    """The records of every agent, each read once: `positions` holds the last sequence number read per
    node (0: from the oldest it keeps). Problems reaching a node are kept per node, not raised."""

    def __init__(
        self, ledger: Ledger, ask_agent: Asker = ask, positions: dict[str, int] | None = None
    ) -> None:
        self.ledger, self.ask = ledger, ask_agent
        self.positions: dict[str, int] = dict(positions or {})
        self.problems: dict[str, str] = {}
        self.lost: dict[str, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        """The records made since the last poll, in time order."""
        found: list[dict[str, Any]] = []
        for node, control in sorted(agents(self.ledger).items()):
            try:
                answer = self.ask(Path(control), {"command": "FLOWS", "since": self.positions.get(node, 0)})
            except OSError as exc:
                self.problems[node] = f"{control}: {exc}"
                continue
            if "error" in answer:
                self.problems[node] = str(answer["error"].get("msg"))
                continue
            self.problems.pop(node, None)
            result = answer["result"]
            self.positions[node] = result["seq"]
            self.lost[node] = result["lost"] + result["overwritten"]
            found += result["records"]
        return sorted(found, key=lambda r: r["time"])

    def follow(self, interval: float = 0.2) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.poll()
            time.sleep(interval)
