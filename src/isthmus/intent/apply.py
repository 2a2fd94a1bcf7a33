"""Apply and delete: many objects, one transaction; either all of them change or none does."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from isthmus.intent.admission import ADMIT_READS, RELEASE_READS, admit, ident, release
from isthmus.intent.errors import AlreadyExists, Invalid, NotFound, Stale
from isthmus.model.kinds import KINDS, KindInfo, Object, kind_of
from isthmus.store import objects
from isthmus.store.ledger import Ledger, prefix_end
from isthmus.store.txn import Txn, transact

_ORDER = {k: i for i, k in enumerate(KINDS)}
PREFETCH = 1000  # a change of this many objects first reads whole the prefixes it reads key by key


@dataclass(frozen=True)
class Applied:
    object: Object
    action: Literal["created", "configured", "unchanged", "deleted"]


def _with_version(obj: Object, revision: int | None) -> Object:
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"resource_version": revision})})


def _stamped(obj: Object, at: float | None) -> Object:
    """The object as the ledger keeps it: no version (the store's revision is), changed at `at`."""
    update = {"resource_version": None, "changed_at": at}
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update=update)})


def change(
    ledger: Ledger,
    puts: Sequence[Object] = (),
    deletes: Sequence[tuple[KindInfo, str | None, str]] = (),
    *,
    create_only: bool = False,
    check_version: bool = False,
    missing_ok: bool = False,
    finish: Callable[[Txn, list[Applied]], None] | None = None,
) -> list[Applied]:
    """Create or replace `puts` (in dependency order), then delete `deletes` (dependants first), atomically.

    `check_version`: an object carrying metadata.resourceVersion replaces only that version (else Stale).
    `finish`: runs last in every attempt, with what was done; what it reads and writes joins the commit.
    Results: the puts in the caller's order, then the deletions.
    A change of PREFETCH objects or more first prefetches its kinds and what admission reads: one range read
    each instead of a read per key (on etcd, a round trip each); every `get` is still checked.
    """
    seen: set[str] = set()
    for obj in puts:
        key = objects.object_key(obj)
        if key in seen:
            raise Invalid(f"{ident(obj)} is given twice")
        seen.add(key)
    ordered = sorted(puts, key=lambda o: _ORDER[kind_of(o)])
    doomed = sorted(deletes, key=lambda t: -_ORDER[t[0]])
    prefixes: set[str] = set()
    if len(puts) + len(deletes) >= PREFETCH:
        kinds = {kind_of(o) for o in puts} | {info for info, _, _ in deletes}
        prefixes = {objects.kind_prefix(k) for k in kinds}.union(RELEASE_READS if deletes else ADMIT_READS)

    def work(txn: Txn) -> list[Applied]:
        for prefix in sorted(prefixes):
            txn.prefetch(prefix, prefix_end(prefix))
        done = [_put(txn, obj, create_only, check_version) for obj in ordered]
        for info, namespace, name in doomed:
            old = objects.get(txn, info, namespace, name)
            if old is None:
                if missing_ok:
                    continue
                raise NotFound(f"{info.kind} {f'{namespace}/' if namespace else ''}{name} not found")
            release(txn, old)
            objects.delete(txn, old)
            done.append(Applied(old, "deleted"))
        if finish is not None:
            finish(txn, done)
        return done

    done, revision = transact(ledger, work)
    by_key = {objects.object_key(a.object): a for a in done[: len(ordered)]}
    in_order = [by_key[objects.object_key(o)] for o in puts]
    stamped = [
        a if a.action == "unchanged" else Applied(_with_version(a.object, revision), a.action)
        for a in in_order
    ]
    return stamped + done[len(ordered) :]


def _put(txn: Txn, obj: Object, create_only: bool, check_version: bool) -> Applied:
    info = kind_of(obj)
    old = objects.get(txn, info, obj.metadata.namespace, obj.metadata.name)
    if old is not None and create_only:
        raise AlreadyExists(f"{ident(obj)} already exists")
    wanted = obj.metadata.resource_version
    if check_version and wanted is not None and (old is None or old.metadata.resource_version != wanted):
        raise Stale(f"{ident(obj)} has changed since version {wanted}; read it again")
    new = admit(txn, obj, old)
    if old is not None and _stamped(new, None) == _stamped(old, None):
        return Applied(old, "unchanged")
    new = _stamped(new, time.time())
    objects.put(txn, new, old)
    return Applied(new, "configured" if old else "created")


def apply(
    ledger: Ledger, items: Sequence[Object], *, create_only: bool = False, check_version: bool = False
) -> list[Applied]:
    """Create or replace each object by kind/namespace/name, all or none."""
    return change(ledger, items, (), create_only=create_only, check_version=check_version)


def delete(
    ledger: Ledger, targets: Sequence[tuple[KindInfo, str | None, str]], *, missing_ok: bool = False
) -> list[Applied]:
    """Delete each object, dependants first; refused while anything not deleted with it still names it."""
    return change(ledger, (), targets, missing_ok=missing_ok)
