"""Failover of a singleton controller: from the leader's SIGKILL to the standby's first fenced commit."""

from __future__ import annotations

import signal
import statistics
import tempfile
import time
from pathlib import Path

from tests.etcdenv import EtcdCluster
from tests.replicas import Replica

from bench.harness import Figures, Goal, benchmark

TTL = 5.0  # the controllers' default lease (store/election.py), as in production
ROUNDS = 3


@benchmark("failover", units={"takeover_s": "s", "takeover_max_s": "s"}, goals=(Goal("takeover_s", "<", 6),))
def failover() -> Figures:
    """Two replicas of a controller on a 3-member etcd with the default 5 s lease; the leader SIGKILLed
    while it writes every 20 ms: seconds until the standby's first fenced commit (Kubernetes' leader
    election defaults give 15 s). Three rounds, the killed replica started again as the next standby."""
    takeovers = []
    with tempfile.TemporaryDirectory(prefix="isthmus-failover-") as tmp:
        members = EtcdCluster(Path(tmp), size=3, fast=False)
        replicas: list[Replica] = []
        try:
            replicas.append(Replica(members.url, "r0", TTL))
            replicas[0].says("writing", 30)
            for i in range(1, ROUNDS + 1):
                replicas.append(Replica(members.url, f"r{i}", TTL))
                time.sleep(TTL)  # the standby has seen the heartbeat move
                leader, standby = replicas[-2], replicas[-1]
                leader.process.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                standby.says("writing", 30)
                takeovers.append(time.monotonic() - killed)
        finally:
            for replica in replicas:
                replica.stop()
            members.stop()
    return {"takeover_s": statistics.median(takeovers), "takeover_max_s": max(takeovers)}
