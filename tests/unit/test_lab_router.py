"""The lab router's BIRD configuration and how its sessions are read; a lab without a router says so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from isthmus.lab.control import Lab, LabError
from isthmus.lab.fabric import Fabric
from isthmus.lab.router import Bird, Peer, config

PEERS = [Peer("node-1", "192.168.77.10", 64512), Peer("node.2", "192.168.77.11", 65001)]
# `birdc show protocols all` of a router with one session up and one waiting (BIRD 2.0.12), shortened.
SHOWN = """Name       Proto      Table      State  Since         Info
device1    Device     ---        up     08:55:43.661

kernel1    Kernel     master4    up     08:55:43.661
  Channel ipv4
    State:          UP
    Routes:         0 imported, 1 exported, 0 preferred

node-1     BGP        ---        up     08:55:46.466  Established
  BGP state:          Established
    Neighbor address: 192.168.77.10
    Neighbor AS:      64512
    Local AS:         64500
    Local capabilities
      Multiprotocol
        AF announced: ipv4
    Hold timer:       7.409/9
  Channel ipv4
    State:          UP
    Routes:         1 imported, 0 exported, 1 preferred

node.2     BGP        ---        start  08:55:43.661  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 192.168.77.11
    Neighbor AS:      65001
    Local AS:         64500
    Last error:       Socket: Connection refused
  Channel ipv4
    State:          DOWN
"""


def test_the_config_has_a_session_per_node_multipath_into_the_kernel_and_exports_nothing() -> None:
    text = config("192.168.77.1", 64500, PEERS)
    assert "protocol bgp 'node-1' from nodes { neighbor 192.168.77.10 as 64512; }" in text
    assert "protocol bgp 'node.2' from nodes { neighbor 192.168.77.11 as 65001; }" in text
    assert "local 192.168.77.1 as 64500;" in text and "router id 192.168.77.1;" in text
    assert "merge paths on" in text and "export where source = RTS_BGP" in text
    assert "import all; export none;" in text and "graceful restart off;" in text


@pytest.mark.skipif(not shutil.which("bird"), reason="needs BIRD 2 (scripts/bootstrap)")
def test_bird_accepts_the_config(tmp_path: Path) -> None:
    (tmp_path / "bird.conf").write_text(config("192.168.77.1", 64500, PEERS))
    parsed = subprocess.run(
        ["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, parsed.stderr


def test_sessions_are_read_per_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bird = Bird(tmp_path)
    monkeypatch.setattr(bird, "ask", lambda *command: SHOWN)
    assert bird.sessions() == {
        "node-1": {
            "state": "Established",
            "address": "192.168.77.10",
            "asn": "64512",
            "routes": "1 imported, 0 exported, 1 preferred",
            "error": "",
        },
        "node.2": {
            "state": "Active",
            "address": "192.168.77.11",
            "asn": "65001",
            "routes": "",
            "error": "Socket: Connection refused",
        },
    }


def test_a_bird_that_does_not_answer_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="BIRD is not answering"):
        Bird(tmp_path).sessions()


def test_a_lab_without_a_router_says_so(tmp_path: Path) -> None:
    lab = Lab(Fabric("zz-", tmp_path / "state", tmp_path, nodes={"node-1": "192.168.77.10"}))
    for ask in (lab.sessions, lab.routes):
        with pytest.raises(LabError, match="this lab has no router"):
            ask()
    for name in ("router", "outside"):
        with pytest.raises(LabError, match="no such node or running pod"):
            lab.netns(name)
