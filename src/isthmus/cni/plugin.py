"""The CNI plugin `isthmus` (CNI 1.1): checks what the runtime passed, asks the node agent over its local
socket, prints the result. Standard library only, so that it starts fast; the agent does the work.

Errors follow libcni: a JSON error on stdout and exit status 1. Codes: 1 incompatible version, 3 unknown
container, 4 invalid environment, 6 undecodable config, 7 invalid network config, 11 try again later,
50 plugin not available; from the agent, 100: the attachment could not be made or is no longer whole.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from typing import Any

SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")
SOCKET = "/run/isthmus/cni.sock"
REQUIRED = {
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_COMMAND", "CNI_PATH"),
    "STATUS": ("CNI_COMMAND",),
    "VERSION": ("CNI_COMMAND",),
}
NEEDS = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _environment(env: dict[str, str]) -> str:
    command = env.get("CNI_COMMAND", "")
    if command not in REQUIRED:
        raise CniError(4, f"unknown CNI_COMMAND {command!r}; one of {', '.join(REQUIRED)}")
    missing = [v for v in REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(4, f"required env variables [{','.join(missing)}] missing")
    container = env.get("CNI_CONTAINERID")
    if container is not None and command in ("ADD", "CHECK", "DEL") and not NAME.match(container):
        raise CniError(4, f"invalid characters in CNI_CONTAINERID {container!r}")
    ifname = env.get("CNI_IFNAME")
    bad = ifname is not None and (len(ifname) > 15 or ifname in (".", "..") or re.search(r"[/:\s]", ifname))
    if bad and command in ("ADD", "CHECK", "DEL"):
        raise CniError(4, f"invalid CNI_IFNAME {ifname!r}: at most 15 characters, no '/', ':' or spaces")
    return command


def _config(raw: str, command: str) -> dict[str, Any]:
    try:
        config = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise CniError(6, f"network configuration is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CniError(6, "network configuration is not a JSON object")
    if command == "VERSION":
        return config
    version = config.get("cniVersion")
    if version not in SUPPORTED:
        raise CniError(
            1, f"incompatible CNI versions: config is {version!r}, plugin supports {list(SUPPORTED)}"
        )
    if command in NEEDS and _version(version) < _version(NEEDS[command]):
        raise CniError(1, f"incompatible CNI versions: {command} needs cniVersion {NEEDS[command]} or later")
    name = config.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise CniError(7, f"invalid network config: name {name!r} must match {NAME.pattern}")
    return config


def _declared(raw: str) -> str:
    """The config's cniVersion, read leniently (a config that is no JSON still gets an answer)."""
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError):
        version = None
    return version if isinstance(version, str) else SUPPORTED[-1]


def _args(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(";") if p]
    if any(len(p) != 2 for p in pairs):
        raise CniError(4, f"invalid CNI_ARGS {text!r}: expected K=V;K2=V2")
    return {k: v for k, v in pairs}


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the agent; an agent that does not answer is 'try again later' (STATUS: 50)."""
    unavailable = 50 if request["command"] == "STATUS" else 11
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(path)
            conn.sendall(json.dumps(request).encode())
            conn.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: conn.recv(65536), b""))
    except OSError as exc:
        raise CniError(
            unavailable, f"the isthmus agent is not available at {path}: {exc.strerror or exc}"
        ) from None
    try:
        reply: dict[str, Any] = json.loads(answer)
    except ValueError:
        raise CniError(unavailable, f"the isthmus agent at {path} gave no answer") from None
    if "error" in reply:
        error = reply["error"]
        raise CniError(int(error["code"]), error["msg"], error.get("details", ""))
    return reply


def run(env: dict[str, str], stdin: str) -> tuple[int, str]:
    """The exit status and stdout of one invocation; every answer, errors too, speaks the config's
    cniVersion when it has one."""
    version = _declared(stdin)
    try:
        command = _environment(env)
        config = _config(stdin, command)
        if command == "VERSION":
            return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED)})
        request = {
            "command": command,
            "containerID": env.get("CNI_CONTAINERID", ""),
            "netns": env.get("CNI_NETNS", ""),
            "ifname": env.get("CNI_IFNAME", ""),
            "args": _args(env.get("CNI_ARGS", "")),
            "config": config,
        }
        reply = _ask(str(config.get("socket", SOCKET)), request)
        result = reply.get("result")
        return 0, json.dumps({"cniVersion": version, **result}) if result is not None else ""
    except CniError as exc:
        return 1, json.dumps(
            {"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}
        )


def main() -> None:
    status, out = run(dict(os.environ), sys.stdin.read())
    if out:
        sys.stdout.write(out + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
