"""Replicas of a controller as processes of their own, for tests and benchmarks of the leader election:
each leads when elected, then writes through its fence every 20 ms until deposed (exit 3) or stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

REPLICA = """
import signal, sys, threading, time
from isthmus.store import Credentials, open_store
from isthmus.store.election import Deposed, Election
ledger = open_store(sys.argv[1], Credentials())
election = Election(ledger, "ctl", sys.argv[2], ttl=float(sys.argv[3]))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
election.lead(stop)
print("leading", flush=True)
fenced, count = election.fenced(), 0
while not stop.is_set():
    try:
        fenced.commit({}, [("/w/" + sys.argv[2], str(count).encode())])
    except Deposed:
        print("deposed", flush=True)
        sys.exit(3)
    if count == 0:
        print("writing", flush=True)
    count += 1
    time.sleep(0.02)
election.resign()
"""  # a replica: leads, then writes through the fence every 20 ms until deposed or stopped


class Replica:
    def __init__(self, store: str, name: str, ttl: float) -> None:
        self.name = name
        argv = [sys.executable, "-c", REPLICA, store, name, str(ttl)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.said: list[str] = []
        self.heard = threading.Condition()
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.heard:
                self.said.append(line.strip())
                self.heard.notify_all()

    def says(self, word: str, within: float) -> float:
        """Seconds until the replica says `word` (fails after `within`)."""
        started = time.monotonic()
        with self.heard:
            assert self.heard.wait_for(lambda: word in self.said, within), f"{self.name} said {self.said}"
        return time.monotonic() - started

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait()
