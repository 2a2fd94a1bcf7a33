"""The kernel driver: one node's plan programmed into the namespace it runs in. It starts from what the
kernel holds (never flushing) and applies differences: nftables in one atomic transaction, netlink
objects one by one; an object that cannot be made yet (a veth before its CNI ADD) is reported and
retried on the next apply."""

from __future__ import annotations

from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from isthmus.compile.state import Key
from isthmus.dataplane.kernel import netlink, nft
from isthmus.dataplane.kernel.plan import Plan, Veth

ORDER = {"vxlan": 0, "peer": 1, "veth": 2, "rule": 3, "route": 4}
IMPLIED = ("chain", "set", "veth")  # what reading gives only by key: equal when present


def _same(key: Key, old: object, new: object) -> bool:
    return old == new or (key[0] in IMPLIED and old is None)


class Driver:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.ipr: Any = netlink.connect(netns)
        self.current: Plan = {**netlink.read(self.ipr), **nft.read(netns)}
        self.failed: dict[Key, str] = {}

    def close(self) -> None:
        self.ipr.close()

    def apply(self, desired: Plan) -> dict[Key, str]:
        """Make the kernel hold `desired`; returns what could not be made, with the reason."""
        self.failed = {}
        old = {k: v for k, v in self.current.items() if nft.ours(k)}
        new = {k: v for k, v in desired.items() if nft.ours(k)}
        if any(not _same(k, old.get(k, 0), v) for k, v in new.items()) or any(k not in new for k in old):
            nft.nft(nft.transaction(old, new), netns=self.netns)
            for key in old:
                self.current.pop(key)
            self.current.update(new)
        links = [k for k in self.current if not nft.ours(k) and k not in desired]
        for key in sorted(links, key=lambda k: -ORDER[str(k[0])]):
            netlink.remove(self.ipr, key, self.current.pop(key))
        wanted = [
            k for k, v in desired.items() if not nft.ours(k) and not _same(k, self.current.get(k, 0), v)
        ]
        for key in sorted(wanted, key=lambda k: ORDER[str(k[0])]):
            try:
                netlink.put(self.ipr, key, desired[key], self.current.get(key))
            except (LookupError, NetlinkError) as exc:
                self.failed[key] = str(exc)
                continue
            self.current[key] = desired[key]
        return self.failed

    def attach(self, veth: Veth, host: str, sandbox: str, ifname: str) -> dict[str, Any]:
        made = netlink.attach(self.ipr, host, veth, sandbox, ifname)
        self.current.pop(("veth", host), None)
        return made

    def detach(self, host: str) -> None:
        netlink.remove(self.ipr, ("veth", host), None)
        self.current.pop(("veth", host), None)
        for key in [
            k for k, v in self.current.items() if k[0] == "route" and getattr(v, "device", "") == host
        ]:
            self.current.pop(key)  # gone with the device
