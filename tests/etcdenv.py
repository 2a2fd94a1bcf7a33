"""Real etcd members for the tests: Debian's etcd, started with the project's flags on loopback ports."""

from __future__ import annotations

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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdCluster:
    """N members on 127.0.0.1, each with its own data directory under `root`; stopped by `stop()`.

    `limits=False` drops the project's flags (etcd_member.LIMITS): the members run at etcd's defaults.
    """

    def __init__(
        self, root: Path, size: int = 1, fast: bool = True, limits: bool = True, tls: bool = False
    ) -> None:
        self.root, self.limits = root, limits
        names = [f"m{i}" for i in range(1, size + 1)]
        self.clients = {n: f"127.0.0.1:{free_port()}" for n in names}
        scheme = "https" if tls else "http"
        peers = {n: f"{scheme}://127.0.0.1:{free_port()}" for n in names}
        self.credentials = Credentials()
        if tls:  # certificates by deploy/isthmus-pki; the client `admin`
            pki = root / "pki"
            for step in (["ca"], *(["member", n, "127.0.0.1"] for n in names), ["client", "admin"]):
                subprocess.run([str(DEPLOY / "isthmus-pki"), str(pki), *step], check=True)
            self.credentials = Credentials(*(str(pki / f) for f in ("ca.crt", "admin.crt", "admin.key")))
        self.argv = {
            n: member_argv(
                n,
                root / n,
                [f"{scheme}://{self.clients[n]}"],
                peers[n],
                peers,
                MemberTLS(root / "pki" / "ca.crt", root / "pki" / f"{n}.crt", root / "pki" / f"{n}.key")
                if tls
                else None,
                extra=FAST if fast else None,
            )
            for n in names
        }
        if not limits:
            for argv in self.argv.values():
                argv[:] = [arg for arg in argv if arg.split("=")[0] not in LIMITS]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in names:
                self.start(name)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

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
        ledger = self.ledger()
        deadline = time.monotonic() + timeout
        while True:
            try:
                ledger.revision()
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
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
