"""Real etcd members for the tests: Debian's etcd, started with the project's flags on loopback ports."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from isthmus.lab.fabric import DEPLOY
from isthmus.store import Credentials, EtcdLedger, Unavailable, open_store
from isthmus.store.etcd_member import LIMITS, MemberTLS, member_argv

FAST = {"--heartbeat-interval": "10", "--election-timeout": "100"}  # one member on an idle loopback


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports of 127.0.0.1 (bound together, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports: list[int] = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class EtcdCluster:
    """N members on 127.0.0.1, each with its own data directory under `root`; stopped by `stop()`.

    `limits=False` drops the project's flags (etcd_member.LIMITS): the members run at etcd's defaults.
    """

    ATTEMPTS = 3  # a port found free may be taken before etcd binds it: start again on others

    def __init__(
        self, root: Path, size: int = 1, fast: bool = True, limits: bool = True, tls: bool = False
    ) -> None:
        self.root, self.limits = root, limits
        self.names = [f"m{i}" for i in range(1, size + 1)]
        self.credentials = Credentials()
        if tls:  # certificates by deploy/isthmus-pki; the client `admin`
            pki = root / "pki"
            for step in (["ca"], *(["member", n, "127.0.0.1"] for n in self.names), ["client", "admin"]):
                subprocess.run([str(DEPLOY / "isthmus-pki"), str(pki), *step], check=True)
            self.credentials = Credentials(*(str(pki / f) for f in ("ca.crt", "admin.crt", "admin.key")))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for attempt in range(self.ATTEMPTS):
            self._configure(tls, fast, limits)
            try:
                for name in self.names:
                    self.start(name)
                self.wait_ready()
                return
            except BaseException:
                self.stop()
                for name in self.names:
                    shutil.rmtree(root / name, ignore_errors=True)
                if attempt == self.ATTEMPTS - 1:
                    raise

    def _configure(self, tls: bool, fast: bool, limits: bool) -> None:
        """Each member's command line, on new free ports."""
        ports = free_ports(2 * len(self.names))
        self.clients = {n: f"127.0.0.1:{ports.pop()}" for n in self.names}
        scheme = "https" if tls else "http"
        peers = {n: f"{scheme}://127.0.0.1:{ports.pop()}" for n in self.names}
        pki = self.root / "pki"
        self.argv = {
            n: member_argv(
                n,
                self.root / n,
                [f"{scheme}://{self.clients[n]}"],
                peers[n],
                peers,
                MemberTLS(pki / "ca.crt", pki / f"{n}.crt", pki / f"{n}.key") if tls else None,
                extra=FAST if fast else None,
            )
            for n in self.names
        }
        if not limits:
            for argv in self.argv.values():
                argv[:] = [arg for arg in argv if arg.split("=")[0] not in LIMITS]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.clients.values())

    def ledger(self) -> EtcdLedger:
        ledger = open_store(self.url, self.credentials)
        assert isinstance(ledger, EtcdLedger)
        return ledger

    def start(self, name: str) -> None:
        with (self.root / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(self.argv[name], stdout=log, stderr=log, cwd=self.root)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the cluster answers; a member that exited (its port taken meanwhile) fails at once, with
        its log."""
        ledger = self.ledger()
        deadline = time.monotonic() + timeout
        while True:
            try:
                ledger.revision()
                break
            except Unavailable:
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    logs = {n: (self.root / f"{n}.log").read_text()[-1500:] for n in dead}
                    raise RuntimeError(f"etcd members {dead or 'all'} not ready: {logs}") from None
                time.sleep(0.02)
        ledger.close()

    def stop(self) -> None:
        """Stop every member still running, one after the other: a leader stopping hands over to a live
        member at once, where it would wait 5 s for members stopping with it. SIGKILL after 10 s."""
        for process in self.processes.values():
            process.send_signal(signal.SIGCONT)  # a member paused by a test could not handle SIGTERM
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
