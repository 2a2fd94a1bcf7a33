"""The node's BGP speaker: one BIRD (`bird.Bird`), in the network namespace of the process driving it,
announcing the node's prefixes to its peers. BIRD outlives the agent (a killed agent's announcements stay,
and its flows with them) and the next agent adopts it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from isthmus.bgp.bird import Bird
from isthmus.bgp.config import STATIC, Prefix, Settings, render
from isthmus.bgp.control import PeerState, parse_protocols, parse_static


@dataclass(frozen=True)
class SpeakerState:
    """The sessions, and the prefixes BIRD offers every established peer of their family."""

    peers: tuple[PeerState, ...]
    announced: frozenset[Prefix]


class Speaker:
    """Drives the BIRD of `directory`. Invariant once started: BIRD's configuration is rendered from
    `settings` and `announced`, which is what BIRD announces. One Speaker per directory at a time; not
    thread-safe. After a BgpError from any method, `start()` again: it starts BIRD anew or adopts it,
    and reads what it announces."""

    def __init__(self, directory: Path, settings: Settings, *, bird: str = "bird") -> None:
        self.process = Bird(directory, bird=bird)
        self.directory = self.process.directory
        self.settings = settings
        self.announced: frozenset[Prefix] = frozenset()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self, timeout: float = 5.0) -> bool:
        """Adopt the BIRD running in the directory, keeping what it announces, or start one announcing
        nothing; either way load the settings (sessions whose settings did not change go on). True when
        adopted."""
        adopted = self.process.start(render(self.settings, (), self.process.log), timeout)
        self._load(self.settings, self._static())
        return adopted

    def announce(self, prefixes: Iterable[Prefix]) -> bool:
        """Make BIRD announce exactly `prefixes` (at once: one file write and one `configure`). False,
        touching nothing, when it already does."""
        wanted = frozenset(prefixes)
        for prefix in wanted:
            if not isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise TypeError(f"{prefix!r} is not an IPv4Network or IPv6Network")
        if wanted == self.announced:
            return False
        self._load(self.settings, wanted)
        return True

    def configure(self, settings: Settings) -> bool:
        """Load new settings (peers added, removed or changed), keeping the announcements. Sessions whose
        settings did not change go on. False, touching nothing, when they are the same."""
        if settings == self.settings:
            return False
        self._load(settings, self.announced)
        return True

    def state(self) -> SpeakerState:
        """The sessions as BIRD reports them, and what its static protocols hold."""
        peers = parse_protocols(self.process.command("show protocols all"))
        return SpeakerState(tuple(peers), self._static())

    def stop(self, *, withdraw: bool, timeout: float = 10.0) -> None:
        """withdraw=True: BIRD closes every session (its peers drop its routes at once) and exits;
        this returns once it has. withdraw=False: let go of BIRD, which goes on announcing."""
        self.process.stop(withdraw=withdraw, timeout=timeout)

    def _static(self) -> frozenset[Prefix]:
        """What BIRD's static protocols hold: what it announces."""
        replies = (self.process.command(f"show static {name}") for name in STATIC.values())
        return frozenset[Prefix]().union(*(parse_static(r) for r in replies))

    def _load(self, settings: Settings, prefixes: frozenset[Prefix]) -> None:
        self.process.load(render(settings, prefixes, self.process.log))
        self.settings, self.announced = settings, prefixes
