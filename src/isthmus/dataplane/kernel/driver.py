"""The kernel driver: one node's plan programmed into the namespace it runs in. It reads what the kernel
holds once, at start (never flushing); `sync` then compares the whole plan with it, and `apply` only the
keys a plan update changed: nftables in one atomic transaction, netlink objects one by one. An object
that cannot be made yet (a veth before its CNI ADD) is reported and stays pending, tried again on every
apply, as are the veth and routes an attach or detach changed behind the plan's back."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from isthmus.compile.state import Key
from isthmus.dataplane.kernel import netlink, nft
from isthmus.dataplane.kernel.plan import Plan, Route, Veth

ORDER = {"vxlan": 0, "peer": 1, "veth": 2, "rule": 3, "route": 4}
IMPLIED = ("chain", "set", "veth")  # what reading gives only by key: equal when present


def _same(key: Key, old: object, new: object) -> bool:
    return old == new or (key[0] in IMPLIED and old is None)


def drift(desired: Mapping[Key, object], netns: str | None = None) -> dict[Key, tuple[object, object]]:
    """What the namespace's kernel holds otherwise than `desired`: key -> (held, desired), None for absent."""
    ipr = netlink.connect(netns)
    try:
        held: dict[Key, object] = {**netlink.read(ipr), **nft.read(netns)}
    finally:
        ipr.close()
    return {
        key: (held.get(key), desired.get(key))
        for key in held.keys() | desired.keys()
        if key not in held or key not in desired or not _same(key, held[key], desired[key])
    }


class Driver:
    """Invariant: `current` is what the kernel holds, except for the `pending` keys."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.ipr: Any = netlink.connect(netns)
        self.current: Plan = {}
        self.on_device: dict[str, set[Key]] = defaultdict(set)  # device -> keys of the routes through it
        for key, value in {**netlink.read(self.ipr), **nft.read(netns)}.items():
            self._hold(key, value)
        self.pending: set[Key] = set()

    def close(self) -> None:
        self.ipr.close()

    def sync(self, desired: Mapping[Key, object]) -> dict[Key, str]:
        """Make the kernel hold exactly `desired`, comparing every key (at start, or after a relist)."""
        return self.apply(desired, desired.keys() | self.current.keys())

    def apply(self, desired: Mapping[Key, object], keys: Iterable[Key]) -> dict[Key, str]:
        """Make the kernel hold `desired` at `keys` (and at the pending ones): the value, or nothing where
        `desired` has none. Returns what could not be made, with the reason; it stays pending."""
        keys, self.pending = self.pending.union(keys), set()
        old = {k: self.current[k] for k in keys if nft.ours(k) and k in self.current}
        new = {k: desired[k] for k in keys if nft.ours(k) and k in desired}
        if any(not _same(k, old.get(k, 0), v) for k, v in new.items()) or any(k not in new for k in old):
            try:
                nft.nft(nft.transaction(old, new), netns=self.netns)
            except nft.NftError:
                self.pending = keys
                raise
            for key in old:
                self.current.pop(key)
            self.current.update(new)
        gone = [k for k in keys if not nft.ours(k) and k in self.current and k not in desired]
        for key in sorted(gone, key=lambda k: -ORDER[str(k[0])]):
            netlink.remove(self.ipr, key, self._drop(key))
        wanted = [
            k
            for k in keys
            if not nft.ours(k) and k in desired and not _same(k, self.current.get(k, 0), desired[k])
        ]
        failed: dict[Key, str] = {}
        devices: dict[str, int] = {}
        for key in sorted(wanted, key=lambda k: ORDER[str(k[0])]):
            try:
                netlink.put(self.ipr, key, desired[key], self.current.get(key), devices)
            except (LookupError, NetlinkError) as exc:
                failed[key] = str(exc)
                continue
            self._hold(key, desired[key])
        self.pending |= failed.keys()
        return failed

    def attach(self, veth: Veth, host: str, sandbox: str, ifname: str) -> dict[str, Any]:
        made = netlink.attach(self.ipr, host, veth, sandbox, ifname)
        self._lost(host)
        return made

    def detach(self, host: str) -> None:
        netlink.remove(self.ipr, ("veth", host), None)
        self._lost(host)

    def _lost(self, host: str) -> None:
        """The veth `host` was made or removed outside the plan, and the routes through it went with it:
        they are pending."""
        for key in [("veth", host), *self.on_device.get(host, ())]:
            self._drop(key)
            self.pending.add(key)

    def _hold(self, key: Key, value: object) -> None:
        self._drop(key)
        self.current[key] = value
        if isinstance(value, Route) and value.device:
            self.on_device[value.device].add(key)

    def _drop(self, key: Key) -> object:
        value = self.current.pop(key, None)
        if isinstance(value, Route) and value.device:
            self.on_device[value.device].discard(key)
            if not self.on_device[value.device]:
                del self.on_device[value.device]
        return value
