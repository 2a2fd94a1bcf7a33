"""The speaker's own logic against a stand-in for BIRD's control socket that answers as BIRD 2.0.12 does:
adoption, no-op announcements, a refused configuration put back, and errors that name the problem.
Real BIRD and real sessions: tests/integration/test_bgp.py."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from isthmus.bgp import BgpError, Settings, Speaker
from isthmus.model.network import BgpPeer

SETTINGS = Settings(ipaddress.ip_address("10.0.0.10"), 65001, (BgpPeer(address="10.0.0.1", asn=65000),))
P5, P6 = ipaddress.ip_network("203.0.113.5/32"), ipaddress.ip_network("203.0.113.6/32")
BLOCK = ipaddress.ip_network("198.51.100.0/24")


class FakeBird:
    """Answers like a BIRD announcing 203.0.113.5/32 and 198.51.100.0/24, from a socket in `directory`,
    with a pid file naming this process (so it runs in this network namespace)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "bird.pid").write_text(str(os.getpid()))
        self.commands: list[str] = []
        self.refuse_configure = False
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(directory / "bird.ctl"))
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _answer(self, command: str) -> bytes:
        if command == "configure":
            if self.refuse_configure:
                return b"0002-Reading configuration from c\n8002 c:4:1 syntax error, unexpected GARBAGE\n"
            return b"0002-Reading configuration from c\n0003 Reconfigured\n"
        answers = {
            "show status": b"1000-BIRD 2.0.12\n1011-Router ID is 10.0.0.10\n Hostname is vm\n0013 Up\n",
            "show static announce4": b"1009-203.0.113.5/32\tblackhole\n 198.51.100.0/24\tblackhole\n0000 \n",
            "show static announce6": b"0000 \n",
        }
        return answers.get(command, b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n")

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection, connection.makefile("rwb") as stream:
                stream.write(b"0001 BIRD 2.0.12 ready.\n")
                stream.flush()
                for line in stream:
                    self.commands.append(line.decode().strip())
                    stream.write(self._answer(self.commands[-1]))
                    stream.flush()


@pytest.fixture
def bird(tmp_path: Path) -> Iterator[FakeBird]:
    fake = FakeBird(tmp_path / "bgp")
    yield fake
    fake.server.close()


def test_a_running_bird_is_adopted_with_what_it_announces(bird: FakeBird, tmp_path: Path) -> None:
    speaker = Speaker(tmp_path / "bgp", SETTINGS)
    assert speaker.start() is True
    assert speaker.announced == {P5, BLOCK}
    assert (
        "route 198.51.100.0/24 blackhole;\n  route 203.0.113.5/32 blackhole;"
        in speaker.process.config.read_text()
    )
    assert bird.commands[-1] == "configure"
    speaker.stop(withdraw=False)


def test_an_unchanged_announcement_or_configuration_asks_nothing_of_bird(
    bird: FakeBird, tmp_path: Path
) -> None:
    speaker = Speaker(tmp_path / "bgp", SETTINGS)
    speaker.start()
    asked = len(bird.commands)
    assert speaker.announce([BLOCK, P5]) is False
    assert speaker.configure(SETTINGS) is False
    assert len(bird.commands) == asked
    assert speaker.announce([P5, P6]) is True
    assert bird.commands[asked:] == ["configure"]
    assert speaker.announced == {P5, P6}
    assert "198.51.100.0" not in speaker.process.config.read_text()
    speaker.stop(withdraw=False)


def test_a_refused_configuration_is_put_back_and_named(bird: FakeBird, tmp_path: Path) -> None:
    speaker = Speaker(tmp_path / "bgp", SETTINGS)
    speaker.start()
    loaded = speaker.process.config.read_text()
    bird.refuse_configure = True
    with pytest.raises(BgpError, match="BIRD refused 'configure': c:4:1 syntax error, unexpected GARBAGE"):
        speaker.announce([P6])
    assert speaker.process.config.read_text() == loaded
    assert speaker.announced == {P5, BLOCK}
    speaker.stop(withdraw=False)


def test_missing_bird_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        BgpError, match=r"/nonexistent/bird not found: install BIRD 2 \(Debian package bird2\)"
    ):
        Speaker(tmp_path / "bgp", SETTINGS, bird="/nonexistent/bird").start(timeout=1)


def test_calls_before_start_say_bird_does_not_answer(tmp_path: Path) -> None:
    with pytest.raises(BgpError, match="does not answer"):
        Speaker(tmp_path / "bgp", SETTINGS).state()


def test_prefixes_must_be_networks(bird: FakeBird, tmp_path: Path) -> None:
    speaker = Speaker(tmp_path / "bgp", SETTINGS)
    speaker.start()
    with pytest.raises(TypeError, match=r"203\.0\.113\.9"):
        speaker.announce([ipaddress.ip_address("203.0.113.9")])  # type: ignore[list-item]
    speaker.stop(withdraw=False)
