"""Labs for benchmarks, driven through the CLI as a user would: up with a unique name in a directory of its
own, manifests applied and settled, and on the way out down and checked to have left nothing."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.lab.fabric import Fabric


def run(*args: str) -> str:
    """`isthmus ARGS` in this process; its output, or RuntimeError with it."""
    result = CliRunner().invoke(cli, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"`isthmus {' '.join(args)}` exited {result.exit_code}:\n{result.output}")
    return result.output


def _leftovers(name: str, work: Path) -> list[str]:
    """Namespaces of the lab and processes with its directory in their arguments that are still there."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [n for n in listed.splitlines() if n.startswith(f"{name}-")] + [
        p for p in processes.splitlines() if str(work) in p
    ]


@contextlib.contextmanager
def lab(
    kind: str, topology: dict[str, Any], manifests: list[dict[str, Any]]
) -> Iterator[tuple[Path, Fabric]]:
    """A lab of `topology` named KIND + random hex, with `manifests` applied to its main cluster and
    settled; `lab down` on the way out, then nothing of it may be left."""
    name = f"{kind}{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="isb-") as tmp:
        base, work = Path(tmp), Path(tmp) / "lab"
        (base / "topology.yaml").write_text(yaml.safe_dump({**topology, "name": name}))
        (base / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
        try:
            run("lab", "--dir", str(work), "up", "-f", str(base / "topology.yaml"), "--timeout", "60")
            if manifests:
                run("lab", "--dir", str(work), "apply", "-f", str(base / "manifests.yaml"))
            yield work, Fabric.load(work)
        finally:
            run("lab", "--dir", str(work), "down")
            if left := _leftovers(name, work):
                raise RuntimeError(f"lab {name} left behind: {left}")
