"""Links, routes, rules and VXLAN peers through netlink (pyroute2), read as plan entries and changed one
entry at a time. Everything here lives in the node's namespace: devices named isv*/isx*, the tables of
networks (above TABLE_BASE) and of egress owners (those plus a slot in bits 25-29), and the `ip rule`s at
RULE_PRIORITY (networks), just after (egress owners) and just before (outer VXLAN packets; pods' flows to
other nodes, by the main table)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import subprocess
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from isthmus.compile.compiler import TABLE_BASE
from isthmus.compile.state import Key
from isthmus.dataplane.kernel.plan import (
    RULE_PRIORITY,
    VXLAN_MTU,
    VXLAN_PORT,
    Plan,
    Route,
    Veth,
    Vxlan,
    link_local,
)
from isthmus.dataplane.kernel.ruleset import (
    GATEWAY,
    GATEWAY6,
    MARK_MASK,
    SLOT_SHIFT,
    SLOTS,
    TO_NODE,
    VETH_PREFIX,
    VXLAN_PREFIX,
)

ONLINK = 4
FAMILIES = (2, 10)  # AF_INET, AF_INET6: a plan's `ip rule` is one of each
PERMANENT = 0x80
MAIN = 254
ROUTE_TYPES = {1: "unicast", 7: "unreachable", 9: "throw"}


class AttachError(RuntimeError):
    """A sandbox could not be attached; the message says why."""


def connect(netns: str | None = None) -> Any:
    return NetNS(netns) if netns else IPRoute()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def read(ipr: Any) -> Plan:
    found: Plan = {}
    names: dict[int, str] = {}
    for link in ipr.link("dump"):
        name = link.get("ifname")
        names[link["index"]] = name
        if name.startswith(VXLAN_PREFIX):
            data = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA")) or {}
            vni = data.get("IFLA_VXLAN_ID") if hasattr(data, "get") else None
            local = (
                (data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6"))
                if hasattr(data, "get")
                else None
            )
            found[("vxlan", name)] = Vxlan(vni or 0, local or "", link.get("address"))
            for neigh in ipr.neigh("dump", ifindex=link["index"]):
                dst = neigh.get("dst")  # a peer's IPv6 next hop (link-local) goes with its VTEP entry
                if neigh["state"] & PERMANENT and dst and not ipaddress.ip_address(dst).is_link_local:
                    found[("peer", name, dst)] = neigh.get("lladdr")
        elif name.startswith(VETH_PREFIX):
            found[("veth", name)] = None
    for family in (2, 10):
        for route in ipr.route("dump", family=family):
            table = route.get("table")
            if not _ours(table):
                continue
            dst = route.get("dst") or ("0.0.0.0" if family == 2 else "::")
            prefix = str(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
            kind = ROUTE_TYPES.get(route["type"], "")
            if kind == "unicast":
                device = names.get(route.get("oif"), "")
                if not device.startswith((VETH_PREFIX, VXLAN_PREFIX)):
                    device = ""  # the underlay: the plan leaves it to the kernel
                gateway = route.get("gateway") or (route.get("via") or {}).get("addr") or ""
                found[("route", table, prefix)] = Route("via" if gateway else "dev", device, gateway)
            elif kind:
                found[("route", table, prefix)] = Route(kind)  # type: ignore[arg-type]
    four, six = (_rules(ipr, family) for family in FAMILIES)
    found.update({key: priority for key, priority in four.items() if six.get(key) == priority})
    return found


def _rules(ipr: Any, family: int) -> Plan:
    """Our `ip rule`s of one family."""
    found: Plan = {}
    for rule in ipr.rule("dump", family=family):
        if rule.get("priority") in (RULE_PRIORITY, RULE_PRIORITY + 1) and _ours(rule.get("table")):
            found[("rule", rule.get("table"))] = rule.get("priority")
        elif rule.get("priority") == RULE_PRIORITY - 1 and rule.get("iifname") == "lo":
            found[("rule", "underlay")] = RULE_PRIORITY - 1
        elif rule.get("priority") == RULE_PRIORITY - 2 and rule.get("fwmark") == TO_NODE:
            found[("rule", "nodes")] = RULE_PRIORITY - 2
    return found


def _ours(table: int | None) -> bool:
    if table is None or table >> SLOT_SHIFT > SLOTS:
        return False
    return 0 < (table & MARK_MASK) - TABLE_BASE <= 2**24


def put(ipr: Any, key: Key, value: object, old: object, devices: dict[str, int]) -> None:
    """Make the kernel hold `value` under `key` (it held `old`, None when absent). `devices`: indexes of
    the devices routes went through in this apply (routes come last, after any device is made)."""
    kind = key[0]
    if kind == "vxlan" and isinstance(value, Vxlan):
        if old is not None:
            remove(ipr, key, old)
        version = ipaddress.ip_address(value.local).version
        ipr.link(
            "add",
            ifname=key[1],
            kind="vxlan",
            vxlan_id=value.vni,
            vxlan_port=VXLAN_PORT,
            vxlan_learning=0,
            address=value.mac,
            mtu=VXLAN_MTU[version],
            **{"vxlan_local" if version == 4 else "vxlan_local6": value.local},
        )
        ipr.link("set", index=_index(ipr, str(key[1])), state="up")
    elif kind == "peer":
        index = _index(ipr, str(key[1]))
        ipr.neigh("replace", dst=key[2], lladdr=value, ifindex=index, state=PERMANENT)
        with contextlib.suppress(NetlinkError):  # IPv6 off on the host: its IPv6 routes report why
            ipr.neigh(
                "replace", dst=link_local(str(value)), lladdr=value, ifindex=index, state=PERMANENT, family=10
            )
        with contextlib.suppress(NetlinkError):
            ipr.fdb("del", ifindex=index, lladdr=old, dst=key[2]) if old else None
        ipr.fdb("append", ifindex=index, lladdr=value, dst=key[2], state=PERMANENT)
    elif kind == "route" and isinstance(value, Route):
        ipr.route("replace", **_route(ipr, key, value, devices))
    elif kind == "rule":
        for family in FAMILIES:
            with contextlib.suppress(NetlinkError):
                ipr.rule("del", family=family, **_rule(key))
            ipr.rule("add", family=family, **_rule(key))
    elif kind == "veth" and isinstance(value, Veth):
        index = _index(ipr, str(key[1]))
        if index is None:
            raise LookupError(f"{key[1]} of {value.endpoint} is not attached yet (waiting for CNI ADD)")


def _rule(key: Key) -> dict[str, Any]:
    if key[1] == "nodes":  # a pod's flow to another node: out of the uplink
        return {"fwmark": TO_NODE, "fwmask": TO_NODE, "table": MAIN, "priority": RULE_PRIORITY - 2}
    if key[1] == "underlay":
        port = f"{VXLAN_PORT}:{VXLAN_PORT}"
        return {
            "iifname": "lo",
            "ip_proto": 17,
            "dport_range": port,
            "table": MAIN,
            "priority": RULE_PRIORITY - 1,
        }
    table = int(key[1])
    if table > MARK_MASK:  # an egress owner's: the mark has its slot too
        mask, priority = MARK_MASK | SLOTS << SLOT_SHIFT, RULE_PRIORITY + 1
    else:
        mask, priority = MARK_MASK, RULE_PRIORITY
    return {"fwmark": table, "fwmask": mask, "table": table, "priority": priority}


def _route(ipr: Any, key: Key, route: Route, devices: dict[str, int]) -> dict[str, Any]:
    prefix = ipaddress.ip_network(str(key[2]))
    spec: dict[str, Any] = {"dst": str(prefix), "table": key[1], "family": 10 if prefix.version == 6 else 2}
    if route.kind in ("unreachable", "throw"):
        return spec | {"type": route.kind}
    if not route.device:
        return spec | {"gateway": route.gateway}
    index = devices.get(route.device) or _index(ipr, route.device)
    if index is None:
        raise LookupError(f"route {prefix} in table {key[1]}: device {route.device} does not exist yet")
    spec["oif"] = devices[route.device] = index
    if route.gateway and ipaddress.ip_address(route.gateway).version != prefix.version:
        spec |= {"via": {"family": 10, "addr": route.gateway}, "flags": ONLINK}  # IPv4 over an IPv6 underlay
    elif route.gateway:
        spec |= {"gateway": route.gateway, "flags": ONLINK}
    return spec


def remove(ipr: Any, key: Key, old: object) -> None:
    kind = key[0]
    with contextlib.suppress(NetlinkError, LookupError):
        if kind in ("vxlan", "veth"):
            index = _index(ipr, str(key[1]))
            if index is not None:
                ipr.link("del", index=index)
        elif kind == "peer":
            index = _index(ipr, str(key[1]))
            ipr.neigh("del", dst=key[2], ifindex=index)
            ipr.fdb("del", ifindex=index, lladdr=old, dst=key[2])
            ipr.neigh("del", dst=link_local(str(old)), ifindex=index, family=10)
        elif kind == "route":
            prefix = ipaddress.ip_network(str(key[2]))
            ipr.route("del", dst=str(prefix), table=key[1], family=10 if prefix.version == 6 else 2)
        elif kind == "rule":
            for family in FAMILIES:
                with contextlib.suppress(NetlinkError):
                    ipr.rule("del", family=family, **_rule(key))


def _inside(sandbox: str, commands: list[str]) -> str:
    """`ip -j -batch` of `commands` in the network namespace at path `sandbox` (one process: a netlink
    socket there costs pyroute2 a helper process); what the commands printed."""
    if not os.path.exists(sandbox):
        raise AttachError(f"network namespace {sandbox}: no such file")
    done = subprocess.run(
        ["nsenter", f"--net={sandbox}", "ip", "-j", "-batch", "-"],
        input="\n".join(commands),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AttachError(f"in {sandbox}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def attach(ipr: Any, host: str, veth: Veth, sandbox: str, ifname: str) -> dict[str, Any]:
    """A veth pair from the node (`host`, holding the pods' gateway address) into the sandbox (`ifname`,
    with the endpoint's addresses and a default route through the gateway). Returns the interfaces."""
    try:
        fd = os.open(sandbox, os.O_RDONLY)
    except OSError as exc:
        raise AttachError(f"network namespace {sandbox}: {exc.strerror}") from None
    try:
        if _index(ipr, host) is not None:
            ipr.link("del", index=_index(ipr, host))  # left by an attachment its runtime never deleted
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": fd, "mtu": veth.mtu}
        if veth.mac:
            peer["address"] = veth.mac
        try:
            ipr.link("add", ifname=host, kind="veth", mtu=veth.mtu, peer=peer)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise AttachError(f"interface {ifname} already exists in {sandbox}") from None
            raise
    finally:
        os.close(fd)
    index = _index(ipr, host)
    ipr.addr("add", index=index, address=GATEWAY, prefixlen=32)
    ipr.addr("add", index=index, address=GATEWAY6, prefixlen=64, flags=IFA_F_NODAD)
    ipr.link("set", index=index, state="up")
    families = {ipaddress.ip_address(a).version for a in veth.addresses}
    commands = [
        f"addr add {a}/{ipaddress.ip_address(a).max_prefixlen} dev {ifname}"
        + (" nodad" if ipaddress.ip_address(a).version == 6 else "")
        for a in veth.addresses
    ]
    commands += [f"link set {ifname} up", "link set lo up"]
    if 4 in families:
        commands += [
            f"route add {GATEWAY}/32 dev {ifname} scope link",
            f"route add default via {GATEWAY} dev {ifname}",
        ]
    if 6 in families:
        commands.append(f"route add default via {GATEWAY6} dev {ifname}")
    commands.append(f"link show dev {ifname}")
    shown = json.loads(_inside(sandbox, commands))
    host_mac = ipr.get_links(index)[0].get("address")
    return {"host": {"name": host, "mac": host_mac}, "sandbox": {"name": ifname, "mac": shown[0]["address"]}}


def attached(ipr: Any, host: str, sandbox: str, ifname: str) -> list[str]:
    """What is missing of an attachment (empty when it is whole)."""
    problems = []
    if _index(ipr, host) is None:
        problems.append(f"host interface {host} is gone")
    try:
        names = [link["ifname"] for link in json.loads(_inside(sandbox, ["link show"]))]
        if ifname not in names:
            problems.append(f"interface {ifname} is gone from {sandbox}")
    except AttachError as exc:
        problems.append(str(exc))
    return problems
