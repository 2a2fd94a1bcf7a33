"""One BIRD 2 daemon driven through the files of its directory: `bird.conf` (always what BIRD has
loaded), the control socket `bird.ctl`, `bird.pid` and `bird.log`. It runs in the network namespace of
the process that starts it, as a daemon of its own: it outlives its driver, and the next one adopts it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from isthmus.bgp.control import BgpError, Control
from isthmus.files import replace_text


def _netns(pid: int | str) -> tuple[int, int]:
    found = os.stat(f"/proc/{pid}/ns/net")
    return found.st_dev, found.st_ino


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Bird:
    """Invariant: `bird.conf` holds what BIRD has loaded; a change is written to a new file renamed over
    it, then loaded by `configure`, and a configuration BIRD refuses is put back."""

    def __init__(self, directory: Path, *, bird: str = "bird") -> None:
        self.directory = directory.absolute()
        self.bird = bird
        self.config = self.directory / "bird.conf"
        self.socket = self.directory / "bird.ctl"
        self.pidfile = self.directory / "bird.pid"
        self.log = self.directory / "bird.log"
        self.control = Control(self.socket)
        self.pid: int | None = None

    def start(self, initial: str, timeout: float = 5.0) -> bool:
        """Adopt the BIRD answering in the directory, or start one with the configuration `initial`.
        True when adopted."""
        self.control.close()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.control.command("show status")
            adopted = True
        except BgpError:
            self._spawn(initial, timeout)
            adopted = False
        self.pid = self._owner()
        return adopted

    def loaded(self) -> str:
        return self.config.read_text() if self.config.exists() else ""

    def load(self, text: str) -> None:
        """Make `text` BIRD's configuration; BgpError (and the old one kept) when BIRD refuses it."""
        previous = self.loaded()
        self._write(text)
        try:
            self.control.command("configure")
        except BgpError:
            self._write(previous)
            raise

    def command(self, line: str) -> str:
        return "\n".join(self.control.command(line))

    def stop(self, *, withdraw: bool, timeout: float = 10.0) -> None:
        """withdraw=True: BIRD closes every session (its peers drop its routes at once) and exits;
        this returns once it has. withdraw=False: let go of BIRD, which goes on."""
        if withdraw:
            with contextlib.suppress(BgpError):  # not running: nothing to withdraw
                self.control.command("down")
            deadline = time.monotonic() + timeout
            while self.pid is not None and running(self.pid):
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)  # its sessions end with the process
                    break
                time.sleep(0.01)
            self.pid = None
        self.control.close()

    def _spawn(self, initial: str, timeout: float) -> None:
        """Start BIRD (it daemonizes once its configuration is read) and wait until it answers."""
        self._write(initial)
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

    def _write(self, text: str) -> None:
        replace_text(self.config, text)
