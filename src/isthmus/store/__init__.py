"""The ledger: one store of all intent and allocations, with revisions, watches and transactions."""

from pathlib import Path

from isthmus.store.ledger import Compacted, Conflict, Event, EventType, KeyValue, Ledger, LedgerError, Watch
from isthmus.store.memory import MemoryLedger
from isthmus.store.sqlite import SqliteLedger
from isthmus.store.txn import Txn, transact


def open_ledger(state: str | Path) -> Ledger:
    """The ledger of a state directory: `memory:` for a throw-away one, else DIR/ledger.sqlite."""
    if str(state) == "memory:":
        return MemoryLedger()
    directory = Path(state)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteLedger(directory / "ledger.sqlite")


__all__ = [
    "Compacted",
    "Conflict",
    "Event",
    "EventType",
    "KeyValue",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "SqliteLedger",
    "Txn",
    "Watch",
    "open_ledger",
    "transact",
]
