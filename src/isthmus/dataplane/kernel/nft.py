"""nftables: the table `inet isthmus` read as plan entries, and a plan difference as one atomic
transaction (`nft -f -`). Chains are named by a hash of their rules, so a chain's name says what it holds:
a changed chain is a new chain, and the table never needs flushing."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from typing import Any

from isthmus.compile.state import Key
from isthmus.dataplane.kernel.plan import Plan
from isthmus.dataplane.kernel.ruleset import BASE

TABLE = "inet isthmus"
DYNAMIC = "aff_"
HOOKED = tuple(
    f"{name}_" for kind, name in BASE if kind == "chain"
)  # sets the kernel fills (ClientIP affinity): their elements are not planned


class NftError(RuntimeError):
    """nft refused a transaction; the message has its error and the commands."""


def nft(commands: str, *, netns: str | None = None) -> str:
    argv = ["nft", "-f", "-"] if commands else ["nft", "-j", "list", "table", *TABLE.split()]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, input=commands, capture_output=True, text=True, check=False)
    if done.returncode != 0 and commands:
        raise NftError(f"{done.stderr.strip()}\n--- transaction ---\n{commands}")
    return done.stdout if done.returncode == 0 else ""


def _text(value: Any, quote: bool = False) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return f"{_text(value['range'][0])}-{_text(value['range'][1])}"
        if "elem" in value:
            return _text(value["elem"]["val"], quote)
        for verdict in ("goto", "jump"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
    return f'"{value}"' if quote else str(value)


def read(netns: str | None = None) -> Plan:
    """The table's chains, sets and elements as plan entries (a chain's rules are implied by its name)."""
    listed = nft("", netns=netns)
    found: Plan = {}
    for item in json.loads(listed)["nftables"] if listed else []:
        if "chain" in item:
            found[("chain", item["chain"]["name"])] = None
        for kind in ("set", "map"):
            if kind in item:
                entry = item[kind]
                found[("set", entry["name"])] = None
                if entry["name"].startswith(DYNAMIC):
                    continue
                named = "ifname" in str(entry["type"])
                for element in entry.get("elem", []):
                    if kind == "map":
                        found[("element", entry["name"], _text(element[0], named))] = _text(element[1])
                    else:
                        found[("element", entry["name"], _text(element, named))] = ""
    return found


def transaction(old: Plan, new: Plan) -> str:
    """The commands that turn the table holding `old` into one holding `new`, in an order nft accepts:
    new sets, new chains and their rules, elements, then old elements, chains and sets go."""
    lines = [f"add table {TABLE}"]
    gone_sets = {k[1] for k in old if k[0] == "set" and k not in new}
    for key, declaration in new.items():
        if key[0] == "set" and key not in old:
            kind = "map" if ":" in str(declaration) else "set"
            declared = str(declaration) if str(declaration).startswith("typeof") else f"type {declaration}"
            lines.append(f"add {kind} {TABLE} {key[1]} {{ {declared}; }}")
    made = [(k[1], str(body)) for k, body in new.items() if k[0] == "chain" and k not in old]
    for name, body in made:
        hook = body.split("\n", 1)[0] if body.startswith("type ") else ""
        lines.append(f"add chain {TABLE} {name} {{ {hook} }}")
    for name, body in made:
        rules = body.split("\n")[1:] if body.startswith("type ") else body.split("\n")
        lines += [f"add rule {TABLE} {name} {rule}" for rule in rules if rule]
    adds: dict[str, list[str]] = defaultdict(list)
    deletes: dict[str, list[str]] = defaultdict(list)
    for key, value in new.items():
        if key[0] == "element" and old.get(key, "\0") != value:
            adds[str(key[1])].append(f"{key[2]} : {value}" if value else str(key[2]))
            if key in old:
                deletes[str(key[1])].append(str(key[2]))
    for key in old:
        if key[0] == "element" and key not in new and key[1] not in gone_sets:
            deletes[str(key[1])].append(str(key[2]))
    lines += [f"delete element {TABLE} {name} {{ {', '.join(e)} }}" for name, e in deletes.items()]
    lines += [f"add element {TABLE} {name} {{ {', '.join(e)} }}" for name, e in adds.items()]
    gone = sorted((_rank(str(k[1])), str(k[1])) for k in old if k[0] == "chain" and k not in new)
    lines += [f"delete chain {TABLE} {name}" for _, name in gone]
    lines += [f"delete set {TABLE} {name}" for name in sorted(gone_sets)]
    return "\n".join(lines) + "\n"


def _rank(chain: str) -> int:
    """Chains go before the chains they jump to: hooked chains, then services, then the rest."""
    return 0 if chain.startswith(HOOKED) else 1 if chain.startswith("svc_") else 2


def ours(key: Key) -> bool:
    return key[0] in ("chain", "set", "element")
