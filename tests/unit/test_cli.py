"""The isthmus command as a user runs it: apply, get, delete round trips; exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import yaml

from tests.conftest import manifest, obj, tenant_net

ISTHMUS = [sys.executable, "-m", "isthmus.cli.main"]


def run(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ISTHMUS_STATE": str(state)}
    return subprocess.run(
        [*ISTHMUS, *args], check=False, input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def test_apply_get_delete_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "state"
    files = tmp_path / "manifests"
    files.mkdir()
    (files / "10-net.yaml").write_text(manifest(*tenant_net()))
    (files / "20-eps.yaml").write_text(
        manifest(obj("Endpoint", "web-1", "acme", {"network": "red"}, labels={"app": "web"}))
    )
    (files / "README.txt").write_text("not a manifest")
    applied = run(state, "apply", "-f", str(files))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "tenant/acme created",
        "virtualnetwork/red created",
        "subnet/red-v4 created",
        "endpoint/web-1 created",
    ]
    assert run(state, "apply", "-f", str(files)).stdout.count("unchanged") == 4

    table = run(state, "get", "endpoints", "-n", "acme")
    assert table.returncode == 0
    assert table.stdout.split("\n")[1].split() == ["web-1", "pod", "red", "10.1.0.2", "<none>"]
    listed = json.loads(run(state, "get", "vn", "-A", "-o", "json").stdout)
    assert listed["kind"] == "List" and listed["items"][0]["spec"]["vni"] == 4096
    one = yaml.safe_load(run(state, "get", "ep", "web-1", "-n", "acme", "-o", "yaml").stdout)
    assert one["metadata"]["labels"] == {"app": "web"} and one["spec"]["addresses"] == ["10.1.0.2"]
    # what `get -o yaml` prints can be applied again
    assert (
        run(state, "apply", "-f", "-", stdin=run(state, "get", "all", "-A", "-o", "yaml").stdout).returncode
        == 0
    )

    refused = run(state, "delete", "virtualnetwork", "red", "-n", "acme")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "Error: VirtualNetwork/acme/red is in use by Endpoint/acme/web-1, Subnet/acme/red-v4"
    )
    deleted = run(state, "delete", "-f", str(files))
    assert deleted.returncode == 0 and deleted.stdout.splitlines()[0] == "endpoint/web-1 deleted"
    assert run(state, "get", "all", "-A").stderr.strip() == "No resources found."


def test_errors_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run(state, "apply", "-f", "-", stdin=manifest(*tenant_net())).returncode == 0
    cases = {
        "kind: Tenant\nmetadata: {name: [x\n": "malformed YAML at line",
        manifest(obj("Gadget", "g")): "unknown kind 'Gadget'",
        manifest(
            obj("Subnet", "s2", "acme", {"network": "red", "cidr": "10.1.0.0/16"})
        ): "overlaps Subnet/acme/red-v4",
        manifest(
            obj("VirtualNetwork", "blue", "acme"), obj("Endpoint", "e", "acme", {"network": "nope"})
        ): "virtual network acme/nope not found",
    }
    before = run(state, "get", "all", "-A", "-o", "json").stdout
    for text, expected in cases.items():
        result = run(state, "apply", "-f", "-", stdin=text)
        assert result.returncode == 1, text
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert run(state, "get", "all", "-A", "-o", "json").stdout == before
    missing = run(state, "get", "vn", "nope", "-n", "acme")
    assert missing.returncode == 1 and "VirtualNetwork acme/nope not found" in missing.stderr
    assert run(state, "get", "gadgets").returncode == 1
    assert (
        run(state, "apply", "-f", str(tmp_path / "absent.yaml"))
        .stderr.strip()
        .endswith("no such file or directory")
    )
    assert run(state, "delete", "vn").returncode == 2  # usage error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_api_serve_answers_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ISTHMUS_STATE": str(tmp_path / "state"), "ISTHMUS_ADMIN_TOKEN": "t0p"}
    server = subprocess.Popen(
        [*ISTHMUS, "api", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        made = httpx2.post(
            f"{url}/apis/isthmus.io/v1/tenants",
            json=obj("Tenant", "acme"),
            headers={"Authorization": "Bearer t0p"},
            timeout=5,
        )
        assert made.status_code == 201
    finally:
        server.terminate()
        server.wait(10)
    assert (
        run(tmp_path / "state", "get", "tenants").stdout.split()[-1] == "acme"
    )  # the CLI sees what the API wrote
    without = subprocess.run(
        [*ISTHMUS, "api", "serve"],
        check=False,
        env={k: v for k, v in env.items() if k != "ISTHMUS_ADMIN_TOKEN"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert without.returncode == 1 and "no admin token" in without.stderr
