"""BIRD's control socket, spoken directly (what `birdc` does, without a process per command), and the
parsing of its answers as `birdc` prints them."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from isthmus.bgp.config import Prefix
from isthmus.model.meta import IPAddress

_EXPORTED = re.compile(r"(\d+) exported")


class BgpError(RuntimeError):
    """BIRD is missing, did not start, does not answer, or refused a command; the message says which."""


@dataclass(frozen=True)
class PeerState:
    """One BGP session as BIRD reports it. `state` is BIRD's BGP state (Idle, Connect, Active, OpenSent,
    OpenConfirm, Established, Close, Down); `since` is its protocol's last change of state; `error` the
    last error BIRD shows, if any; `exported` how many routes the peer is sent."""

    address: IPAddress
    asn: int
    state: str
    since: datetime
    error: str | None
    exported: int


class Control:
    """A connection to BIRD's control socket at `path`, opened on first use. Invariant: between
    commands nothing is left unread on it."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

    def command(self, line: str) -> list[str]:
        """Run one command; the answer's lines as birdc prints them. Raises BgpError on BIRD's error
        codes (8xxx, 9xxx) and when BIRD does not answer (the connection is then closed)."""
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(line.encode() + b"\n")
            reply, code = self._read()
        except OSError as exc:
            self.close()
            raise BgpError(f"BIRD at {self.path} does not answer: {exc}") from exc
        if code >= 8000:
            raise BgpError(f"BIRD refused {line!r}: {reply[-1]}")
        return reply

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def _connect(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(self.timeout)
        self._reader = self._sock.makefile("rb")
        self._sock.connect(str(self.path))
        self._read()  # the greeting, 0001

    def _read(self) -> tuple[list[str], int]:
        """Lines up to the one that ends the answer (a code and a space), and that code."""
        assert self._reader is not None
        lines: list[str] = []
        while True:
            raw = self._reader.readline()
            if not raw.endswith(b"\n"):
                raise ConnectionError("connection closed in mid-answer")
            text = raw.decode(errors="replace").rstrip("\n")
            if text[:1] == " ":
                lines.append(text[1:])
                continue
            lines.append(text[5:])
            if text[4:5] != "-":
                return lines, int(text[:4])


def parse_protocols(text: str) -> list[PeerState]:
    """The BGP sessions in `show protocols all` as birdc prints it (with this package's time format)."""
    peers: list[PeerState] = []
    fields: dict[str, str] | None = None

    def done() -> None:
        if fields is not None and "Neighbor address" in fields:
            peers.append(
                PeerState(
                    address=ipaddress.ip_address(fields["Neighbor address"]),
                    asn=int(fields["Neighbor AS"]),
                    state=fields.get("BGP state", "Down"),
                    since=datetime.fromtimestamp(float(fields["since"]), UTC),
                    error=fields.get("Last error"),
                    exported=int(fields.get("exported", "0")),
                )
            )

    for line in text.splitlines():
        if line[:1] not in ("", " "):
            done()
            columns = line.split(None, 5)
            fields = {"since": columns[4]} if len(columns) >= 5 and columns[1] == "BGP" else None
        elif fields is not None and ":" in line:
            key, _, value = line.strip().partition(":")
            if key == "Routes" and (found := _EXPORTED.search(value)):
                fields["exported"] = str(int(fields.get("exported", "0")) + int(found[1]))
            else:
                fields.setdefault(key, value.strip())
    done()
    return peers


def parse_static(text: str) -> frozenset[Prefix]:
    """The routes of `show static NAME`: one `PREFIX<tab>blackhole` a line."""
    return frozenset(ipaddress.ip_network(line.split()[0]) for line in text.splitlines() if line.strip())
