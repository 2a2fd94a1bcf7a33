"""The node's BGP speaker: one BIRD, in the network namespace of the process driving it, whose
configuration, control socket, pid file and log live in one directory. BIRD runs as a daemon of its own:
it outlives the agent (a killed agent's announcements stay, and its flows with them) and the next agent
adopts it."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from isthmus.bgp.config import STATIC, Prefix, Settings, render
from isthmus.bgp.control import BgpError, Control, PeerState, parse_protocols, parse_static


@dataclass(frozen=True)
class SpeakerState:
    """The sessions, and the prefixes BIRD offers every established peer of their family."""

    peers: tuple[PeerState, ...]
    announced: frozenset[Prefix]


def _netns(pid: int | str) -> tuple[int, int]:
    found = os.stat(f"/proc/{pid}/ns/net")
    return found.st_dev, found.st_ino


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Speaker:
    """Drives the BIRD of `directory`. Invariants once started: `bird.conf` holds the configuration BIRD
    has loaded, rendered from `settings` and `announced`, which is what BIRD announces; a change is
    written to a new file renamed over the old one, then loaded by `configure`, and a configuration BIRD
    refuses is put back. One Speaker per directory at a time; not thread-safe. After a BgpError from
    any method, `start()` again: it starts BIRD anew or adopts it, and reads what it announces."""

    def __init__(self, directory: Path, settings: Settings, *, bird: str = "bird") -> None:
        self.directory = directory.absolute()
        self.settings = settings
        self.bird = bird
        self.config = self.directory / "bird.conf"
        self.socket = self.directory / "bird.ctl"
        self.pidfile = self.directory / "bird.pid"
        self.log = self.directory / "bird.log"
        self.control = Control(self.socket)
        self.announced: frozenset[Prefix] = frozenset()
        self.pid: int | None = None

    def start(self, timeout: float = 5.0) -> bool:
        """Adopt the BIRD running in the directory, keeping what it announces, or start one announcing
        nothing; either way load the settings (sessions whose settings did not change go on). True when
        adopted."""
        self.control.close()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.control.command("show status")
            adopted = True
        except BgpError:
            self._spawn(timeout)
            adopted = False
        self.pid = self._owner()
        previous = self.config.read_text() if self.config.exists() else ""
        self._load(self.settings, self._static(), previous)
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
        self._load(self.settings, wanted, self.config.read_text())
        return True

    def configure(self, settings: Settings) -> bool:
        """Load new settings (peers added, removed or changed), keeping the announcements. Sessions whose
        settings did not change go on. False, touching nothing, when they are the same."""
        if settings == self.settings:
            return False
        self._load(settings, self.announced, self.config.read_text())
        return True

    def state(self) -> SpeakerState:
        """The sessions as BIRD reports them, and what its static protocols hold."""
        peers = parse_protocols("\n".join(self.control.command("show protocols all")))
        return SpeakerState(tuple(peers), self._static())

    def stop(self, *, withdraw: bool, timeout: float = 10.0) -> None:
        """withdraw=True: BIRD closes every session (its peers drop its routes at once) and exits;
        this returns once it has. withdraw=False: let go of BIRD, which goes on announcing."""
        if withdraw:
            with contextlib.suppress(BgpError):  # not running: nothing to withdraw
                self.control.command("down")
            deadline = time.monotonic() + timeout
            while self.pid is not None and _running(self.pid):
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)  # its sessions end with the process
                    break
                time.sleep(0.01)
            self.pid = None
        self.control.close()

    def _spawn(self, timeout: float) -> None:
        """Start BIRD (it daemonizes once its configuration is read) and wait until it answers."""
        self._write(render(self.settings, (), self.log))
        argv = [self.bird, "-c", str(self.config), "-s", str(self.socket), "-P", str(self.pidfile)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            raise BgpError(f"{self.bird} not found: install BIRD 2 (Debian package bird2)") from exc
        if done.returncode != 0:
            raise BgpError(f"BIRD did not start in {self.directory}: {done.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.control.command("show status")
                return
            except BgpError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _owner(self) -> int:
        """The pid of the BIRD answering, which must run in this network namespace."""
        try:
            pid = int(self.pidfile.read_text())
            same = _netns(pid) == _netns("self")
        except (OSError, ValueError) as exc:
            raise BgpError(f"no BIRD process behind {self.pidfile}: {exc}") from exc
        if not same:
            raise BgpError(f"the BIRD of {self.directory} (pid {pid}) runs in another network namespace")
        return pid

    def _static(self) -> frozenset[Prefix]:
        """What BIRD's static protocols hold: what it announces."""
        replies = (self.control.command(f"show static {name}") for name in STATIC.values())
        return frozenset[Prefix]().union(*(parse_static("\n".join(r)) for r in replies))

    def _load(self, settings: Settings, prefixes: frozenset[Prefix], previous: str) -> None:
        self._write(render(settings, prefixes, self.log))
        try:
            self.control.command("configure")
        except BgpError:
            self._write(previous)
            raise
        self.settings, self.announced = settings, prefixes

    def _write(self, text: str) -> None:
        new = self.config.with_suffix(".new")
        new.write_text(text)
        new.replace(self.config)
