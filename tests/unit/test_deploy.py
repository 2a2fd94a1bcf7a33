"""The deployment files (deploy/) agree with the code: etcd's flags, the commands and options of the units."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import pytest

from isthmus.cli.main import cli
from isthmus.store.etcd_member import LIMITS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_etcd_env_sets_the_projects_limits() -> None:
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "etcd.env").read_text().splitlines() if line[:1].isalpha()
    )
    for flag, value in LIMITS.items():
        name = "ETCD_" + flag.removeprefix("--").replace("-", "_").upper()
        assert env.get(name) == value, f"{name} in deploy/etcd.env should be {value}, as {flag} in the lab"


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_units_run_commands_and_options_that_exist(unit: Path) -> None:
    start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(start.removeprefix("ExecStart="))
    assert argv[0] == "/opt/isthmus/bin/isthmus"
    command: click.Command = cli
    words = [w for w in argv[1:] if not w.startswith("$")]
    while isinstance(command, click.Group) and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    assert not isinstance(command, click.Group), f"{unit.name}: {start} names no command"
    known = {o for p in command.params for o in getattr(p, "opts", [])}
    used = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    assert used <= known, f"{unit.name}: unknown options {sorted(used - known)}"


def test_cni_configuration_names_the_agents_socket() -> None:
    config = json.loads((DEPLOY / "10-isthmus.conflist").read_text())
    agent = (DEPLOY / "systemd" / "isthmus-agent.service").read_text()
    assert config["cniVersion"] == "1.1.0"
    assert f"--socket {config['plugins'][0]['socket']}" in agent
