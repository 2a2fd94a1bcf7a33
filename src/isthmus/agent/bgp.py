"""The agent's side of BGP: the node's speaker kept in step with its Node's `spec.bgp` and with what its
compiled state says to announce. Speaker failures are kept as the report's error and retried."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from isthmus.bgp import BgpError, Settings, Speaker
from isthmus.model import Node

log = logging.getLogger("isthmus.agent.bgp")


class Announcer:
    """Invariant after a successful `update`: the speaker runs with the node's settings and announces
    exactly the prefixes given; with no settings, nothing runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.speaker: Speaker | None = None
        self.prefixes: frozenset[str] = frozenset()
        self.error = ""

    def update(self, node: Node | None, prefixes: Iterable[str]) -> None:
        bgp = node.spec.bgp if node is not None else None
        self.prefixes = frozenset(prefixes)
        try:
            if node is None or bgp is None:
                self.stop(withdraw=True)
                return
            four = [a for a in node.spec.addresses if a.version == 4]  # the router id's, when it has one
            settings = Settings((four or node.spec.addresses)[0], bgp.asn, tuple(bgp.peers))
            if self.speaker is None:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.speaker = Speaker(self.directory, settings)
                self.speaker.start()
            elif settings != self.speaker.settings:
                self.speaker.configure(settings)
            self.speaker.announce(ipaddress.ip_network(p) for p in sorted(self.prefixes))
            self.error = ""
        except (BgpError, ValueError) as exc:
            self.error = str(exc)
            self.speaker = None  # started (or adopted) again on the next update
            log.warning("BGP speaker: %s", exc)

    def report(self) -> dict[str, object]:
        """The sessions and announced prefixes, for the node's status and `isthmus get bgp`."""
        if self.speaker is None:
            return {"error": self.error} if self.error else {}
        try:
            state = self.speaker.state()
        except BgpError as exc:
            self.error, self.speaker = str(exc), None
            return {"error": self.error}
        peers = [
            {
                "address": str(p.address),
                "asn": p.asn,
                "state": p.state,
                "since": p.since.isoformat(timespec="seconds"),
                "exported": p.exported,
            }
            | ({"info": p.error} if p.error else {})
            for p in state.peers
        ]
        return {"peers": peers, "announced": sorted(str(p) for p in state.announced)}

    def stop(self, withdraw: bool) -> None:
        if self.speaker is not None:
            self.speaker.stop(withdraw=withdraw)
            self.speaker = None
