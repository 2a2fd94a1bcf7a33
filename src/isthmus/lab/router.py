"""The lab's gateway router: BIRD 2 inside `<lab>-router`, one eBGP session per node, every route it
learns installed in its kernel, equal paths merged into one multipath route (the seeds' MX spreading a
floating IP over the nodes by ECMP). It announces nothing (export none).

The router itself speaks actively and also accepts the nodes' connections; a session that drops takes its
routes with it at once (no graceful restart), and short timers let the lab see a node go within seconds.
Its files (config, control socket, pid, log) live in `<lab dir>/router/`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    name: str  # the node, also the BIRD protocol's name (its IPv6 session's: NAME-v6)
    address: str
    asn: int
    address6: str | None = None  # on an IPv6 underlay: a second session, for IPv6 routes


def config(address: str, asn: int, peers: list[Peer], address6: str | None = None) -> str:
    """BIRD 2's configuration of a router at `address` (and `address6` on an IPv6 underlay) in AS `asn`,
    peering with `peers` (over IPv6 too, for IPv6 routes); it logs to stderr."""
    sessions = "".join(
        f"protocol bgp '{p.name}' from nodes {{ neighbor {p.address} as {p.asn}; }}\n" for p in peers
    )
    sessions += "".join(
        f"protocol bgp '{p.name}-v6' from nodes6 {{ neighbor {p.address6} as {p.asn}; }}\n"
        for p in peers
        if address6 and p.address6
    )
    timers = (
        "connect delay time 1; connect retry time 2; error wait time 1, 5; hold time 9; keepalive time 3;"
    )
    six = (
        f"""protocol kernel {{ ipv6 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}
template bgp nodes6 {{
  local {address6} as {asn};
  graceful restart off;
  {timers}
  ipv6 {{ import all; export none; }};
}}
"""
        if address6
        else ""
    )
    return f"""router id {address};
log stderr all;
debug protocols {{ states }};
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}
template bgp nodes {{
  local {address} as {asn};
  graceful restart off;
  {timers}
  ipv4 {{ import all; export none; }};
}}
{six}{sessions}"""


class Bird:
    """The router's BIRD, through its files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, what: str) -> Path:
        """`conf`, `ctl` (the control socket), `pid` or `log` (its stderr)."""
        return self.directory / f"bird.{what}"

    def argv(self) -> list[str]:
        """BIRD in the foreground (its PID is the process's), with its config, socket and pid file."""
        return [
            "bird",
            "-f",
            "-c",
            str(self.path("conf")),
            "-s",
            str(self.path("ctl")),
            "-P",
            str(self.path("pid")),
        ]

    def ask(self, *command: str) -> str:
        """The answer of `birdc COMMAND` without its greeting (also an answer such as "Network not found");
        RuntimeError when BIRD does not answer."""
        done = subprocess.run(
            ["birdc", "-s", str(self.path("ctl")), *command], capture_output=True, text=True, check=False
        )
        if not done.stdout.startswith("BIRD "):
            raise RuntimeError(f"BIRD is not answering: {(done.stderr or done.stdout).strip()}")
        return done.stdout.split("\n", 1)[1]

    def sessions(self) -> dict[str, dict[str, str]]:
        """Each BGP session (by peer name): its state, neighbor address and AS, routes and last error."""
        found: dict[str, dict[str, str]] = {}
        details: dict[str, str] = {}
        for line in self.ask("show", "protocols", "all").splitlines():
            if line and not line[0].isspace():
                name, proto = line.split()[:2]
                details = found.setdefault(name, {}) if proto == "BGP" else {}
            elif ":" in line:
                key, _, value = line.strip().partition(":")
                details.setdefault(key, value.strip())
        keys = {
            "state": "BGP state",
            "address": "Neighbor address",
            "asn": "Neighbor AS",
            "routes": "Routes",
            "error": "Last error",
        }
        return {name: {k: d.get(key, "") for k, key in keys.items()} for name, d in found.items()}
