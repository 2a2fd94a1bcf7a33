"""A compiler of what the ledger holds: everything of the kinds it compiles, read at one revision."""

from __future__ import annotations

from isthmus.compile.compiler import Compiler
from isthmus.store import Ledger
from isthmus.store.ledger import prefix_end
from isthmus.store.objects import OBJECTS, decode, parse_key


def compiled(ledger: Ledger) -> tuple[Compiler, int]:
    """The compiler of the ledger's objects and the revision they were read at."""
    found, revision = ledger.snapshot(OBJECTS, prefix_end(OBJECTS))
    return Compiler(decode(kv) for kv in found if parse_key(kv.key)[0].kind in Compiler.KINDS), revision
