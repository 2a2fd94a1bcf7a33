"""Numbered pools in the ledger, allocated by owner.

Keys under /ipam/POOL/: `a/<value in fixed-width hex>` -> owner, `o/<owner>` -> value, `hint` -> next value.
Invariants: a value has at most one owner and an owner at most one value per pool (both keys are checked in
the committing transaction, so concurrent allocators never hand out a value twice); asking again for the same
owner returns the same value. Allocation is next-fit from the hint, so released values are reused last, and
finding a free value costs one bounded range read however many are allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from isthmus.store.ledger import Conflict, prefix_end
from isthmus.store.txn import Txn

IPAM = "/ipam/"  # every pool's keys
_BATCH = 256


class IpamError(ValueError):
    """A request the pool cannot satisfy; the message names the pool and the owner."""


class Exhausted(IpamError):
    pass


class Taken(IpamError):
    pass


@dataclass(frozen=True)
class Pool:
    name: str
    ranges: tuple[tuple[int, int], ...]  # inclusive, ascending, disjoint
    label: str  # how errors name the pool
    show: Callable[[int], str] = str  # how errors show a value
    first: int = 0  # where next-fit starts in a new pool

    @property
    def _width(self) -> int:
        return len(f"{self.ranges[-1][1] + 1:x}") if self.ranges else 1

    def _root(self) -> str:
        return f"{IPAM}{self.name}/"

    def value_key(self, value: int) -> str:
        return f"{self._root()}a/{value:0{self._width}x}"

    def owner_key(self, owner: str) -> str:
        return f"{self._root()}o/{owner}"

    def contains(self, value: int) -> bool:
        return any(lo <= value <= hi for lo, hi in self.ranges)

    def _segments(self, start: int) -> Iterator[tuple[int, int]]:
        """Every range once, starting at `start` and wrapping around."""
        after = [(max(lo, start), hi) for lo, hi in self.ranges if hi >= start]
        before = [(lo, min(hi, start - 1)) for lo, hi in self.ranges if lo < start]
        yield from after
        yield from before


def held(txn: Txn, pool: Pool, owner: str) -> int | None:
    value = txn.get(pool.owner_key(owner))
    return None if value is None else int(value)


def allocate(txn: Txn, pool: Pool, owner: str, requested: int | None = None) -> int:
    """The owner's value: the one it holds, else `requested`, else the next free one."""
    current = held(txn, pool, owner)
    if current is not None and requested in (None, current):
        return current
    if current is not None:
        release(txn, pool, owner)
    if requested is not None:
        if not pool.contains(requested):
            raise IpamError(f"{pool.show(requested)} is outside {pool.label}")
        holder = txn.get(pool.value_key(requested))
        if holder is not None:
            raise Taken(f"{pool.show(requested)} in {pool.label} is already held by {holder.decode()}")
        value = requested
    else:
        hint = txn.peek(f"{pool._root()}hint")
        found = _next_free(txn, pool, int(hint) if hint else pool.first)
        if found is None:
            raise Exhausted(f"{pool.label} is exhausted: nothing left for {owner}")
        value = found
        if (
            txn.get(pool.value_key(value)) is not None
        ):  # taken since the scan; the commit checks it stays free
            raise Conflict(pool.value_key(value), 0, -1)
        txn.put(f"{pool._root()}hint", str(value + 1).encode())
    txn.put(pool.value_key(value), owner.encode())
    txn.put(pool.owner_key(owner), str(value).encode())
    return value


def release(txn: Txn, pool: Pool, owner: str) -> int | None:
    """Free the owner's value, if it holds one."""
    value = held(txn, pool, owner)
    if value is not None:
        txn.delete(pool.value_key(value))
        txn.delete(pool.owner_key(owner))
    return value


def in_use(txn: Txn, pool: Pool) -> list[str]:
    """A few owners holding values, empty when the pool is unused."""
    root = f"{pool._root()}a/"
    return [v.decode() for _, v in txn.range(root, prefix_end(root), limit=3)]


def _next_free(txn: Txn, pool: Pool, start: int) -> int | None:
    for lo, hi in pool._segments(start):
        value = lo
        while value <= hi:
            taken = txn.range(pool.value_key(value), pool.value_key(hi + 1), limit=_BATCH)
            for key, _ in taken:
                held_value = int(key.rsplit("/", 1)[1], 16)
                if held_value > value:
                    return value
                value = held_value + 1
            if len(taken) < _BATCH:
                break
        if value <= hi:
            return value
    return None


def retire(txn: Txn, pool: Pool) -> None:
    """Forget an unused pool's bookkeeping (its owner must check `in_use` first)."""
    txn.delete(f"{pool._root()}hint")
