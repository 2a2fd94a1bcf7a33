"""The Neutron API: port create latency with 10,000 ports stored, through the API as a client sends it."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from bench.dataplane import _percentile
from bench.harness import Figures, Goal, benchmark
from isthmus import intent
from isthmus.api import create_app
from isthmus.model import Tenant
from isthmus.neutron import shapes
from isthmus.store.sqlite import SqliteLedger

ADMIN = "bench-admin"
TIMED = 200  # port creates measured at each size


def _creates(client: TestClient, headers: dict[str, str], network: str, count: int) -> list[float]:
    """Milliseconds of each of `count` port creates."""
    taken = []
    for i in range(count):
        body = {"port": {"network_id": network, "name": f"timed-{i}", "device_owner": "compute:nova"}}
        started = time.perf_counter()
        answer = client.post("/v2.0/ports", json=body, headers=headers)
        taken.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 201, answer.text
    return taken


@benchmark(
    "neutron-ports",
    units={
        "create_p50_ms_100": "ms",
        "create_p99_ms_100": "ms",
        "create_p50_ms_10k": "ms",
        "create_p99_ms_10k": "ms",
    },
    ratios={"p50_10k_vs_100": ("create_p50_ms_10k", "create_p50_ms_100")},
    goals=(Goal("create_p99_ms_10k", "<", 50),),
)
def neutron_ports() -> Figures:
    """POST /v2.0/ports (Keystone token, the project's default security group, an address from a /16) on a
    SQLite ledger: p50 and p99 of 200 creates with 100 ports stored, then with 10,000 (filled through the
    same conversion the API uses, in batches)."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = SqliteLedger(Path(tmp) / "ledger.sqlite")
        client = TestClient(create_app(ledger, ADMIN))
        intent.apply(ledger, [Tenant.model_validate({"metadata": {"name": "bench"}})])
        auth = {
            "identity": {"methods": ["token"], "token": {"id": ADMIN}},
            "scope": {"project": {"name": "bench"}},
        }
        headers = {
            "X-Auth-Token": client.post("/v3/auth/tokens", json={"auth": auth}).headers["X-Subject-Token"]
        }
        network = client.post("/v2.0/networks", json={"network": {"name": "n"}}, headers=headers).json()[
            "network"
        ]
        subnet = {"subnet": {"network_id": network["id"], "cidr": "10.64.0.0/16", "ip_version": 4}}
        assert client.post("/v2.0/subnets", json=subnet, headers=headers).status_code == 201
        figures: Figures = {}
        stored = 0
        for size, label in ((100, "100"), (10_000, "10k")):
            while stored < size - TIMED * (label == "10k"):
                batch = min(1000, size - stored)
                ports = [
                    shapes.to_port({"name": f"p{stored + i}"}, "bench", network["id"], ["default"], None)
                    for i in range(batch)
                ]
                intent.apply(ledger, ports)
                stored += batch
            taken = _creates(client, headers, network["id"], TIMED)
            stored += TIMED
            figures[f"create_p50_ms_{label}"] = statistics.median(taken)
            figures[f"create_p99_ms_{label}"] = _percentile(taken, 0.99)
        ledger.close()
    return figures
