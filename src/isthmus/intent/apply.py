"""Apply and delete: many objects, one transaction; either all of them change or none does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from isthmus.intent.admission import admit, ident, release
from isthmus.intent.errors import AlreadyExists, Invalid, NotFound, Stale
from isthmus.model.kinds import KINDS, KindInfo, Object, kind_of
from isthmus.store import objects
from isthmus.store.ledger import Ledger
from isthmus.store.txn import Txn, transact

_ORDER = {k: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True)
class Applied:
    object: Object
    action: Literal["created", "configured", "unchanged", "deleted"]


def _with_version(obj: Object, revision: int | None) -> Object:
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"resource_version": revision})})


def apply(
    ledger: Ledger, items: Sequence[Object], *, create_only: bool = False, check_version: bool = False
) -> list[Applied]:
    """Create or replace each object by kind/namespace/name, in dependency order.

    `check_version`: an object carrying metadata.resourceVersion replaces only that version (else Stale).
    """
    seen: set[str] = set()
    for obj in items:
        key = objects.object_key(obj)
        if key in seen:
            raise Invalid(f"{ident(obj)} is given twice")
        seen.add(key)
    ordered = sorted(items, key=lambda o: _ORDER[kind_of(o)])

    def work(txn: Txn) -> list[Applied]:
        done = []
        for obj in ordered:
            info = kind_of(obj)
            old = objects.get(txn, info, obj.metadata.namespace, obj.metadata.name)
            if old is not None and create_only:
                raise AlreadyExists(f"{ident(obj)} already exists")
            wanted = obj.metadata.resource_version
            if (
                check_version
                and wanted is not None
                and (old is None or old.metadata.resource_version != wanted)
            ):
                raise Stale(f"{ident(obj)} has changed since version {wanted}; read it again")
            new = admit(txn, obj, old)
            if old is not None and new == _with_version(old, None):
                done.append(Applied(old, "unchanged"))
                continue
            objects.put(txn, new, old)
            done.append(Applied(new, "configured" if old else "created"))
        return done

    done, revision = transact(ledger, work)
    by_key = {objects.object_key(a.object): a for a in done}
    ordered_back = [by_key[objects.object_key(o)] for o in items]  # in the caller's order
    return [
        a if a.action == "unchanged" else Applied(_with_version(a.object, revision), a.action)
        for a in ordered_back
    ]


def delete(
    ledger: Ledger, targets: Sequence[tuple[KindInfo, str | None, str]], *, missing_ok: bool = False
) -> list[Applied]:
    """Delete each object, dependants first; refused while anything not deleted with it still names it."""
    ordered = sorted(targets, key=lambda t: -_ORDER[t[0]])

    def work(txn: Txn) -> list[Applied]:
        done = []
        for info, namespace, name in ordered:
            old = objects.get(txn, info, namespace, name)
            if old is None:
                if missing_ok:
                    continue
                raise NotFound(f"{info.kind} {f'{namespace}/' if namespace else ''}{name} not found")
            release(txn, old)
            objects.delete(txn, old)
            done.append(Applied(old, "deleted"))
        return done

    return transact(ledger, work)[0]
