"""Fixtures of the integration tests: one real control plane per session, nodes standing in for kubelets."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kubeenv import TESTENV, Cluster, Manager, NodeStandIn


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("kube")
    up = subprocess.run([str(TESTENV), "up", str(directory)], capture_output=True, text=True, check=False)
    if up.returncode != 0:
        subprocess.run([str(TESTENV), "down", str(directory)], capture_output=True, check=False)
        pytest.fail(
            f"kube-testenv up failed (binaries built? scripts/kube-testenv build):\n{up.stderr[-2000:]}"
        )
    try:
        found = Cluster(directory)
        nodes = NodeStandIn(found)
        yield found
        nodes.close()
    finally:
        subprocess.run([str(TESTENV), "down", str(directory)], check=True, capture_output=True)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def managers() -> Iterator[list[Manager]]:
    """Managers a test starts; whatever the outcome, none outlives it."""
    started: list[Manager] = []
    yield started
    for manager in started:
        if manager.process.poll() is None:
            manager.kill()
