"""Every command the project runs comes from a Debian package that scripts/bootstrap installs (one listed in
scripts/packages) or that a fresh bookworm machine has (bookworm-base-packages.txt), and scripts/packages
names truly the package of each command it maps. Run after `scripts/bootstrap dev`, as `make test` does.

The commands are found statically: the first word of each string constant of the Python code (src, tests,
bench) that is an element of a list, tuple or set, a call's argument, a default or an assigned value; each
word and absolute path of the shell scripts (scripts/, deploy/, Makefile) outside comments. A word is a
command when it names an executable in Debian's own directories (never through $PATH: .venv, pyenv shims)
or is an absolute path or glob to one, and dpkg tells its package. So a command not installed on this
machine goes unseen; the mapped ones always are installed, by scripts/bootstrap dev."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ROOT / "scripts" / "packages"
BASE = Path(__file__).with_name("bookworm-base-packages.txt")
DEBIAN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
MERGED = (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"))  # the same directories (merged /usr)
# a word or absolute path that is not part of a $variable, an --option or a longer path
SHELL_WORD = re.compile(r"(?<![\w$/.{-])(/[\w.+*/-]*\w|[A-Za-z][\w.+-]*)")
NOT_RUN = {  # words of the code that name a command of a package neither listed nor in bookworm's base
    "sudo": "scripts/kube-testenv runs it only for a user who is not root; the project runs as root",
}

pytestmark = pytest.mark.skipif(not Path("/var/lib/dpkg/status").exists(), reason="needs Debian's dpkg")


def listed() -> dict[str, list[str]]:
    """scripts/packages, as scripts/bootstrap dev reads it: each package -> the commands mapped to it."""
    packages: dict[str, list[str]] = {}
    for line in PACKAGES.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words and words != ["[dev]"]:
            packages[words[0]] = words[1:]
    return packages


def python_words(path: Path) -> Iterator[str]:
    """The first word of each string constant of `path` that may be a command: an element, an argument, a
    default or an assigned value (not a docstring)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        values: list[ast.expr | None]
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            values = list(node.elts)
        elif isinstance(node, ast.Call):
            values = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.arguments):
            values = [*node.defaults, *node.kw_defaults]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            values = [node.value]
        else:
            continue
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.split():
                yield value.value.split()[0]


def shell_words(path: Path) -> Iterator[str]:
    """Each word and absolute path of the shell script (or Makefile) `path`, outside comments."""
    for line in path.read_text().splitlines():
        yield from SHELL_WORD.findall(re.sub(r"(^|\s)#.*", "", line))


def used() -> dict[str, str]:
    """Each word of the project that may be a command -> the first file using it, relative to the root."""
    code = sorted(p for d in ("src", "tests", "bench") for p in (ROOT / d).rglob("*.py"))
    scripts = sorted(
        p
        for d in ("scripts", "deploy")
        for p in (ROOT / d).iterdir()
        if p.is_file() and p.read_text().startswith("#!")
    )
    words: dict[str, str] = {}
    for path in [*code, *scripts, ROOT / "Makefile"]:
        for word in python_words(path) if path.suffix == ".py" else shell_words(path):
            if word not in NOT_RUN:
                words.setdefault(word, str(path.relative_to(ROOT)))
    return words


def executables(command: str) -> list[str]:
    """The executables Debian installed for `command`: every match of an absolute path or glob, else the
    first of DEBIAN_DIRS holding it; none when it is not installed (or not a command)."""
    absolute = command.startswith("/")
    found = sorted(glob.glob(command)) if absolute else [f"{d}/{command}" for d in DEBIAN_DIRS]
    found = [f for f in found if os.path.isfile(f) and os.access(f, os.X_OK)]
    return found if absolute else found[:1]


def aliases(path: str) -> set[str]:
    """The names dpkg may know `path` by: itself and what it resolves to (an alternative's choice, say),
    each under /usr and without."""
    names = set()
    for name in (path, os.path.realpath(path)):
        names.add(name)
        for usr, root in MERGED:
            if name.startswith(usr):
                names.add(root + name.removeprefix(usr))
            elif name.startswith(root):
                names.add(usr + name.removeprefix(root))
    return names


def owners(paths: set[str]) -> dict[str, set[str]]:
    """Each of `paths` -> the packages holding it under any of its aliases, by `dpkg -S` (maybe none)."""
    names = {path: aliases(path) for path in paths}
    asked = set().union(*names.values())
    held: dict[str, set[str]] = {}
    answer = subprocess.run(["dpkg", "-S", *asked], capture_output=True, text=True, check=False).stdout
    for line in answer.splitlines():  # "pkg1, pkg2:amd64: /path"; a diversion's lines start "diversion "
        packages, _, name = line.partition(": ")
        if name in asked and not line.startswith("diversion "):
            held.setdefault(name, set()).update(p.split(":")[0] for p in packages.split(", "))
    return {path: set().union(*(held.get(n, set()) for n in known)) for path, known in names.items()}


def test_every_command_run_comes_from_bootstrap_or_a_fresh_bookworm() -> None:
    base = {p for p in BASE.read_text().splitlines() if p and not p.startswith("#")}
    allowed = set(listed()) | base
    words = used()
    commands = {path: word for word in words for path in executables(word)}
    wrong = [
        f"{word} ({path}, used in {words[word]}) comes from {' or '.join(sorted(packages))}"
        for path, packages in sorted(owners(set(commands)).items())
        if packages and not packages & allowed
        for word in [commands[path]]
    ]
    assert not wrong, (
        "commands from packages that scripts/bootstrap does not install and a fresh bookworm does not have:"
        "\n  " + "\n  ".join(wrong) + "\nadd the package to scripts/packages, or stop running the command"
    )


def test_each_command_mapped_is_installed_from_its_package() -> None:
    mapped = {(package, command): executables(command) for package, cs in listed().items() for command in cs}
    held = owners({path for paths in mapped.values() for path in paths})
    wrong = [
        f"{command} (of {package}) is not installed"
        for (package, command), paths in mapped.items()
        if not paths
    ]
    wrong += [
        f"{path} ({command}) comes from {' or '.join(sorted(held[path])) or 'no package'}, not {package}"
        for (package, command), paths in mapped.items()
        for path in paths
        if package not in held[path]
    ]
    assert not wrong, "scripts/packages is wrong (after scripts/bootstrap dev):\n  " + "\n  ".join(wrong)
