"""`isthmus apply --dry-run=impact`: the connections a change would open and close, from the matrices
before and after, with nothing stored; a default-deny policy lists exactly the cells the matrix then
loses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from isthmus.store import open_ledger
from tests.unit.netpol_model import model_manifests
from tests.unit.test_netpol_matrix import ok, run, write

DENY_X = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-all", "namespace": "x"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}
ONLY_81 = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "only-81", "namespace": "y"},
    "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]},
}


def _allowed(state: Path, port: int, protocol: str) -> set[tuple[str, str]]:
    shown = ok(
        run(
            "--state",
            str(state),
            "matrix",
            "--port",
            str(port),
            "--protocol",
            protocol,
            "--to",
            "pods",
            "-o",
            "json",
        ),
        "matrix",
    )
    grid = json.loads(shown.output)["allowed"]
    return {(s, d) for s, row in grid.items() for d, allowed in row.items() if allowed and s != d}


def _revision(state: Path) -> int:
    ledger = open_ledger(str(state))
    try:
        return ledger.revision()
    finally:
        ledger.close()


def _impact(state: Path, path: Path, *args: str) -> dict[str, Any]:
    shown = ok(
        run("--state", str(state), "apply", "--dry-run=impact", "-f", str(path), *args, "-o", "json"), "apply"
    )
    found: dict[str, Any] = json.loads(shown.output)
    return found


def _model(tmp_path: Path) -> Path:
    """A ledger holding the upstream model (x, y, z; a, b, c; ports 80 and 81 in TCP): its state."""
    state = tmp_path / "state"
    model = write(tmp_path / "model.yaml", model_manifests((80, 81), ("TCP",)))
    ok(run("--state", str(state), "apply", "-f", str(model)), "apply")
    return state


def test_a_default_deny_lists_exactly_the_cells_the_matrix_then_loses(tmp_path: Path) -> None:
    state = _model(tmp_path)
    before, revision = _allowed(state, 80, "TCP"), _revision(state)
    deny = write(tmp_path / "deny.yaml", [DENY_X])
    found = _impact(state, deny, "--port", "80")
    assert _revision(state) == revision  # nothing stored
    assert found["ports"] == ["80/TCP"] and found["opens"] == []
    closes = {(c["source"], c["destination"]) for c in found["closes"]}
    ok(run("--state", str(state), "apply", "-f", str(deny)), "apply")
    lost = before - _allowed(state, 80, "TCP")
    assert closes == lost and len(lost) == 24  # the 8 other pods to each of x's 3
    text = ok(run("--state", str(state), "apply", "--dry-run=impact", "-f", str(deny)), "apply").output
    assert "0 connections close, 0 open (nothing stored)" in text  # applied already: no change
    allow = {**DENY_X, "metadata": {"name": "allow-80", "namespace": "x"}}
    allow["spec"] = {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}
    found = _impact(state, write(tmp_path / "allow.yaml", [allow]))
    assert {(c["source"], c["destination"]) for c in found["opens"]} == lost and found["closes"] == []


def test_the_ports_the_policies_name_are_compared_unless_ports_are_given(tmp_path: Path) -> None:
    state = _model(tmp_path)
    found = _impact(state, write(tmp_path / "only.yaml", [ONLY_81]))
    assert found["ports"] == ["81/TCP"] and found["closes"] == [] and found["opens"] == []  # 81 stays open
    found = _impact(state, write(tmp_path / "only.yaml", [ONLY_81]), "--port", "80/TCP", "--port", "81")
    assert len(found["closes"]) == 24 and {c["port"] for c in found["closes"]} == {80}
    bad = run(
        "--state",
        str(state),
        "apply",
        "--dry-run=impact",
        "-f",
        str(tmp_path / "only.yaml"),
        "--port",
        "http",
    )
    assert bad.exit_code == 2 and "'http' is not PORT[/PROTOCOL]" in bad.output
